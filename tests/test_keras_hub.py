"""keras-hub models: wrap() on ResNet backbones and classifiers, presets as harness backbones.

Everything runs offline, on randomly initialised tiny configs; the tests that need `keras_hub` skip
without it (`pip install "adafilter_keras[hub]"`).
"""

import socket
import time
import warnings
import zipfile

import keras
import numpy as np
import pytest
from support import randomize_batch_norms, relative_difference, tensorflow_only

import adafilter_keras as ak
from adafilter_keras import data
from adafilter_keras.backbones import hub
from adafilter_keras.backbones.models import WeightsUnavailableError, build_backbone
from adafilter_keras.training import TrainConfig, train
from adafilter_keras.training.methods import build_model

SIZE = 32


@pytest.fixture
def keras_hub():
    return pytest.importorskip("keras_hub")


def _resnet(keras_hub, block_type="basic_block", pre_activation=False):
    """A tiny keras-hub ResNet (the first stack must have 64 filters), BNs randomized."""
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type=block_type,
        use_pre_activation=pre_activation,
        image_shape=(SIZE, SIZE, 3),
    )
    return randomize_batch_norms(backbone)


def _images(n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def _outputs(model, x):
    """Inference outputs, called eagerly (faster than `predict`, which traces, for tiny inputs)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def _types(model):
    return [type(layer).__name__ for layer in model._flatten_layers()]


def _saved_and_loaded(model, path):
    model.save(path)
    return keras.models.load_model(path, safe_mode=True)


@pytest.mark.parametrize(
    "block_type, pre_activation, gated, gated_bns",
    [
        ("basic_block", False, 6, 6),
        ("bottleneck_block", False, 9, 9),
        # V2: the stem, the shortcuts and each block's last conv feed no BN; -inf padding is a
        # keras.ops.pad in the graph.
        ("basic_block", True, 6, 2),
        ("bottleneck_block", True, 9, 4),
        # ResNet-vd: average-pooled shortcuts.
        ("bottleneck_block_vd", False, 9, 9),
    ],
    ids=["v1-basic", "v1-bottleneck", "v2-basic", "v2-bottleneck", "vd-bottleneck"],
)
def test_wrap_resnet_backbone(keras_hub, tmp_path, block_type, pre_activation, gated, gated_bns):
    backbone = _resnet(keras_hub, block_type, pre_activation)
    x = _images()
    expected = _outputs(backbone, x)
    wrapped = ak.wrap(backbone)
    assert isinstance(wrapped, keras.Model) and not isinstance(wrapped, keras_hub.models.Backbone)
    assert wrapped.name == backbone.name
    convs = [layer.name for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    names = [layer.name for layer in ak.gated_layers(wrapped)]
    assert sorted(names) == sorted(convs) and len(convs) == gated
    # Controller order is the breadth-first walk: the stem, then in each block the shortcut
    # before conv 1 (in vd, a strided shortcut's average pooling puts its conv after conv 1).
    assert names[0] == "conv1_conv"
    shortcuts = [name for name in names if name.endswith("_0_conv")]
    assert shortcuts
    if not block_type.endswith("_vd"):
        assert all(names.index(n) + 1 == names.index(n.replace("_0_", "_1_")) for n in shortcuts)
    types = _types(wrapped)
    assert types.count("AdaFilterConv2D") == gated and types.count("GatedBatchNorm") == gated_bns
    assert "Conv2D" not in types
    assert relative_difference(expected, _outputs(wrapped, x)) <= 1e-5
    loaded = _saved_and_loaded(wrapped, tmp_path / "wrapped.keras")
    np.testing.assert_array_equal(_outputs(loaded, x), _outputs(wrapped, x))
    np.testing.assert_array_equal(_outputs(backbone, x), expected)  # original untouched


def test_wrap_resnet_image_classifier(keras_hub, tmp_path):
    backbone = _resnet(keras_hub, pre_activation=True)
    classifier = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=3)
    x = _images(4)
    expected = _outputs(classifier, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no preprocessor, nothing to warn about
        wrapped = ak.wrap(classifier, seed=0)
    assert not isinstance(wrapped, keras_hub.models.Task)
    inner = wrapped.get_layer(backbone.name)  # the nested backbone, rewritten in place
    assert not isinstance(inner, keras_hub.models.Backbone)
    assert inner.get_layer("gate_controller") is not None
    assert len(ak.gated_layers(wrapped)) == 6
    assert relative_difference(expected, _outputs(wrapped, x)) <= 1e-5
    loaded = _saved_and_loaded(wrapped, tmp_path / "classifier.keras")
    np.testing.assert_array_equal(_outputs(loaded, x), _outputs(wrapped, x))
    with zipfile.ZipFile(tmp_path / "classifier.keras") as archive:
        assert "keras_hub" not in archive.read("config.json").decode()  # loads without it


def test_a_classifier_with_a_preprocessor_warns_that_it_is_left_out(keras_hub):
    converter = keras_hub.layers.ResNetImageConverter(image_size=(SIZE, SIZE), scale=1 / 255)
    classifier = keras_hub.models.ResNetImageClassifier(
        backbone=_resnet(keras_hub),
        num_classes=2,
        preprocessor=keras_hub.models.ResNetImageClassifierPreprocessor(converter),
    )
    with pytest.warns(UserWarning, match="has a preprocessor, which is not part of its graph"):
        ak.wrap(classifier)


def test_a_keras_hub_backbone_under_a_new_head_is_wrapped_in_place(keras_hub):
    backbone = _resnet(keras_hub, "bottleneck_block", pre_activation=True)
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(features), name="outer")
    x = _images()
    with pytest.warns(UserWarning, match="drops that argument"):
        wrapped = ak.wrap(model, targets=r"stack1_.*")
    assert [g.name for g in ak.gated_layers(wrapped)] == [
        "stack1_block0_0_conv",
        "stack1_block0_1_conv",
        "stack1_block0_2_conv",
        "stack1_block0_3_conv",
    ]
    assert relative_difference(_outputs(model, x), _outputs(wrapped, x)) <= 1e-5


# Presets as harness backbones (`--backbone`).


def test_preset_names_are_told_apart_from_keras_applications():
    for name in ("resnet_50_imagenet", "resnet_v2_50_imagenet", "./my_preset", "/data/p", "~/p"):
        assert hub.is_preset(name), name
        assert data.normalization_for(name) == "raw"  # the preset's model normalizes itself
    for name in ("ResNet50", "ResNet50V2", "SmallResNet", "resnet", "caffe", ""):
        assert not hub.is_preset(name), name
    assert data.normalization_for("ResNet50") == "caffe"
    with pytest.raises(ValueError, match="or a keras-hub preset name .*Received: backbone='Alex"):
        TrainConfig(dataset="uci_digits", backbone="AlexNet")


def test_a_preset_without_keras_hub_says_how_to_install(monkeypatch):
    monkeypatch.setattr(hub, "installed", lambda: False)
    with pytest.raises(ValueError, match='keras_hub is not installed.*adafilter_keras\\[hub\\]"'):
        TrainConfig(dataset="uci_digits", backbone="resnet_50_imagenet")
    with pytest.raises(ValueError, match="pip install"):
        build_backbone("./my_preset", None, (SIZE, SIZE, 3))


def _offline(monkeypatch, tmp_path):
    """No network (connections fail at once) and an empty kagglehub cache in `tmp_path`."""
    attempts = []

    def unreachable(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    def no_download(*args, **kwargs):
        raise AssertionError("from_preset was called without network")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return attempts, no_download


def test_an_offline_preset_fails_fast_and_says_where_to_put_the_files(
    keras_hub, monkeypatch, tmp_path
):
    attempts, no_download = _offline(monkeypatch, tmp_path)
    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", no_download)
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet_50_imagenet", "imagenet", (SIZE, SIZE, 3))
    assert time.perf_counter() - started < 5
    assert len(attempts) == 1 and attempts[0][1] <= hub.PROBE_TIMEOUT_S
    message = str(info.value)
    handle = keras_hub.models.Backbone.presets["resnet_50_imagenet"]["kaggle_handle"]
    assert f"'resnet_50_imagenet' ({handle})" in message and "not reachable" in message
    assert "pass a local preset directory" in message and "--backbone DIR" in message
    assert f"kagglehub.model_download('{handle.removeprefix('kaggle://')}')" in message
    assert "$KAGGLEHUB_CACHE" in message and "~/.cache/kagglehub" in message
    assert str(tmp_path / "kagglehub") in message


def test_a_preset_in_the_kagglehub_cache_loads_offline(keras_hub, monkeypatch, tmp_path):
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle

    attempts, _ = _offline(monkeypatch, tmp_path)
    saved = tmp_path / "saved"
    _classifier_preset(keras_hub, saved)
    handle = keras_hub.models.Backbone.presets["resnet_50_imagenet"]["kaggle_handle"]
    parsed = parse_model_handle(handle.removeprefix("kaggle://"))
    cache = Cache()
    for name in ("config.json", "model.weights.h5", "image_converter.json"):
        target = tmp_path / "kagglehub" / "models" / handle.removeprefix("kaggle://") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((saved / name).read_bytes())
        cache.mark_as_complete(parsed, name)
    model = build_backbone("resnet_50_imagenet", "imagenet", (SIZE, SIZE, 3))
    assert attempts == [] and model.name == "resnet_50_imagenet"
    assert isinstance(model.get_layer("normalization"), keras.layers.Rescaling)


def _classifier_preset(keras_hub, directory):
    """Saves a tiny classifier preset: backbone, weights and an image converter (torch-style)."""
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(SIZE, SIZE),
        scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
        offset=[-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)],
    )
    backbone = _resnet(keras_hub, pre_activation=True)
    classifier = keras_hub.models.ResNetImageClassifier(
        backbone=backbone,
        num_classes=2,
        preprocessor=keras_hub.models.ResNetImageClassifierPreprocessor(converter),
    )
    classifier.save_to_preset(str(directory))
    return backbone, converter


def test_a_local_preset_directory_is_a_backbone(keras_hub, tmp_path):
    backbone = _resnet(keras_hub, "bottleneck_block")
    backbone.save_to_preset(str(tmp_path / "bare"))
    x = _images()
    pooled = keras.ops.convert_to_numpy(keras.ops.mean(backbone(x), axis=(1, 2)))
    # A backbone saved alone has no image converter: the images go in unnormalized, with a
    # warning when its weights are loaded.
    with pytest.warns(UserWarning, match="has no image_converter.json"):
        model = build_backbone(str(tmp_path / "bare"), "imagenet", (SIZE, SIZE, 3))
    assert model.name == "bare" and model.output_shape == (None, 256)
    np.testing.assert_allclose(_outputs(model, x), pooled, rtol=1e-5, atol=1e-5)
    random = build_backbone(str(tmp_path / "bare"), None, (SIZE, SIZE, 3))
    assert not np.allclose(_outputs(random, x), pooled, atol=1e-3)

    backbone, converter = _classifier_preset(keras_hub, tmp_path / "classifier")
    model = build_backbone(str(tmp_path / "classifier"), "imagenet", (SIZE, SIZE, 3))
    expected = keras.ops.mean(backbone(x * np.array(converter.scale) + converter.offset), (1, 2))
    np.testing.assert_allclose(
        _outputs(model, x), keras.ops.convert_to_numpy(expected), rtol=1e-4, atol=1e-4
    )

    config = TrainConfig(
        dataset="uci_digits", backbone=str(tmp_path / "classifier"), image_size=SIZE
    )
    assert data.normalization_for(config.backbone) == "raw"
    assert config.resolved_weights == "imagenet"
    wrapped = build_model(config, num_classes=3)  # the harness: backbone, head, wrap()
    assert len(ak.gated_layers(wrapped)) == 6


@tensorflow_only  # the harness around the backbone is the same on every backend
def test_the_harness_trains_on_a_local_preset(keras_hub, tmp_path):
    _classifier_preset(keras_hub, tmp_path / "preset")
    config = TrainConfig(
        dataset="uci_digits",
        backbone=str(tmp_path / "preset"),
        image_size=SIZE,
        batch_size=128,
        epochs=1,
        steps_per_epoch=1,
        controller_units=8,
        run_dir=str(tmp_path / "run"),
    )
    results = train(config, verbose=0)
    assert results["backbone"] == str(tmp_path / "preset")
    assert 0 <= results["test_accuracy"] <= 1 and len(results["gates"]["layers"]) == 6


def test_missing_or_unknown_presets_are_refused_clearly(keras_hub, tmp_path):
    shape = (SIZE, SIZE, 3)
    with pytest.raises(WeightsUnavailableError, match="preset directory '.*nothing' does not"):
        build_backbone(str(tmp_path / "nothing"), "imagenet", shape)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsUnavailableError, match="is not a keras-hub preset: it has no conf"):
        build_backbone(str(tmp_path / "empty"), "imagenet", shape)
    with pytest.raises(
        ValueError, match="Unknown keras-hub preset 'resnet_51_imagenet'.*resnet_50"
    ):
        build_backbone("resnet_51_imagenet", "imagenet", shape)
