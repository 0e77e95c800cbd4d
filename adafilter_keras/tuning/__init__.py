"""Hyper-parameter search over the training harness with keras-tuner."""

from adafilter_keras.tuning.hypermodel import TrainHyperModel
from adafilter_keras.tuning.search import TUNERS, SearchFailedError, TuneResult, tune
from adafilter_keras.tuning.space import DEFAULT_SPACES, SearchSpaceError, load_space

__all__ = [
    "DEFAULT_SPACES",
    "TUNERS",
    "SearchFailedError",
    "SearchSpaceError",
    "TrainHyperModel",
    "TuneResult",
    "load_space",
    "tune",
]
