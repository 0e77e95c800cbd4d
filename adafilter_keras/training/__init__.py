"""The training and comparison harness."""

from adafilter_keras.training.config import METHODS, TrainConfig
from adafilter_keras.training.runner import TrainingDivergedError, train

__all__ = ["METHODS", "TrainConfig", "TrainingDivergedError", "train"]
