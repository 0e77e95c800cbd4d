import warnings

import keras
import numpy as np
import pytest
from support import (
    build_plain_resnet,
    randomize_batch_norms,
    relative_difference,
    run_python,
    to_numpy,
)

import adafilter_keras as ak
from adafilter_keras.wrapping.graph import sublayers

apps = keras.applications


def _images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, size, size, 3)).astype("float32")


def _layer_types(model):
    """Types of the layers of the model's graph and of nested models' graphs (not the layers
    inside a layer, such as the controller's own Dense and BatchNormalization)."""
    types = []
    for layer in model.layers:
        types.append(type(layer).__name__)
        if isinstance(layer, keras.Model):
            types.extend(_layer_types(layer))
    return types


@pytest.mark.parametrize(
    "build",
    [
        lambda: apps.ResNet50(weights=None, input_shape=(32, 32, 3), classes=5),
        lambda: apps.VGG16(weights=None, input_shape=(32, 32, 3), include_top=False, pooling="max"),
        lambda: apps.ResNet50V2(
            weights=None, input_shape=(64, 48, 3), include_top=False, pooling="avg"
        ),
    ],
    ids=["ResNet50", "VGG16", "ResNet50V2"],
)
def test_identity_at_initialisation_for_keras_applications(build):
    model = randomize_batch_norms(build())
    x = _images(size=model.input_shape[1])
    if model.input_shape[2] != model.input_shape[1]:
        x = np.random.default_rng(1).uniform(0, 1, (2, *model.input_shape[1:])).astype("float32")
    expected = model.predict(x, verbose=0)
    wrapped = ak.wrap(model)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(ak.gated_layers(wrapped)) == len(convs)
    assert relative_difference(expected, wrapped.predict(x, verbose=0)) <= 1e-5


def test_resnet50_structure_and_controller_order():
    model = apps.ResNet50(weights=None, input_shape=(32, 32, 3), include_top=False)
    wrapped = ak.wrap(model)
    names = [layer.name for layer in ak.gated_layers(wrapped)]
    assert names[:6] == [
        "conv1_conv",
        "conv2_block1_0_conv",
        "conv2_block1_1_conv",
        "conv2_block1_2_conv",
        "conv2_block1_3_conv",
        "conv2_block2_1_conv",
    ]
    assert len(names) == 53 and names[-1] == "conv5_block3_3_conv"
    assert names == [layer.name for layer in ak.gated_layers(ak.wrap(model))]
    types = _layer_types(wrapped)
    assert types.count("AdaFilterConv2D") == 53 and types.count("GatedBatchNorm") == 53
    assert "Conv2D" not in types and "BatchNormalization" not in types
    assert types.count("GateController") == 1
    counts = ak.count_parameters(wrapped)
    original = ak.count_parameters(model)
    size = lambda weights: sum(int(np.prod(w.shape)) for w in weights)  # noqa: E731
    conv = size(
        w for layer in model.layers if type(layer) is keras.layers.Conv2D for w in layer.weights
    )
    bn_affine = size(w for w in model.trainable_weights if w.path.endswith(("gamma", "beta")))
    # Every conv and BN weight exists twice; the fine-tuned copies and the controller train; the
    # controller keeps no gate statistics unless asked and no step count without a gate warm-up;
    # its input normalization (on by default) keeps a moving mean and variance per input channel.
    (controller,) = [layer for layer in wrapped.layers if isinstance(layer, ak.GateController)]
    statistics = 2 * sum(controller.input_channels)
    assert counts["total"] == 2 * original["total"] + counts["controller"] + statistics
    # With the default pretrained_bn="adapt" both branches' gamma and beta train.
    assert counts["trainable"] == conv + 2 * bn_affine + counts["controller"]
    assert counts["controller"] > 0


def test_vgg_convs_mix_their_own_branches():
    wrapped = ak.wrap(apps.VGG16(weights=None, input_shape=(32, 32, 3), include_top=False))
    types = _layer_types(wrapped)
    assert types.count("AdaFilterConv2D") == 13 and "GatedBatchNorm" not in types


