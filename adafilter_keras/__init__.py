"""AdaFilter for Keras 3.

Learn, per example and per filter, whether to use a pre-trained filter or a fine-tuned copy of it
(Guo et al., "AdaFilter: Adaptive Filter Fine-tuning for Deep Transfer Learning", AAAI 2020).
"""

from adafilter_keras.inspection import gate_model
from adafilter_keras.layers import AdaFilterConv2D, GateController, GatedBatchNorm
from adafilter_keras.version import __version__

__all__ = ["AdaFilterConv2D", "GateController", "GatedBatchNorm", "gate_model", "__version__"]
