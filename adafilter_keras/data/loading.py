"""`load()`: from a dataset name to train / validation / test `tf.data` pipelines."""

import dataclasses
import pathlib

import numpy as np
import tensorflow as tf

from adafilter_keras import validation
from adafilter_keras.backbones import normalization as input_normalization
from adafilter_keras.data import preprocessing, registry, splits
from adafilter_keras.data.sources import bundled, folder
from adafilter_keras.data.sources import tfds as tfds_source

# Eval images are cached in memory (after resizing) while they take at most this many bytes.
CACHE_LIMIT_BYTES = 2 * 1024**3


@dataclasses.dataclass
class LoadedDataset:
    """The pipelines and facts of one loaded dataset.

    Attributes:
        name: The registry name.
        train: Batches `(images float32 (batch, size, size, 3), labels int64 (batch,))`, shuffled
            and augmented.
        validation: Batches from the examples carved out of the training split (no augmentation);
            None when `validation_fraction=0`.
        test: Batches of the test split (no augmentation). Score it once, at the end.
        num_classes: Number of classes.
        class_names: Class names, indexed by label.
        sizes: Number of examples in `train`, `validation` and `test`.
        origin: Where the data was read from.
        split: For a folder without `train/` and `test/` sub-folders, the test split made from
            it (`{"test": [relative paths], ...}`): write it down and pass it back as `split=`
            so that later runs test on the same images. None otherwise.
        notes: One line for each thing the loader adapted instead of failing (a smaller
            validation set, so that every class keeps its shots).
    """

    name: str
    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    num_classes: int
    class_names: list
    sizes: dict
    origin: str
    split: dict | None = None
    notes: list = dataclasses.field(default_factory=list)


def load(
    name,
    *,
    image_size=224,
    batch_size=32,
    validation_fraction=0.1,
    seed=0,
    data_dir=None,
    shots_per_class=None,
    normalization="caffe",
    download=True,
    cache="auto",
    rest_as_test=False,
    test_fraction=0.2,
    split=None,
):
    """Loads a registered dataset as train / validation / test `tf.data` pipelines.

    Validation is carved out of the training split per class, deterministically by `seed`; the
    test split is never used for it. With `shots_per_class=k`, training keeps `k` examples of
    every class (chosen by `seed`) from what remains after the validation carve.

    Args:
        name: A registry name (`adafilter_keras.data.REGISTRY`; `adafilter-keras datasets` lists
            them) or `"folder:/path"` for `path/{train,test}/<class>/<image>` or
            `path/<class>/<image>`.
        image_size: Side of the square images produced.
        batch_size: Batch size of all three pipelines.
        validation_fraction: Fraction of each training class moved to validation, in [0, 1).
        seed: Seed of the validation carve, the k-shot choice, shuffling and augmentation.
        data_dir: Where prepared TFDS data and dataset folders are looked for (folder datasets
            at `data_dir/<folder>`); defaults to `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
        shots_per_class: Optional number of training examples kept per class.
        normalization: The backbone's input normalization: `"caffe"` (ResNet, VGG), `"tf"`
            (ResNet V2, MobileNet), `"torch"` (DenseNet) or `"raw"` (EfficientNet, ConvNeXt);
            `input_normalization.normalization_for(backbone_name)` picks it from a model name.
        download: Whether a TFDS dataset that is not prepared may be downloaded.
        cache: `"auto"` (cache what fits in memory), True or False.
        rest_as_test: With `shots_per_class`, also test on the training examples that were
            neither chosen as shots nor carved for validation (few-shot evaluation on
            everything left, for small datasets such as `uci_digits`).
        test_fraction: For a folder laid out `<class>/<image>`: the fraction of every class
            held out for testing, chosen with a fixed seed (the same for every `seed`).
        split: A `LoadedDataset.split` from an earlier load of the same folder, to test on the
            same images again (its own test fraction then wins over `test_fraction`).

    Returns:
        A `LoadedDataset`.

    Raises:
        ValueError: Unknown name, bad arguments, unusable folders, too few examples for
            `shots_per_class` (naming the class).
        DatasetUnavailableError: The data is absent and cannot be downloaded now (within
            seconds, naming the directories searched and how to obtain the data).
    """
    spec = registry.get(name)
    image_size = validation.positive_int("image_size", image_size)
    batch_size = validation.positive_int("batch_size", batch_size)
    if shots_per_class is not None:
        shots_per_class = validation.positive_int("shots_per_class", shots_per_class)
    validation.one_of("normalization", normalization, input_normalization.NORMALIZATIONS)
    validation.one_of("cache", cache, ("auto", True, False))
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"`test_fraction` must be in (0, 1). Received: test_fraction={test_fraction!r}"
        )
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            "`validation_fraction` must be in [0, 1). "
            f"Received: validation_fraction={validation_fraction!r}"
        )

    source = _open(spec, data_dir, download, split=split, test_fraction=test_fraction)
    train_pool, validation_indices = splits.carve_validation(
        source.train.labels, validation_fraction, seed, keep=shots_per_class or 0
    )
    notes = []
    usual = len(splits.carve_validation(source.train.labels, validation_fraction, seed)[1])
    if len(validation_indices) < usual:
        notes.append(
            f"validation: {len(validation_indices)} images instead of {usual}, so that every "
            f"class keeps its {shots_per_class} shots"
        )
    if rest_as_test and shots_per_class is None:
        raise ValueError(
            "`rest_as_test=True` moves the training examples not chosen as shots to the test "
            "set, so it needs `shots_per_class`. Received: shots_per_class=None"
        )
    test_parts = [(source.test, np.arange(len(source.test.labels)))]
    if shots_per_class is not None:
        chosen = splits.take_per_class(
            train_pool, source.train.labels, shots_per_class, seed, source.class_names
        )
        rest = np.setdiff1d(train_pool, chosen)
        if rest_as_test and len(rest):
            test_parts.append((source.train, rest))
        train_pool = chosen

    options = dict(image_size=image_size, batch_size=batch_size, normalization=normalization)
    train = _training_pipeline(source.train, train_pool, spec, seed=seed, cache=cache, **options)
    val = (
        _eval_pipeline([(source.train, validation_indices)], spec, cache=cache, **options)
        if len(validation_indices)
        else None
    )
    test = _eval_pipeline(test_parts, spec, cache=cache, **options)
    return LoadedDataset(
        name=spec.name,
        train=train,
        validation=val,
        test=test,
        num_classes=len(source.class_names),
        class_names=list(source.class_names),
        sizes={
            "train": len(train_pool),
            "validation": len(validation_indices),
            "test": sum(len(indices) for _, indices in test_parts),
        },
        origin=source.origin,
        split=source.split,
        notes=notes,
    )


