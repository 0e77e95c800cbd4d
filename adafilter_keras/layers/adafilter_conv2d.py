"""AdaFilterConv2D: a convolution with a frozen pre-trained kernel and a trainable copy."""

import keras
from keras import activations, initializers, ops, regularizers

from adafilter_keras import validation
from adafilter_keras.layers.branches import check_gate, mix_branches


@keras.saving.register_keras_serializable(package="adafilter_keras")
class AdaFilterConv2D(keras.layers.Layer):
    """A `Conv2D` with two kernels: the frozen pre-trained one and a trainable fine-tuned copy.

    Both branches convolve the same input; the frozen kernel gets no weight gradient, so a training
    step costs about 5/3 of a plain convolution's. The layer has two modes, chosen by how it is
    called:

    * `layer(inputs)` returns both branches, a tuple `(pretrained, finetuned)` of tensors of shape
      `(batch, height, width, filters)`. Use this when a `GatedBatchNorm` follows; the activation,
      if any, is applied to each branch.
    * `layer(inputs, gate)` with `gate` of shape `(batch, filters)` mixes the branches itself,
      `gate * finetuned + (1 - gate) * pretrained` per example and per filter, then applies the
      activation. Use this where no batch normalization follows the convolution (VGG, ResNet V2).

    At construction from plain arguments both kernels (and biases) start equal, drawn once from the
    initializers; `from_conv2d` copies the weights of an existing `Conv2D` into both.

    Args:
        filters: Number of output filters per branch.
        kernel_size: Int or pair of ints.
        strides: Int or pair of ints.
        padding: `"valid"` or `"same"`.
        data_format: Only `"channels_last"` (or None, meaning the Keras default, which must then
            be channels_last) is supported.
        dilation_rate: Int or pair of ints.
        groups: Only 1 is supported.
        activation: Activation applied after mixing (or to each branch when no gate is given).
        use_bias: Whether both branches have a bias.
        kernel_initializer: Initializer for the (shared) initial kernel value.
        bias_initializer: Initializer for the (shared) initial bias value.
        kernel_regularizer: Regularizer applied to the fine-tuned kernel.
        bias_regularizer: Regularizer applied to the fine-tuned bias.
        activity_regularizer: Regularizer on the layer's output.
        kernel_constraint: Not supported; must be None.
        bias_constraint: Not supported; must be None.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.filters = validation.positive_int("filters", filters)
        self.kernel_size = validation.int_pair("kernel_size", kernel_size)
        self.strides = validation.int_pair("strides", strides)
        self.padding = validation.one_of("padding", str(padding).lower(), ("valid", "same"))
        self.dilation_rate = validation.int_pair("dilation_rate", dilation_rate)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "`strides > 1` is not compatible with `dilation_rate > 1`. "
                f"Received: strides={self.strides}, dilation_rate={self.dilation_rate}"
            )
        resolved_format = data_format or keras.config.image_data_format()
        if resolved_format != "channels_last":
            raise ValueError(
                "AdaFilterConv2D supports only data_format='channels_last'. Build the model with "
                "channels_last (keras.config.set_image_data_format('channels_last')). "
                f"Received: data_format={resolved_format!r}"
            )
        self.data_format = "channels_last"
        if groups != 1:
            raise ValueError(
                "AdaFilterConv2D supports only groups=1 (grouped convolutions are not gated). "
                f"Received: groups={groups!r}"
            )
        for name, constraint in (
            ("kernel_constraint", kernel_constraint),
            ("bias_constraint", bias_constraint),
        ):
            if constraint is not None:
                raise ValueError(
                    f"AdaFilterConv2D does not support `{name}`: a constraint on the fine-tuned "
                    f"weights would break the equality with the pre-trained ones at "
                    f"initialisation. Remove it. Received: {name}={constraint!r}"
                )
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.input_spec = keras.layers.InputSpec(min_ndim=4, max_ndim=4)

    @classmethod
    def from_conv2d(cls, conv, **kwargs):
        """Creates a built `AdaFilterConv2D` whose both kernels are copies of `conv`'s.

        Args:
            conv: A built `keras.layers.Conv2D`.
            **kwargs: Overrides for the constructor arguments (for example `name`); by default the
                new layer takes `conv`'s name and dtype policy.

        Returns:
            The new layer, built, with `pretrained_kernel == finetuned_kernel == conv.kernel` (and
            the same for the bias).
        """
        if not isinstance(conv, keras.layers.Conv2D):
            raise TypeError(
                "AdaFilterConv2D.from_conv2d expects a keras.layers.Conv2D. "
                f"Received: conv={conv!r} of type {type(conv).__name__}"
            )
        if not conv.built:
            raise ValueError(
                f"Conv2D layer '{conv.name}' is not built, so it has no weights to copy. Call it "
                "on an input (or use it in a model) first."
            )
        config = conv.get_config()
        arguments = {
            key: config[key]
            for key in (
                "filters",
                "kernel_size",
                "strides",
                "padding",
                "data_format",
                "dilation_rate",
                "groups",
                "activation",
                "use_bias",
                "kernel_initializer",
                "bias_initializer",
                "kernel_regularizer",
                "bias_regularizer",
                "activity_regularizer",
                "kernel_constraint",
                "bias_constraint",
            )
        }
        arguments.update(name=conv.name, dtype=conv.dtype_policy)
        arguments.update(kwargs)
        layer = cls(**arguments)
        kernel = ops.convert_to_tensor(conv.kernel)
        # Build straight from conv's values: drawing from the initializers first would waste
        # most of the time wrap() takes. The initializers are restored for get_config().
        initializers_kept = layer.kernel_initializer, layer.bias_initializer
        layer.kernel_initializer = _Values(kernel)
        layer.bias_initializer = _Values(conv.bias if layer.use_bias else None)
        try:
            layer.build((None, None, None, kernel.shape[2]))
        finally:
            layer.kernel_initializer, layer.bias_initializer = initializers_kept
        return layer

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"Layer '{self.name}' needs the number of input channels (the last axis) to be "
                f"known. Received: input_shape={tuple(input_shape)}"
            )
        kernel_shape = (*self.kernel_size, channels, self.filters)
        self.pretrained_kernel, self.finetuned_kernel = self._add_pair(
            "kernel", kernel_shape, self.kernel_initializer, self.kernel_regularizer
        )
        if self.use_bias:
            self.pretrained_bias, self.finetuned_bias = self._add_pair(
                "bias", (self.filters,), self.bias_initializer, self.bias_regularizer
            )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def _add_pair(self, name, shape, initializer, regularizer):
        # One draw seeds both weights, so the branches start equal.
        value = initializer(shape, dtype=self.variable_dtype)
        copy = _stored_kernel if name == "kernel" else ops.copy
        pretrained = self.add_weight(
            name=f"pretrained_{name}",
            shape=shape,
            initializer=lambda shape, dtype=None: copy(value),
            trainable=False,
        )
        finetuned = self.add_weight(
            name=f"finetuned_{name}",
            shape=shape,
            initializer=lambda shape, dtype=None: copy(value),
            regularizer=regularizer,
            trainable=True,
        )
        return pretrained, finetuned

    def call(self, inputs, gate=None):
        # Two convolutions rather than one over the concatenated kernels: the frozen kernel then
        # needs no weight gradient, which the concatenated form computes for both halves
        # (measured: a ResNet50 step costs 1.7x plain fine-tuning this way, 2.3x the other).
        options = dict(
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )
        pretrained, finetuned = _convolve(
            inputs, (self.pretrained_kernel, self.finetuned_kernel), **options
        )
        if self.use_bias:
            pretrained = pretrained + self.pretrained_bias
            finetuned = finetuned + self.finetuned_bias
        if gate is None:
            # Two tensors, not one stacked on the channel axis: the stacked copy and its split
            # would cost memory and time (measured ~75 MB of a ResNet50 step on TF, batch 8).
            return self.activation(pretrained), self.activation(finetuned)
        check_gate(gate.shape, self.filters, self.name)
        return self.activation(mix_branches(pretrained, finetuned, gate))

    def compute_output_spec(self, inputs, gate=None):
        if gate is not None:
            check_gate(gate.shape, self.filters, self.name)
        spatial = []
        for size, kernel, stride, dilation in zip(
            inputs.shape[1:3], self.kernel_size, self.strides, self.dilation_rate, strict=True
        ):
            if size is None:
                spatial.append(None)
            elif self.padding == "same":
                spatial.append(-(-size // stride))
            else:
                spatial.append((size - (kernel - 1) * dilation - 1) // stride + 1)
        shape = (inputs.shape[0], *spatial, self.filters)
        if gate is not None:
            return keras.KerasTensor(shape, dtype=self.compute_dtype)
        return tuple(keras.KerasTensor(shape, dtype=self.compute_dtype) for _ in range(2))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "groups": 1,
                "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": None,
                "bias_constraint": None,
            }
        )
        return config


def _convolve(inputs, kernels, *, data_format, **options):
    """`ops.conv` of `inputs` with each of `kernels`, channels-last in and out."""
    if keras.backend.backend() != "torch":
        return [ops.conv(inputs, kernel, data_format=data_format, **options) for kernel in kernels]
    # Keras's PyTorch conv copies a channels-last input twice per call (made contiguous as NCHW,
    # then back to channels-last memory for oneDNN). A permuted view of the input already is
    # NCHW with channels-last memory; given a kernel laid out the same way, PyTorch convolves it
    # without copying it, once for both kernels, forward and backward.
    channels_first = ops.transpose(inputs, (0, 3, 1, 2))
    return [
        ops.transpose(
            ops.conv(
                channels_first,
                _channels_last_kernel(kernel),
                data_format="channels_first",
                **options,
            ),
            (0, 2, 3, 1),
        )
        for kernel in kernels
    ]


def _channels_last_kernel(kernel):
    # The same (height, width, in, out) kernel, stored out-major (as PyTorch's channels-last
    # weights). The flattening copies a kernel stored otherwise; the rest are views.
    height, width, channels, filters = kernel.shape
    tensor = getattr(kernel, "value", kernel)
    if tensor.stride() == (width * channels, channels, 1, height * width * channels):
        return tensor  # the variable's own layout (`_stored_kernel`): no view needed
    stored = ops.reshape(ops.transpose(kernel, (3, 0, 1, 2)), (-1,))
    return ops.transpose(ops.reshape(stored, (filters, height, width, channels)), (1, 2, 3, 0))


def _stored_kernel(value):
    """A fresh copy of `value` for a kernel variable; on PyTorch, stored out-channel-major.

    The variable keeps its `(height, width, in, out)` shape on every backend (weights files do
    not change), but on PyTorch its memory is the layout `_convolve` hands to the convolution,
    so neither the forward pass nor the weight gradient copies a kernel (measured in one
    process: a ResNet50 step at 64 px, 1.95x -> 1.69x fine-tuning's; docs/performance.md).
    Assignments, gradients (PyTorch lays them out as their parameter) and in-place optimizer
    updates keep the layout.
    """
    if keras.backend.backend() != "torch":
        return ops.copy(value)
    # `copy` keeps the strides: a fresh tensor even if `value` is stored this way already.
    return ops.copy(_channels_last_kernel(value))


class _Values(initializers.Initializer):
    """Returns given values: builds a layer straight from another layer's weights."""

    def __init__(self, values):
        self.values = values

    def __call__(self, shape, dtype=None):
        return ops.cast(self.values, dtype)
