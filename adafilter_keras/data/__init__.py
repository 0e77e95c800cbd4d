"""Datasets: from a registry name to train / validation / test `tf.data` pipelines."""

from adafilter_keras.backbones.normalization import normalization_for
from adafilter_keras.data.loading import LoadedDataset, load
from adafilter_keras.data.registry import REGISTRY, DatasetSpec, DatasetUnavailableError

__all__ = [
    "REGISTRY",
    "DatasetSpec",
    "DatasetUnavailableError",
    "LoadedDataset",
    "load",
    "normalization_for",
]
