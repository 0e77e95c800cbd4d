from adafilter_keras.layers.adafilter_conv2d import AdaFilterConv2D
from adafilter_keras.layers.gate_controller import GateController
from adafilter_keras.layers.gated_batch_norm import GatedBatchNorm
from adafilter_keras.layers.settings import GateSettings

__all__ = ["AdaFilterConv2D", "GateController", "GateSettings", "GatedBatchNorm"]
