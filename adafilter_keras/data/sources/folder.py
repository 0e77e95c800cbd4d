"""Image folders: `root/{train,test}/<class>/<image>`, or `root/<class>/<image>` with a protocol."""

import pathlib
import warnings

import numpy as np
import tensorflow as tf

from adafilter_keras.data.registry import DatasetUnavailableError
from adafilter_keras.data.sources.base import SourceData, SplitData

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# The per-class train/test split of a class-only folder (Caltech-256) is fixed by the protocol.
PROTOCOL_SEED = 0
SKIPPED_CLASSES = ("257.clutter",)


def load(spec, root):
    """Reads a folder dataset's file lists, skipping (and reporting) unreadable images.

    Args:
        spec: The `DatasetSpec`; `spec.per_class` selects the class-only layout.
        root: The dataset's folder.

    Raises:
        DatasetUnavailableError: If the folder does not exist.
        ValueError: If it holds no images, a single class, or test classes unknown to training.
    """
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DatasetUnavailableError(
            f"Dataset {spec.name!r}: folder {root} does not exist. "
            + (spec.manual_step or "Expected root/{train,test}/<class>/<image>.")
        )
    if spec.per_class:
        classes = _class_dirs(root)
        files = {name: _images(root / name) for name in classes}
        files, corrupt = _drop_unreadable(files)
        train, test = _protocol_split(files, *spec.per_class, spec.name)
    else:
        missing = [s for s in ("train", "test") if not (root / s).is_dir()]
        if missing:
            raise ValueError(
                f"Dataset {spec.name!r}: folder {root} has no {' or '.join(missing)} "
                "sub-folder. Lay images out as root/train/<class>/<image> and "
                "root/test/<class>/<image>."
            )
        train = {name: _images(root / "train" / name) for name in _class_dirs(root / "train")}
        test = {name: _images(root / "test" / name) for name in _class_dirs(root / "test")}
        train, corrupt_train = _drop_unreadable(train)
        test, corrupt_test = _drop_unreadable(test)
        corrupt = corrupt_train + corrupt_test
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise ValueError(
                f"Dataset {spec.name!r}: test classes {unknown[:5]} have no training folder "
                f"in {root / 'train'}."
            )
    if corrupt:
        shown = ", ".join(str(p) for p in corrupt[:3])
        warnings.warn(
            f"Dataset {spec.name!r}: skipped {len(corrupt)} unreadable image file(s) in {root}, "
            f"e.g. {shown}.",
            stacklevel=3,
        )
    class_names = sorted(name for name, paths in train.items() if paths)
    total = sum(len(paths) for paths in train.values())
    if total == 0:
        raise ValueError(
            f"Dataset {spec.name!r}: no readable images ({', '.join(IMAGE_SUFFIXES)}) in "
            f"{root}. Expected root/train/<class>/<image>."
        )
    if len(class_names) < 2:
        raise ValueError(
            f"Dataset {spec.name!r}: found a single class ({class_names[0]!r}) in {root}; "
            "classification needs at least two class folders."
        )
    index = {name: i for i, name in enumerate(class_names)}
    return SourceData(
        train=_split(train, index),
        test=_split(test, index),
        class_names=class_names,
        origin=str(root),
    )


def _class_dirs(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in SKIPPED_CLASSES)


def _images(folder):
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _drop_unreadable(files):
    from PIL import Image

    kept, corrupt = {}, []
    for name, paths in files.items():
        kept[name] = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    image.verify()
                kept[name].append(path)
            except Exception:  # PIL raises many types for bad files; any means "unreadable"
                corrupt.append(path)
    return kept, corrupt


def _protocol_split(files, train_count, test_count, name):
    rng = np.random.default_rng(PROTOCOL_SEED)
    train, test = {}, {}
    for class_name, paths in files.items():
        if len(paths) < train_count + test_count:
            raise ValueError(
                f"Dataset {name!r}: class {class_name!r} has {len(paths)} readable images; the "
                f"protocol needs {train_count} for training and {test_count} for testing."
            )
        order = rng.permutation(len(paths))
        train[class_name] = [paths[i] for i in order[:train_count]]
        test[class_name] = [paths[i] for i in order[train_count : train_count + test_count]]
    return train, test


def _split(files, index):
    paths = np.array([p for name in sorted(files) for p in files[name]], dtype=object)
    labels = np.array([index[name] for name in sorted(files) for _ in files[name]], np.int64)

    def read(indices):
        dataset = tf.data.Dataset.from_tensor_slices((paths[indices].astype(str), labels[indices]))
        dataset = dataset.map(_decode, num_parallel_calls=tf.data.AUTOTUNE)
        # Files were checked up front; this keeps a file that breaks later from ending an epoch.
        return dataset.ignore_errors()

    return SplitData(labels=labels, read=read)


def _decode(path, label):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return image, label
