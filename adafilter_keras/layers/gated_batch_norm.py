"""GatedBatchNorm: one batch normalization per branch of an AdaFilterConv2D, mixed by the gate."""

import math

import keras
from keras import initializers, ops, regularizers

from adafilter_keras import validation
from adafilter_keras.layers import settings as gate_settings
from adafilter_keras.layers.branches import check_gate, mix_normalized
from adafilter_keras.layers.casting import cast, normalization_dtype
from adafilter_keras.layers.copying import assign_copy
from adafilter_keras.layers.mixed_batch_norm import mix_batch_normalized, normalization_affine

PRETRAINED_BRANCH_MODES = gate_settings.PRETRAINED_BRANCH_MODES

# Whether training computes the gradient of both branches' batch normalization in closed form
# (`mixed_batch_norm`) rather than by differentiating it op by op; read at each call. Not on
# PyTorch: there the closed form runs op by op from Python while autograd's backward runs in
# C++ (measured: the small model's gated step 4.6% slower; on JAX 2.3% faster), and TensorFlow's
# Grappler, which the closed form is for, is not involved.
WRITE_OUT_GRADIENT = keras.backend.backend() != "torch"

# Weight names, in creation order, of each branch's normalization.
_STATISTICS = ("moving_mean", "moving_variance")