def test_resnet_v2_gates_bn_where_it_follows_and_mixes_elsewhere():
    model = apps.ResNet50V2(weights=None, input_shape=(32, 32, 3), include_top=False)
    types = _layer_types(ak.wrap(model))
    # In V2 blocks, convs 1 and 2 feed a BN; conv 3, the shortcut and the stem do not.
    assert types.count("AdaFilterConv2D") == 53
    assert types.count("GatedBatchNorm") == 32
    assert types.count("BatchNormalization") == 17  # the pre-activation BNs stay as they are


def test_the_original_model_is_not_modified(rng):
    model = randomize_batch_norms(build_plain_resnet())
    model.get_layer("block1_1_bn").trainable = False
    weights = [w.copy() for w in model.get_weights()]
    flags = [layer.trainable for layer in model.layers]
    x = _images(8)
    before = model.predict(x, verbose=0)
    wrapped = ak.wrap(model)
    wrapped.compile(keras.optimizers.SGD(0.1), keras.losses.MeanSquaredError())
    wrapped.fit(x, rng.normal(size=(8, 4)), batch_size=4, epochs=2, verbose=0)
    for original, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(original, after)
    assert flags == [layer.trainable for layer in model.layers]
    assert types_of(model).count("Conv2D") == 6
    np.testing.assert_array_equal(before, model.predict(x, verbose=0))


def types_of(model):
    return [type(layer).__name__ for layer in model.layers]


def test_fit_moves_only_the_finetuned_side_the_controller_and_the_head(rng):
    model = randomize_batch_norms(build_plain_resnet())
    # "frozen": the pre-trained branch's BN must not move either (with the default "adapt" it
    # trains; tests/test_gated_batch_norm.py covers both modes).
    wrapped = ak.wrap(model, seed=1, pretrained_bn="frozen")
    wrapped.compile(keras.optimizers.SGD(0.05), keras.losses.MeanSquaredError())
    before = {w.path: to_numpy(w).copy() for w in wrapped.weights}
    wrapped.fit(_images(16), rng.normal(size=(16, 4)), batch_size=4, epochs=2, verbose=0)
    moved = {w.path for w in wrapped.weights if not np.array_equal(before[w.path], to_numpy(w))}
    for path in before:
        name = path.split("/")[-1]
        if name.startswith("pretrained_"):
            assert path not in moved, path
        elif name.startswith("finetuned_") or path.startswith(("gate_controller/", "head/")):
            assert path in moved, path
    trainable = {w.path for w in wrapped.trainable_weights}
    assert all(
        p.split("/")[-1].startswith("finetuned_") or p.startswith(("gate_controller/", "head/"))
        for p in trainable
    ), sorted(trainable)


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="a PyTorch memory layout (the torch tox env)"
)
def test_torch_kernels_stay_out_channel_major_through_fit_and_loading(tmp_path, rng):
    # AdaFilterConv2D stores its kernels in the layout PyTorch's channels-last convolution reads,
    # so that no step copies them; a copy anywhere (optimizer, loading) would silently cost that.
    def layouts(model):
        kernels = [
            kernel.value
            for layer in sublayers(model)
            if isinstance(layer, ak.AdaFilterConv2D)
            for kernel in (layer.pretrained_kernel, layer.finetuned_kernel)
        ]
        assert len({kernel.data_ptr() for kernel in kernels}) == len(kernels)
        return {kernel.permute(3, 0, 1, 2).is_contiguous() for kernel in kernels}

    wrapped = ak.wrap(build_plain_resnet(), seed=1)
    assert layouts(wrapped) == {True}
    wrapped.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.losses.MeanSquaredError())
    wrapped.fit(_images(8), rng.normal(size=(8, 4)), batch_size=4, epochs=1, verbose=0)
    assert layouts(wrapped) == {True}
    path = str(tmp_path / "wrapped.keras")
    wrapped.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert layouts(loaded) == {True}
    for before, after in zip(wrapped.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(before), to_numpy(after))


