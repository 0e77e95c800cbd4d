from adafilter_keras.layers.adafilter_conv2d import AdaFilterConv2D
from adafilter_keras.layers.gate_controller import GateController
from adafilter_keras.layers.gated_batch_norm import GatedBatchNorm

__all__ = ["AdaFilterConv2D", "GateController", "GatedBatchNorm"]