@keras.saving.register_keras_serializable(package="adafilter_keras")
class GatedBatchNorm(keras.layers.Layer):
    """Two batch normalizations, one per branch, mixed per example and per filter by a gate.

    Called as `layer([pretrained, finetuned, gate], training=...)`, where `pretrained` and
    `finetuned` are the two outputs of an `AdaFilterConv2D` called without a gate, each of shape
    `(batch, ..., filters)`, and `gate` has shape `(batch, filters)`. Returns

        gate * BN_finetuned(finetuned) + (1 - gate) * BN_pretrained(pretrained)

    of shape `(batch, ..., filters)`.

    The fine-tuned branch's normalization behaves like `keras.layers.BatchNormalization`: trainable
    gamma and beta, batch statistics in training and moving statistics updated from them. The
    pre-trained branch's depends on `pretrained_branch`:

    * `"adapt"` (default, as in `wrap()`; `GateSettings.pretrained_bn`): it trains and updates
      its statistics like the fine-tuned branch.
    * `"frozen"`: gamma and beta are not trainable and the stored moving statistics are used in
      training and inference alike, never updated (an ablation).

    As with `BatchNormalization`, a layer with `trainable=False` runs both branches in inference
    mode.

    Args:
        momentum: Momentum of the moving statistics.
        epsilon: Small float added to the variance.
        center: Whether the branches have a beta offset.
        scale: Whether the branches have a gamma scale.
        beta_initializer: Initializer for both branches' beta.
        gamma_initializer: Initializer for both branches' gamma.
        moving_mean_initializer: Initializer for both branches' moving mean.
        moving_variance_initializer: Initializer for both branches' moving variance.
        beta_regularizer: Regularizer for the trainable betas.
        gamma_regularizer: Regularizer for the trainable gammas.
        pretrained_branch: `"frozen"` or `"adapt"`, see above.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(
        self,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        pretrained_branch=gate_settings.DEFAULTS.pretrained_bn,
        **kwargs,
    ):
        super().__init__(**kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1]. Received: momentum={momentum!r}")
        self.momentum = momentum
        self.epsilon = validation.positive_float("epsilon", epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.pretrained_branch = gate_settings.check(
            "pretrained_bn", pretrained_branch, name="pretrained_branch"
        )
        self.supports_masking = False

    @classmethod
    def from_batch_normalization(cls, bn, **kwargs):
        """Creates a built `GatedBatchNorm` whose both branches are copies of `bn`.

        Args:
            bn: A built `keras.layers.BatchNormalization` normalizing the last axis.
            **kwargs: Overrides for the constructor arguments (for example `pretrained_branch`);
                by default the new layer takes `bn`'s name and dtype policy.

        Returns:
            The new layer, built, with gamma, beta and moving statistics of both branches equal to
            `bn`'s.
        """
        if not isinstance(bn, keras.layers.BatchNormalization):
            raise TypeError(
                "GatedBatchNorm.from_batch_normalization expects a "
                f"keras.layers.BatchNormalization. Received: bn={bn!r} of type {type(bn).__name__}"
            )
        if not bn.built:
            raise ValueError(
                f"BatchNormalization layer '{bn.name}' is not built, so it has no statistics to "
                "copy. Call it on an input (or use it in a model) first."
            )
        rank = getattr(bn.input_spec, "ndim", None)
        if bn.axis != -1 and bn.axis != (rank or 0) - 1:
            raise ValueError(
                f"GatedBatchNorm normalizes the last (channel) axis only; BatchNormalization "
                f"layer '{bn.name}' normalizes axis {bn.axis}. Received: axis={bn.axis}"
            )
        unsupported = {
            "renorm": bn.renorm,
            "beta_constraint": bn.beta_constraint,
            "gamma_constraint": bn.gamma_constraint,
        }
        for name, value in unsupported.items():
            if value:
                raise ValueError(
                    f"GatedBatchNorm does not support `{name}`, which BatchNormalization layer "
                    f"'{bn.name}' uses. Received: {name}={value!r}"
                )
        config = bn.get_config()
        arguments = {
            key: config[key]
            for key in (
                "momentum",
                "epsilon",
                "center",
                "scale",
                "beta_initializer",
                "gamma_initializer",
                "moving_mean_initializer",
                "moving_variance_initializer",
                "beta_regularizer",
                "gamma_regularizer",
            )
        }
        arguments.update(name=bn.name, dtype=bn.dtype_policy)
        arguments.update(kwargs)
        layer = cls(**arguments)
        channels = bn.moving_mean.shape[0]
        layer.build([(None, channels), (None, channels), (None, channels)])
        for branch in ("pretrained", "finetuned"):
            for name in ("gamma", "beta", *_STATISTICS):
                source = getattr(bn, name, None)
                if source is not None:
                    assign_copy(getattr(layer, f"{branch}_{name}"), source)
        return layer

    def build(self, input_shape):
        pretrained_shape, finetuned_shape, gate_shape = self._unpack(input_shape)
        channels = pretrained_shape[-1]
        if channels is None or tuple(pretrained_shape[1:]) != tuple(finetuned_shape[1:]):
            raise ValueError(
                f"Layer '{self.name}' expects the two branches of an AdaFilterConv2D: two tensors "
                "of the same shape with a known number of channels (the last axis). "
                f"Received: shapes {tuple(pretrained_shape)} and {tuple(finetuned_shape)}"
            )
        self.filters = channels
        check_gate(gate_shape, self.filters, self.name)
        adapt = self.pretrained_branch == "adapt"
        for branch, trainable in (("pretrained", adapt), ("finetuned", True)):
            self._add_branch(branch, trainable)
        branch_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: channels})
        self.input_spec = [branch_spec, branch_spec, keras.layers.InputSpec(ndim=2)]

    def _add_branch(self, branch, trainable):
        shape = (self.filters,)
        if self.scale:
            gamma = self.add_weight(
                name=f"{branch}_gamma",
                shape=shape,
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer if trainable else None,
                trainable=trainable,
            )
            setattr(self, f"{branch}_gamma", gamma)
        if self.center:
            beta = self.add_weight(
                name=f"{branch}_beta",
                shape=shape,
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer if trainable else None,
                trainable=trainable,
            )
            setattr(self, f"{branch}_beta", beta)
        for name, initializer in zip(
            _STATISTICS,
            (self.moving_mean_initializer, self.moving_variance_initializer),
            strict=True,
        ):
            statistic = self.add_weight(
                name=f"{branch}_{name}",
                shape=shape,
                initializer=initializer,
                trainable=False,
                autocast=False,
            )
            setattr(self, f"{branch}_{name}", statistic)

    def _unpack(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 3:
            raise ValueError(
                f"Layer '{self.name}' must be called on a list [pretrained, finetuned, gate]: "
                "the two outputs of an AdaFilterConv2D called without a gate, and the gate of "
                f"shape (batch, filters). Received: inputs={inputs!r}"
            )
        return inputs

    def call(self, inputs, training=None):
        *branches, gate = self._unpack(inputs)
        check_gate(gate.shape, self.filters, self.name)
        # Normalize in float32 at least: BN overflows easily in float16/bfloat16.
        branches = [cast(values, normalization_dtype(values.dtype)) for values in branches]
        gate = cast(gate, branches[0].dtype)
        dtype = keras.backend.standardize_dtype(branches[0].dtype)
        names = ("pretrained", "finetuned")
        parameters = [
            tuple(
                None if weight is None else cast(weight, dtype)
                for weight in (getattr(self, f"{branch}_gamma", None),
                               getattr(self, f"{branch}_beta", None))
            )
            for branch in names
        ]  # fmt: skip
        batch_statistics = training and self.trainable
        adapt = self.pretrained_branch == "adapt"
        if batch_statistics and adapt and WRITE_OUT_GRADIENT:
            # Both branches on batch statistics: the gradient written out (mixed_batch_norm).
            moments = [batch_moments(values) for values in branches]
            for branch, (mean, variance) in zip(names, moments, strict=True):
                self._update_statistics(branch, mean, variance)
            mixed = mix_batch_normalized(*branches, gate, moments, parameters, self.epsilon)
            return cast(mixed, self.compute_dtype)
        # Each branch's normalization as a per-channel affine map, mixed with the branches in one
        # pass (`mix_normalized`). Each has its own statistics: the frozen branch then needs no
        # batch moments at all.
        affines = []
        for branch, values, (gamma, beta) in zip(names, branches, parameters, strict=True):
            mean = cast(getattr(self, f"{branch}_moving_mean"), dtype)
            variance = cast(getattr(self, f"{branch}_moving_variance"), dtype)
            if batch_statistics and (branch == "finetuned" or adapt):
                mean, variance = batch_moments(values)
                self._update_statistics(branch, mean, variance)
            affines.append(normalization_affine(mean, variance, self.epsilon, gamma, beta))
        return cast(mix_normalized(*branches, *affines, gate), self.compute_dtype)

    def _update_statistics(self, branch, batch_mean, batch_variance):
        for name, batch_value in zip(_STATISTICS, (batch_mean, batch_variance), strict=True):
            statistic = getattr(self, f"{branch}_{name}")
            statistic.assign(
                statistic * self.momentum + cast(batch_value, statistic.dtype) * (1 - self.momentum)
            )

    def compute_output_shape(self, input_shape):
        pretrained_shape, _, _ = self._unpack(input_shape)
        return tuple(pretrained_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
                "moving_variance_initializer": initializers.serialize(
                    self.moving_variance_initializer
                ),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
                "pretrained_branch": self.pretrained_branch,
            }
        )
        return config


def batch_moments(values):
    """Per-channel mean and (biased) variance of `values` over every axis but the last.

    `ops.moments`, except on PyTorch: there Keras computes the variance as `mean(square(x)) -
    square(mean)` already; written with sums, `sum(x * x) / n - mean * mean`, the forward values
    are the same bit for bit, and the backward pass is about half as long (the mean's gradient
    is divided by `n` before it is broadcast, not after; a product's gradient instead of a
    power's). Measured: the gated step of the small model, docs/performance.md.
    """
    axes = tuple(range(len(values.shape) - 1))
    if keras.backend.backend() != "torch":
        return ops.moments(values, axes=list(axes))
    count = math.prod(values.shape[:-1])
    mean = ops.sum(values, axis=axes) / count
    return mean, ops.sum(values * values, axis=axes) / count - mean * mean