def test_targets_and_exclude_by_name_regex_and_callable():
    model = build_plain_resnet()

    def gated(**kwargs):
        return [layer.name for layer in ak.gated_layers(ak.wrap(model, **kwargs))]

    assert gated(targets="stem_conv") == ["stem_conv"]
    assert gated(targets=r"block2_.*") == ["block2_0_conv", "block2_1_conv", "block2_2_conv"]
    assert gated(targets=lambda layer: getattr(layer, "filters", 0) == 8) == [
        "stem_conv",
        "block1_1_conv",
        "block1_2_conv",
    ]
    assert gated(exclude=["stem_conv", r"block2_[12]_conv"]) == [
        "block1_1_conv",
        "block1_2_conv",
        "block2_0_conv",
    ]
    partial = ak.wrap(model, targets=["block1_1_conv"])
    types = types_of(partial)
    assert types.count("Conv2D") == 5 and types.count("AdaFilterConv2D") == 1


def test_nested_backbone_with_a_new_head_is_wrapped_in_place():
    backbone = randomize_batch_norms(
        apps.ResNet50(weights=None, input_shape=(32, 32, 3), include_top=False, pooling="avg")
    )
    backbone.trainable = False
    inputs = keras.Input((32, 32, 3))
    features = backbone(inputs, training=False)
    outputs = keras.layers.Dense(3, name="new_head")(keras.layers.Dropout(0.2)(features))
    model = keras.Model(inputs, outputs, name="classifier")
    x = _images()
    expected = model.predict(x, verbose=0)
    with pytest.warns(UserWarning, match="drops that argument"):
        wrapped = ak.wrap(model)
    assert wrapped.name == "classifier"
    inner = wrapped.get_layer(backbone.name)
    assert inner is not backbone and inner.trainable
    assert len(ak.gated_layers(wrapped)) == 53
    assert relative_difference(expected, wrapped.predict(x, verbose=0)) <= 1e-5
    assert wrapped.get_layer("new_head") is not model.get_layer("new_head")


def test_sequential_models_are_accepted():
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(4, 3, name="c1"),
            keras.layers.BatchNormalization(name="b1"),
            keras.layers.ReLU(),
            keras.layers.Conv2D(4, 3, activation="relu", name="c2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ],
        name="seq",
    )
    model = randomize_batch_norms(model)
    x = _images(size=16)
    wrapped = ak.wrap(model)
    assert [layer.name for layer in ak.gated_layers(wrapped)] == ["c1", "c2"]
    assert relative_difference(model.predict(x, verbose=0), wrapped.predict(x, verbose=0)) < 1e-5


