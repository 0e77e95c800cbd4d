"""The offline transfer benchmark: AdaFilter against the baselines on data shipped in packages."""

from adafilter_keras.transfer.runs import Benchmark, BenchmarkSettings, Cell, default_optimizer
from adafilter_keras.transfer.tasks import REGIMES, TASKS

__all__ = ["REGIMES", "TASKS", "Benchmark", "BenchmarkSettings", "Cell", "default_optimizer"]
