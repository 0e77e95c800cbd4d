import json
import time

import numpy as np
import pytest
import tensorflow as tf
from support import run_main, tensorflow_only

from adafilter_keras import data
from adafilter_keras.backbones.normalization import normalize
from adafilter_keras.data import preprocessing, registry, splits
from adafilter_keras.data.sources import folder as folder_source
from adafilter_keras.data.sources import tfds as tfds_source

pytestmark = tensorflow_only


def write_image_folder(root, splits_classes, size=(20, 16), corrupt=()):
    """Writes PNG and JPEG files as root/split/class/i.ext; `corrupt` names files to garble."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in splits_classes.items():
        for class_name, count in classes.items():
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(folder / f"{i}.{ext}")
    for relative in corrupt:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


@pytest.fixture
def offline(monkeypatch):
    # Probe a closed loopback port: the connection is refused at once, as with no network.
    monkeypatch.setenv("ADAFILTER_KERAS_NETWORK_PROBE", "127.0.0.1:9")


def _collect(dataset):
    images, labels = [], []
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


# --- registry and arguments ---------------------------------------------------------------


def test_unknown_name_lists_known_names_and_the_closest_match():
    with pytest.raises(
        ValueError, match="Unknown dataset 'stanford_dog'. Did you mean 'stanford_dogs'"
    ):
        data.load("stanford_dog")
    with pytest.raises(ValueError, match="Known datasets: .*cars196.*uci_digits"):
        data.load("imagenette")


def test_registry_has_the_paper_and_fine_grained_datasets():
    for name in [
        "stanford_dogs", "cars196", "caltech_birds2011", "oxford_flowers102", "oxford_iiit_pet",
        "dtd", "food101", "omniglot", "ucf101", "fgvc_aircraft", "mit_indoor67",
        "caltech256_30", "caltech256_60", "mnist5k", "uci_digits",
        "visual_domain_decathlon/aircraft", "visual_domain_decathlon/omniglot",
    ]:  # fmt: skip
        assert name in data.REGISTRY
    assert not data.REGISTRY["uci_digits"].flip and not data.REGISTRY["omniglot"].flip
    assert data.REGISTRY["stanford_dogs"].flip


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=0), "Received: image_size=0"),
        (dict(batch_size=-1), "Received: batch_size=-1"),
        (dict(validation_fraction=1.0), "Received: validation_fraction=1.0"),
        (dict(shots_per_class=0), "Received: shots_per_class=0"),
        (dict(normalization="imagenet"), "Received: normalization='imagenet'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load("uci_digits", **kwargs)


# --- splits -------------------------------------------------------------------------------


def test_validation_carve_is_stratified_disjoint_and_deterministic_by_seed():
    labels = np.repeat(np.arange(5), [10, 20, 3, 2, 40])
    train, val = splits.carve_validation(labels, 0.2, seed=7)
    assert not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(len(labels)))
    assert np.bincount(labels[val]).tolist() == [2, 4, 1, 1, 8]
    again_train, again_val = splits.carve_validation(labels, 0.2, seed=7)
    np.testing.assert_array_equal(val, again_val)
    np.testing.assert_array_equal(train, again_train)
    _, other_val = splits.carve_validation(labels, 0.2, seed=8)
    assert not np.array_equal(val, other_val)


def test_shots_per_class_names_the_short_class():
    labels = np.array([0] * 5 + [1] * 2)
    with pytest.raises(ValueError, match="class 'cat' has only 2 training examples"):
        splits.take_per_class(np.arange(7), labels, 3, 0, ["dog", "cat"])
    chosen = splits.take_per_class(np.arange(7), labels, 2, 0, ["dog", "cat"])
    assert np.bincount(labels[chosen]).tolist() == [2, 2]


# --- bundled data -------------------------------------------------------------------------


def test_uci_digits_pipelines_shapes_dtypes_labels_and_sizes():
    loaded = data.load("uci_digits", image_size=24, batch_size=64, seed=3)
    assert loaded.num_classes == 10 and loaded.class_names == [str(i) for i in range(10)]
    sizes = loaded.sizes
    assert sizes["train"] + sizes["validation"] == 1438 and sizes["test"] == 359
    assert 0.09 < sizes["validation"] / 1438 < 0.11
    for pipeline, size in [
        (loaded.train, sizes["train"]),
        (loaded.validation, sizes["validation"]),
        (loaded.test, sizes["test"]),
    ]:
        images, labels = _collect(pipeline)
        assert images.shape == (size, 24, 24, 3) and images.dtype == np.float32
        assert labels.dtype == np.int64 and labels.min() == 0 and labels.max() == 9
        # caffe normalization of [0, 255] images: BGR minus the ImageNet mean
        assert images.min() >= -123.68 - 1e-3 and images.max() <= 255 - 103.939 + 1e-3


def test_pipelines_run_without_the_autotuning_model_thread():
    # Deleting an iterator (the end of every `fit` and `evaluate`) waits for that thread: up to
    # 1.7 s after a short epoch (docs/performance.md). The setting must reach every pipeline and
    # survive what the harness adds to it.
    loaded = data.load("uci_digits", image_size=24, batch_size=64, seed=3)
    for pipeline in (loaded.train, loaded.validation, loaded.test):
        assert pipeline.options().autotune.enabled is False
        assert pipeline.repeat().map(lambda x, y: (x, y)).options().autotune.enabled is False


def test_mnist5k_is_shuffled_before_splitting_and_k_shot_is_exact():
    loaded = data.load("mnist5k", image_size=28, batch_size=500, shots_per_class=5, seed=1)
    assert loaded.sizes["train"] == 50
    _, val_labels = _collect(loaded.validation)
    assert sorted(set(val_labels.tolist())) == list(range(10))  # not one class: shuffled
    _, train_labels = _collect(loaded.train)
    assert np.bincount(train_labels).tolist() == [5] * 10
    with pytest.raises(ValueError, match="shots_per_class=500.*class '0' has only 400"):
        data.load("mnist5k", shots_per_class=500)
    # A class too small for its shots and the default validation share gives up validation.
    tight = data.load("uci_digits", image_size=8, batch_size=500, shots_per_class=135)
    assert tight.sizes["train"] == 1350 and 0 < tight.sizes["validation"] < 144
    assert tight.notes and "so that every class keeps its 135 shots" in tight.notes[0]
    assert data.load("uci_digits", image_size=8, shots_per_class=5).notes == []


def test_same_seed_gives_the_same_validation_set_and_another_seed_another():
    def validation_images(seed):
        loaded = data.load("uci_digits", image_size=8, batch_size=512, seed=seed)
        return _collect(loaded.validation)[0]

    np.testing.assert_array_equal(validation_images(0), validation_images(0))
    assert not np.array_equal(validation_images(0), validation_images(1))


def test_augmentation_is_on_for_train_only():
    loaded = data.load("uci_digits", image_size=16, batch_size=1000, shots_per_class=2, seed=0)

    def by_label(pipeline):
        images, labels = _collect(pipeline)
        return images[np.argsort(labels, kind="stable")]

    assert not np.array_equal(by_label(loaded.train), by_label(loaded.train))
    np.testing.assert_array_equal(by_label(loaded.validation), by_label(loaded.validation))
    np.testing.assert_array_equal(by_label(loaded.test), by_label(loaded.test))


def test_augmentation_repeats_exactly_for_a_seed_whatever_the_threads():
    # Stateless crops seeded per image: two loads (as two processes of one run would make) give
    # the same epochs; each epoch draws anew; another seed draws otherwise.
    def epochs(seed, count=2):
        loaded = data.load("uci_digits", image_size=16, batch_size=64, shots_per_class=5, seed=seed)
        # 50 images, one batch per epoch
        return [images.numpy() for images, _ in loaded.train.repeat(count)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], other[0])


# --- image folders ------------------------------------------------------------------------


def test_folder_dataset_with_a_corrupt_image_warns_once_and_skips_it(tmp_path):
    root = write_image_folder(
        tmp_path / "pets",
        {"train": {"cat": 6, "dog": 5}, "test": {"cat": 2, "dog": 3}},
        corrupt=["train/dog/broken.png", "test/cat/broken.jpg"],
    )
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image file\(s\).*broken") as record:
        loaded = data.load(f"folder:{root}", image_size=12, batch_size=4, validation_fraction=0.2)
    assert len([w for w in record if "unreadable" in str(w.message)]) == 1
    assert loaded.class_names == ["cat", "dog"] and loaded.num_classes == 2
    assert loaded.sizes == {"train": 9, "validation": 2, "test": 5}
    for pipeline, size in [(loaded.train, 9), (loaded.validation, 2), (loaded.test, 5)]:
        images, labels = _collect(pipeline)  # two epochs would show a crash mid-epoch too
        assert images.shape == (size, 12, 12, 3) and set(labels.tolist()) <= {0, 1}


def test_a_file_that_breaks_after_the_scan_does_not_end_the_epoch(tmp_path):
    root = write_image_folder(tmp_path / "d", {"train": {"a": 4, "b": 4}, "test": {"a": 1, "b": 1}})
    loaded = data.load(f"folder:{root}", image_size=8, batch_size=2, validation_fraction=0)
    (root / "train" / "a" / "0.jpg").write_bytes(b"garbage now")
    assert int(loaded.train.cardinality()) == 4
    for _ in range(2):
        images, _ = _collect(loaded.train)
        assert len(images) == 8  # 7 readable, one read again to keep the length


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"train": {"a": 0, "b": 0}, "test": {"a": 0}}, "no readable images"),
        ({"train": {"only": 3}, "test": {"only": 1}}, "single class \\('only'\\)"),
        ({"train": {"a": 2, "b": 2}}, "has no test sub-folder"),
        ({"train": {"a": 2, "b": 2}, "test": {"c": 1}}, "test classes \\['c'\\] have no training"),
    ],
)
def test_unusable_folders_give_clear_errors(tmp_path, layout, message):
    root = write_image_folder(tmp_path / "bad", layout)
    with pytest.raises(ValueError, match=message):
        data.load(f"folder:{root}")


def test_missing_folder_and_empty_prefix(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="does not exist"):
        data.load(f"folder:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="needs a path"):
        data.load("folder:")


def test_class_only_folder_uses_a_fixed_per_class_protocol(tmp_path):
    root = write_image_folder(tmp_path, {"caltech": {"001.a": 5, "002.b": 4, "257.clutter": 3}})
    spec = registry.DatasetSpec(
        name="tiny_caltech", source="folder", folder="caltech", num_classes=2,
        description="", per_class=(2, 1),
    )  # fmt: skip
    first = folder_source.load(spec, root / "caltech")
    again = folder_source.load(spec, root / "caltech")
    assert first.class_names == ["001.a", "002.b"]  # the clutter class is skipped
    assert np.bincount(first.train.labels).tolist() == [2, 2]
    assert np.bincount(first.test.labels).tolist() == [1, 1]
    np.testing.assert_array_equal(first.train.labels, again.train.labels)
    assert first.split is None  # a protocol split is fixed: nothing to write down or reuse
    too_few = registry.DatasetSpec(**{**spec.__dict__, "per_class": (4, 1)})
    with pytest.raises(
        ValueError, match="class '002.b' has 4 readable images; the protocol needs 4"
    ):
        folder_source.load(too_few, root / "caltech")


def test_cars196_reads_a_folder_when_present_and_says_why_otherwise(tmp_path, offline):
    with pytest.raises(data.DatasetUnavailableError, match="404.*stanford_cars/\\{train,test\\}"):
        data.load("cars196", data_dir=tmp_path)
    write_image_folder(tmp_path / "stanford_cars", {"train": {"a": 2, "b": 2}, "test": {"a": 1}})
    loaded = data.load("cars196", data_dir=tmp_path, image_size=8, validation_fraction=0)
    assert loaded.sizes == {"train": 4, "validation": 0, "test": 1} and loaded.validation is None


# --- TFDS ---------------------------------------------------------------------------------


def test_absent_tfds_data_fails_fast_with_directories_and_remedy(tmp_path, offline):
    start = time.monotonic()
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load("stanford_dogs", data_dir=tmp_path)
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "'stanford_dogs'" in message and str(tmp_path / "stanford_dogs") in message
    assert "no network connection" in message and "data_dir=" in message
    with pytest.raises(data.DatasetUnavailableError, match="download=False"):
        data.load("stanford_dogs", data_dir=tmp_path, download=False)


def test_tfds_dataset_through_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds_source, "is_prepared", lambda name, data_dir: True)
    with tfds.testing.mock_data(num_examples=24):
        loaded = data.load("dtd", data_dir=tmp_path, image_size=16, batch_size=8)
        assert loaded.num_classes == 47 and len(loaded.class_names) == 47
        assert loaded.sizes["train"] + loaded.sizes["validation"] == 24
        images, labels = _collect(loaded.train)
        assert images.shape[1:] == (16, 16, 3) and images.dtype == np.float32
        assert labels.min() >= 0 and labels.max() < 47
        test_images, _ = _collect(loaded.test)
        assert len(test_images) == 24
        assert int(loaded.test.cardinality()) == 3  # known: Keras shows the steps
        assert int(loaded.train.cardinality()) == -(-loaded.sizes["train"] // 8)


def test_prepared_detection_reads_the_folder_only(tmp_path):
    assert not tfds_source.is_prepared("dtd", tmp_path)
    (tmp_path / "dtd" / "3.0.1").mkdir(parents=True)
    (tmp_path / "dtd" / "3.0.1" / "dataset_info.json").write_text("{}")
    assert tfds_source.is_prepared("dtd", tmp_path)


# --- preprocessing ------------------------------------------------------------------------


def test_caffe_and_tf_normalizations_match_keras_applications():
    import keras

    images = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    expected = keras.applications.resnet.preprocess_input(images.copy())
    np.testing.assert_allclose(
        normalize(images, "caffe").numpy(), keras.ops.convert_to_numpy(expected),
        rtol=1e-6, atol=1e-4,
    )  # fmt: skip
    expected_v2 = keras.applications.resnet_v2.preprocess_input(images.copy())
    np.testing.assert_allclose(
        normalize(images, "tf").numpy(), keras.ops.convert_to_numpy(expected_v2),
        rtol=1e-6, atol=1e-6,
    )  # fmt: skip


@pytest.mark.parametrize(
    "backbone, normalization",
    [("ResNet50", "caffe"), ("ResNet101V2", "tf"), ("VGG16", "caffe"), ("DenseNet121", "torch"),
     ("EfficientNetB0", "raw"), ("MobileNetV2", "tf"),
     # keras-hub presets: the model built from one normalizes its inputs itself
     ("resnet_50_imagenet", "raw"), ("./my_preset", "raw")],
)  # fmt: skip
def test_normalization_for_backbones(backbone, normalization):
    assert data.normalization_for(backbone) == normalization


@pytest.mark.parametrize("normalization", ["caffe", "tf", "raw"])
def test_every_pipeline_knows_its_three_channels(normalization):
    # A model whose first layer is not a Conv2D (ResNet V2's ZeroPadding2D) needs them known.
    loaded = data.load("uci_digits", image_size=16, batch_size=8, normalization=normalization)
    for pipeline in (loaded.train, loaded.validation, loaded.test):
        assert tuple(pipeline.element_spec[0].shape) == (None, 16, 16, 3)


def test_eval_crop_is_central_and_sized():
    # size / crop_fraction = 20 = the shorter side: no resize, so the crop is exact pixels.
    tall = (np.arange(30 * 20 * 3).reshape(30, 20, 3) % 251).astype(np.uint8)
    crop = preprocessing.center_crop(tf.constant(tall), 10, crop_fraction=0.5).numpy()
    assert crop.shape == (10, 10, 3) and crop.dtype == np.float32
    np.testing.assert_array_equal(crop, tall[10:20, 5:15])  # rows (30-10)//2, cols (20-10)//2
    wide = np.ascontiguousarray(tall.transpose(1, 0, 2))  # 20 x 30
    crop = preprocessing.center_crop(tf.constant(wide), 10, crop_fraction=0.5).numpy()
    np.testing.assert_array_equal(crop, wide[5:15, 10:20])
    # Shorter side 20 resized to 10 / 1.0 = 10: the 40 x 20 image becomes 20 x 10, rows 5-14.
    image = tf.reshape(tf.range(40 * 20 * 3, dtype=tf.int32) % 256, (40, 20, 3))
    crop = preprocessing.center_crop(tf.cast(image, tf.uint8), 10, crop_fraction=1.0)
    assert crop.shape == (10, 10, 3)
    resized = tf.image.resize(tf.cast(image, tf.uint8), (20, 10), antialias=True).numpy()
    np.testing.assert_array_equal(crop.numpy(), resized[5:15])


# --- the `datasets` command ---------------------------------------------------------------


def test_datasets_command_lists_status(tmp_path, capsys):
    write_image_folder(tmp_path / "mit_indoor67", {"train": {"a": 1}, "test": {"a": 1}})
    result = run_main(capsys, "datasets", "--data-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["mit_indoor67"]["status"].startswith("present")
    assert rows["fgvc_aircraft"]["status"].startswith("manual step: Download fgvc-aircraft")
    assert rows["stanford_dogs"]["status"] == f"downloadable (TFDS, into {tmp_path})"
    assert rows["uci_digits"]["status"].startswith("present (bundled")
    assert rows["cars196"]["classes"] == 196


def test_rest_as_test_scores_every_unused_training_example():
    plain = data.load("uci_digits", image_size=8, batch_size=2000, shots_per_class=5, seed=3)
    rest = data.load(
        "uci_digits", image_size=8, batch_size=2000, shots_per_class=5, seed=3, rest_as_test=True
    )
    sizes = rest.sizes
    assert sizes["train"] == 50 and sizes["validation"] == plain.sizes["validation"]
    assert sizes["train"] + sizes["validation"] + sizes["test"] == 1797  # every image once
    test_images, test_labels = _collect(rest.test)
    assert len(test_labels) == sizes["test"]
    # The fixed test split is still all there, plus the unused training images.
    test_rows = {image.tobytes() for image in test_images}
    plain_test_rows = {image.tobytes() for image in _collect(plain.test)[0]}
    assert plain_test_rows <= test_rows
    with pytest.raises(ValueError, match="needs `shots_per_class`"):
        data.load("uci_digits", rest_as_test=True)


def test_class_only_folder_splits_off_a_test_set_per_class_and_reuses_a_written_split(tmp_path):
    root = write_image_folder(tmp_path, {"pets": {"cat": 10, "dog": 5, "owl": 1}}) / "pets"
    options = dict(image_size=8, batch_size=4, validation_fraction=0)
    first = data.load(f"folder:{root}", test_fraction=0.2, **options)
    other_seed = data.load(f"folder:{root}", test_fraction=0.2, seed=7, **options)
    # 20 % of each class with at least two images; a single image trains.
    assert first.sizes == {"train": 13, "validation": 0, "test": 3}
    assert first.class_names == ["cat", "dog", "owl"]
    assert len(first.split["test"]) == 3 and first.split["test_fraction"] == 0.2
    assert [p.split("/")[0] for p in first.split["test"]] == ["cat", "cat", "dog"]
    assert other_seed.split["test"] == first.split["test"]  # fixed, not the run's seed
    _, test_labels = _collect(first.test)
    assert sorted(test_labels.tolist()) == [0, 0, 1]

    write_image_folder(tmp_path, {"pets": {"newcomer": 3}})  # images added after the split
    again = data.load(f"folder:{root}", split=first.split, test_fraction=0.5, **options)
    assert again.split["test"] == first.split["test"] and again.sizes["train"] == 16
    assert again.split["test_fraction"] == 0.2  # the written split's, not the new flag's

    (root / first.split["test"][0]).unlink()
    with pytest.raises(ValueError, match="no longer readable.*delete the split file"):
        data.load(f"folder:{root}", split=first.split, **options)
    with pytest.raises(ValueError, match="not one adafilter_keras wrote"):
        data.load(f"folder:{root}", split={"test": []}, **options)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load(f"folder:{root}", test_fraction=1.0, **options)


def test_folder_training_data_has_a_known_length_and_keras_never_runs_out(tmp_path):
    import warnings

    import keras

    root = write_image_folder(tmp_path, {"d": {"a": 7, "b": 6}}) / "d"
    loaded = data.load(f"folder:{root}", image_size=8, batch_size=4, validation_fraction=0)
    assert int(loaded.train.cardinality()) == 3  # ceil(11 training images / 4)
    assert int(loaded.test.cardinality()) == 1
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(loaded.train, epochs=3, verbose=0)
    assert len(history.history["loss"]) == 3
    assert not [w for w in caught if "ran out of data" in str(w.message)]