def test_wrapped_model_saves_and_loads_in_a_fresh_process(tmp_path, rng):
    backbone = randomize_batch_norms(build_plain_resnet(name="backbone"))
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(2, name="top")(backbone(inputs)))
    wrapped = ak.wrap(
        model, seed=3, pretrained_bn="adapt", temperature=0.5, normalize_controller_inputs=True
    )
    wrapped.compile(keras.optimizers.SGD(0.05), keras.losses.MeanSquaredError())
    x, y = _images(8), rng.normal(size=(8, 2)).astype("float32")
    wrapped.fit(x, y, batch_size=4, verbose=0)
    expected = wrapped.predict(x, verbose=0)
    path = tmp_path / "wrapped.keras"
    wrapped.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    result = run_python(
        f"""
        import numpy as np, keras
        import adafilter_keras as ak
        model = keras.models.load_model({str(path)!r}, safe_mode=True)
        x, y = np.load({str(tmp_path / "x.npy")!r}), np.load({str(tmp_path / "y.npy")!r})
        np.save({str(tmp_path / "predicted.npy")!r}, model.predict(x, verbose=0))
        gated = ak.gated_layers(model)
        controller = model.get_layer("backbone").get_layer("gate_controller")
        assert controller.temperature == 0.5 and controller.seed == 3, controller.get_config()
        assert controller.normalize_inputs, controller.get_config()
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        print("gated", len(gated), "losses", *history.history["loss"])
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "predicted.npy"), expected)
    words = result.stdout.split()
    assert words[words.index("gated") + 1] == "6"
    losses = [float(v) for v in words[words.index("losses") + 1 :]]
    assert len(losses) == 2 and all(np.isfinite(losses))


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="custom_net")
        self.conv = keras.layers.Conv2D(4, 3)

    def call(self, x):
        return self.conv(x)


def test_refuses_subclassed_models():
    with pytest.raises(TypeError, match="Model 'custom_net' of type _Subclassed is subclassed"):
        ak.wrap(_Subclassed())


def test_refuses_shared_convs():
    conv = keras.layers.Conv2D(3, 3, padding="same", name="shared_conv")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, conv(conv(inputs)))
    with pytest.raises(ValueError, match="'shared_conv' \\(Conv2D\\) is called at 2 places"):
        ak.wrap(model)


def test_refuses_when_nothing_matches_and_lists_what_was_searched():
    model = build_plain_resnet()
    with pytest.raises(ValueError, match="'conv9' matches no layer. Layers searched: .*stem_conv"):
        ak.wrap(model, targets="conv9")
    with pytest.raises(ValueError, match="selected nothing. The Conv2D layers searched were: stem"):
        ak.wrap(model, targets="stem_conv", exclude="stem_conv")
    dense_only = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="mlp")
    with pytest.raises(ValueError, match="No Conv2D layer to gate in model 'mlp'"):
        ak.wrap(dense_only)


def test_refuses_targets_that_are_not_conv2d():
    model = build_plain_resnet()
    with pytest.raises(ValueError, match="not Conv2D: 'stem_bn' \\(BatchNormalization\\)"):
        ak.wrap(model, targets=["stem_conv", "stem_bn"])
    inputs = keras.Input((8, 8, 3))
    depthwise = keras.Model(inputs, keras.layers.DepthwiseConv2D(3, name="dw")(inputs))
    with pytest.raises(ValueError, match="'dw' \\(DepthwiseConv2D\\)"):
        ak.wrap(depthwise, targets=lambda layer: "dw" in layer.name)


def test_refuses_unsupported_convs_before_building_anything():
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, groups=2, name="grouped")(inputs))
    with pytest.raises(ValueError, match="'grouped' \\(Conv2D\\) cannot be gated.*groups=2"):
        ak.wrap(model)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(controller_units=0), "Received: controller_units=0"),
        (dict(temperature=0.0), "Received: temperature=0.0"),
        (dict(pretrained_bn="train"), "Received: pretrained_bn='train'"),
        (dict(seed=1.5), "Received: seed=1.5"),
        (dict(targets=3), "entries must be layer names"),
        (dict(policy="greedy"), "Received: policy='greedy'"),
        (dict(random_rate=1.0), "Received: random_rate=1.0"),
        (dict(granularity="layer"), "Received: granularity='layer'"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ak.wrap(build_plain_resnet(), **kwargs)


def test_no_warning_for_a_plain_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ak.wrap(build_plain_resnet())


def test_random_policy_has_no_controller_weights_and_draws_at_the_rate():
    model = build_plain_resnet()
    wrapped = ak.wrap(model, policy="random", random_rate=0.25, seed=0)
    controller = wrapped.get_layer("gate_controller")
    assert controller.trainable_weights == []
    x = _images(64)
    # Inference first: a training-mode call updates the fine-tuned BN statistics.
    np.testing.assert_allclose(
        wrapped.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )
    inference = ak.gate_model(wrapped).predict(x, verbose=0)
    assert all(np.all(g == 0.25) for g in inference)
    training_gates = [to_numpy(g) for g in ak.gate_model(wrapped)(x, training=True)]
    assert all(set(np.unique(g)) <= {0.0, 1.0} for g in training_gates)
    assert abs(np.mean(np.concatenate([g.ravel() for g in training_gates])) - 0.25) < 0.03


def test_block_granularity_shares_one_gate_per_residual_block():
    model = apps.ResNet50(weights=None, input_shape=(32, 32, 3), include_top=False)
    wrapped = ak.wrap(model, granularity="block")
    blocks = ak.gated_layers(wrapped)
    assert [b.name for b in blocks[:3]] == ["conv1_conv", "conv2_block1", "conv2_block2"]
    assert len(blocks) == 17 and all(b.filters == 1 for b in blocks)
    gates = ak.gate_model(wrapped).predict(_images(), verbose=0)
    assert len(gates) == 17 and all(g.shape == (2, 1) for g in gates)
    types = _layer_types(wrapped)
    assert types.count("AdaFilterConv2D") == 53 and types.count("GatedBatchNorm") == 53
    x = _images()
    assert relative_difference(model.predict(x, verbose=0), wrapped.predict(x, verbose=0)) < 1e-5


def _padded_cnn():
    """A CNN whose graph holds Keras ops (not layers) as keras-hub's ResNet V2 does."""
    inputs = keras.Input((16, 16, 3))
    x = keras.ops.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=float("-inf"))
    x = keras.layers.MaxPooling2D(3, strides=1, name="pool")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(x)
    x = keras.layers.BatchNormalization(name="b1")(x)
    x = keras.ops.maximum(x, 0.0)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    return randomize_batch_norms(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)))


