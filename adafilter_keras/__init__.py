"""AdaFilter for Keras 3.

Learn, per example and per filter, whether to use a pre-trained filter or a fine-tuned copy of it
(Guo et al., "AdaFilter: Adaptive Filter Fine-tuning for Deep Transfer Learning", AAAI 2020).
"""

from adafilter_keras import console as _console

# Only the `adafilter-keras` command keeps TensorFlow's start-up lines off the screen (before Keras
# is first imported, the one moment it can); a program importing the library keeps its stderr.
if _console.started_as_command():
    _console.import_backend_quietly()

from adafilter_keras.inspection import (  # noqa: E402
    count_parameters,
    gate_model,
    gate_report,
    gated_layers,
)
from adafilter_keras.layers import AdaFilterConv2D, GateController, GatedBatchNorm, GateSettings  # noqa: E402
from adafilter_keras.version import __version__  # noqa: E402
from adafilter_keras.wrapping import wrap  # noqa: E402

__all__ = [
    "AdaFilterConv2D",
    "GateController",
    "GateSettings",
    "GatedBatchNorm",
    "__version__",
    "count_parameters",
    "gate_model",
    "gate_report",
    "gated_layers",
    "wrap",
]
