"""TensorFlow Datasets, failing fast and usefully when the data is absent and cannot be fetched."""

import os
import pathlib

import numpy as np
import tensorflow as tf

from adafilter_keras import network
from adafilter_keras.data.registry import DatasetUnavailableError
from adafilter_keras.data.sources.base import SourceData, SplitData


def default_data_dir():
    """TFDS's data directory: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def is_prepared(tfds_name, data_dir):
    """Whether a prepared copy of `tfds_name` (any version) lies under `data_dir`.

    Looks at the files only: asking TFDS itself may reach for the network.
    """
    folder = pathlib.Path(data_dir).expanduser() / tfds_name
    return any(folder.glob("*/dataset_info.json"))


def load(spec, data_dir=None, download=True):
    """Opens a TFDS dataset, downloading and preparing it first if needed and possible.

    Raises:
        DatasetUnavailableError: If the data is not prepared under `data_dir` and cannot be
            downloaded now (download disabled, or no network); raised within seconds.
    """
    import tensorflow_datasets as tfds

    data_dir = pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()
    prepared = is_prepared(spec.tfds_name, data_dir)
    if not prepared:
        reason = None
        if spec.manual_step:
            reason = spec.manual_step
        elif not download:
            reason = "Downloading is disabled (download=False)."
        elif not network.network_available():
            host, port = network.probe_address()
            reason = (
                f"There is no network connection ({host}:{port} cannot be reached), so TFDS "
                "cannot download it."
            )
        if reason:
            raise DatasetUnavailableError(
                f"Dataset {spec.name!r} (TFDS {spec.tfds_name!r}) is not prepared in "
                f"{data_dir / spec.tfds_name}. {reason} To use it: run once on a machine with "
                f"network access (it downloads into {data_dir}) and copy "
                f"{data_dir / spec.tfds_name} here, or pass data_dir= (or set $TFDS_DATA_DIR) to "
                "where it is prepared."
            )
    builder = tfds.builder(spec.tfds_name, data_dir=str(data_dir))
    if not prepared:
        builder.download_and_prepare()
    names = builder.info.features["label"].names
    return SourceData(
        train=_split(builder, spec.train_split),
        test=_split(builder, spec.test_split),
        class_names=list(names),
        origin=f"tfds:{spec.tfds_name} in {data_dir}",
    )


def _split(builder, split):
    import tensorflow_datasets as tfds

    def examples():
        return builder.as_dataset(
            split=split,
            decoders={"image": tfds.decode.SkipDecoding()},
            shuffle_files=False,
        )

    labels = np.fromiter(examples().map(lambda ex: ex["label"]).as_numpy_iterator(), dtype=np.int64)

    def read(indices):
        mask = np.zeros(len(labels), bool)
        mask[indices] = True
        mask = tf.constant(mask)
        dataset = examples().enumerate().filter(lambda i, ex: mask[i])
        # The filter keeps exactly len(indices) examples; saying so gives Keras a known length.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(indices)))
        return dataset.map(
            lambda i, ex: (_image(ex["image"]), ex["label"]), num_parallel_calls=tf.data.AUTOTUNE
        )

    return SplitData(labels=labels, read=read)


def _image(image):
    if image.dtype == tf.string:  # encoded bytes (SkipDecoding)
        return tf.io.decode_image(image, channels=3, expand_animations=False)
    return image  # already decoded (some mocks ignore decoders)