def test_keras_ops_in_the_graph_are_copied_and_saved(tmp_path):
    model = _padded_cnn()
    x = _images(size=16)
    wrapped = ak.wrap(model)
    assert [layer.name for layer in ak.gated_layers(wrapped)] == ["c1", "c2"]
    assert relative_difference(model.predict(x, verbose=0), wrapped.predict(x, verbose=0)) <= 1e-5
    ops = [op for op in wrapped.operations if not isinstance(op, keras.layers.Layer)]
    assert sorted(type(op).__name__ for op in ops) == ["Maximum", "Pad"]
    assert not {id(op) for op in ops} & {id(op) for op in model.operations}  # copies
    wrapped.save(tmp_path / "padded.keras")
    loaded = keras.models.load_model(tmp_path / "padded.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), wrapped.predict(x, verbose=0))


class _Scale(keras.Operation):
    """An op whose constructor takes an array, so Keras cannot record its config."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape, x.dtype)


class _Unconfigurable(keras.layers.Layer):
    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor


def test_an_op_without_config_is_reused_and_a_layer_without_one_is_refused():
    inputs = keras.Input((8, 8, 3))
    scale = _Scale(np.full((3,), 2.0, "float32"))
    x = keras.layers.Conv2D(4, 3, name="c1")(scale(inputs))
    model = keras.Model(inputs, x)
    wrapped = ak.wrap(model)
    assert any(op is scale for op in wrapped.operations)  # stateless: shared, not copied
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    assert relative_difference(model.predict(x, verbose=0), wrapped.predict(x, verbose=0)) < 1e-5

    layer = _Unconfigurable(np.ones((3,), "float32"), name="odd")
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="c1")(layer(inputs)))
    with pytest.raises(ValueError, match="layer 'odd' \\(_Unconfigurable\\) could not be re-cr"):
        ak.wrap(model)


class _ConvBlock(keras.layers.Layer):
    """A subclassed layer with a Conv2D of its own (as keras-hub's MobileNet blocks are)."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same")

    def call(self, x):
        return self.conv(x)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def test_convs_inside_subclassed_layers_stay_plain_with_a_warning():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    model = keras.Model(inputs, _ConvBlock(4, name="block")(x))
    with pytest.warns(UserWarning, match="1 Conv2D layers inside 'block' \\(_ConvBlock\\) stay"):
        wrapped = ak.wrap(model)
    assert [layer.name for layer in ak.gated_layers(wrapped)] == ["c1"]
    x = _images(size=8)
    assert relative_difference(model.predict(x, verbose=0), wrapped.predict(x, verbose=0)) < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # chosen targets: the user knows
        ak.wrap(model, targets="c1")