def data_root(data_dir=None):
    """The directory searched for prepared TFDS data and dataset folders."""
    return pathlib.Path(data_dir).expanduser() if data_dir else tfds_source.default_data_dir()


def _open(spec, data_dir, download, **folder_options):
    if spec.source == "bundled":
        return bundled.load(spec)
    root = data_root(data_dir)
    if spec.source == "folder":
        path = pathlib.Path(spec.folder).expanduser()
        path = path if spec.name.startswith("folder:") else root / spec.folder
        return folder.load(spec, path, **folder_options)
    if spec.folder and (root / spec.folder).is_dir():  # a TFDS dataset also laid out as a folder
        return folder.load(spec, root / spec.folder, **folder_options)
    return tfds_source.load(spec, root, download)


def _training_pipeline(split, indices, spec, *, image_size, batch_size, normalization, seed, cache):
    dataset = split.read(indices)
    if cache is True or (cache == "auto" and split.in_memory):
        dataset = dataset.cache()
    dataset = dataset.shuffle(min(len(indices), 10_000), seed=seed, reshuffle_each_iteration=True)
    # One stateless seed per image, new each epoch: augmentation repeats exactly for a seed.
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def augment(example, draw):
        image, label = example
        image = preprocessing.random_resized_crop(
            preprocessing.to_rgb(image),
            image_size,
            min_area=spec.min_crop_area,
            flip=spec.flip,
            seed=draw,
        )
        return input_normalization.normalize(image, normalization), label

    dataset = tf.data.Dataset.zip(dataset, draws).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return _batched(dataset, batch_size)


def _eval_pipeline(parts, spec, *, image_size, batch_size, normalization, cache):
    """Evaluation batches of `parts`, a list of `(split, indices)` read one after the other."""

    def crop(image, label):
        image = preprocessing.center_crop(
            preprocessing.to_rgb(image), image_size, crop_fraction=spec.eval_crop_fraction
        )
        return tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8), label

    dataset = parts[0][0].read(parts[0][1])
    for split, indices in parts[1:]:
        dataset = dataset.concatenate(split.read(indices))
    dataset = dataset.map(crop, num_parallel_calls=tf.data.AUTOTUNE)
    count = sum(len(indices) for _, indices in parts)
    if cache is True or (cache == "auto" and count * image_size**2 * 3 <= CACHE_LIMIT_BYTES):
        dataset = dataset.cache()
    dataset = dataset.map(
        lambda image, label: (input_normalization.normalize(image, normalization), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return _batched(dataset, batch_size)


def _batched(dataset, batch_size):
    """Batches and prefetches `dataset`, with tf.data's autotuning model off.

    The model runs a thread per iterator, and deleting the iterator, which `fit` and `evaluate`
    do at their end, waits for that thread: measured 1.0-1.7 s after 15 steps of a small model
    on PyTorch, against a few milliseconds without it (docs/performance.md). Without it each
    `AUTOTUNE` map runs one call per CPU core (at most 16).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)
