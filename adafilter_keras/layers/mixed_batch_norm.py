"""Two batch normalizations in training and their gated mix, with the gradient written out.

Differentiated op by op, each branch of `GatedBatchNorm` reaches three operations in training
(its mean, its variance and the mix), so its gradient is a sum of three full-size tensors. On
TensorFlow, Grappler's memory optimizer rewrites such sums into accumulations into a temporary
variable initialised from zeros of the branch's shape, which constant folding turns into
constants the model then holds between steps (docs/performance.md). Written out, each branch's
gradient is one full-size expression, `dy * a + x * b + c`, and the backward pass needs the two
branches and per-channel statistics only, as before.
"""

import math

import keras
from keras import ops

from adafilter_keras.layers.branches import broadcastable, mix_normalized


def normalization_affine(mean, variance, epsilon, gamma=None, beta=None):
    """Per-channel `(scale, offset)` of a batch normalization: it maps `x` to `x * scale + offset`.

    Args:
        mean: Tensor `(channels,)`, the statistics' mean.
        variance: Tensor `(channels,)`, their variance.
        epsilon: Small float added to the variance.
        gamma: Tensor `(channels,)` or None (no scale).
        beta: Tensor `(channels,)` or None (no offset).
    """
    scale = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        scale = scale * gamma
    offset = -mean * scale
    if beta is not None:
        offset = offset + beta
    return scale, offset


def mix_batch_normalized(pretrained, finetuned, gate, moments, parameters, epsilon):
    """`mix_normalized` of two branches each normalized with its own batch statistics.

    The forward values are `mix_normalized`'s, bit for bit; the gradient is the exact gradient
    of batch normalization (through the batch mean and variance) and of the mix, computed in
    closed form.

    Args:
        pretrained: Tensor `(batch, ..., channels)`, the pre-trained branch before normalization.
        finetuned: Tensor of the same shape and dtype, the fine-tuned branch.
        gate: Tensor `(batch, channels)` or `(batch, 1)`, of the branches' dtype.
        moments: `((mean, variance), (mean, variance))` of the pre-trained and the fine-tuned
            branch, computed from them (their gradient is part of this function's).
        parameters: `((gamma, beta), (gamma, beta))` of the two branches, each tensor `(channels,)`
            or None.
        epsilon: Small float added to the variances.

    Returns:
        The mixed, normalized branches, of `pretrained`'s shape.
    """
    present = [value is not None for pair in parameters for value in pair]
    statistics = [ops.stop_gradient(value) for pair in moments for value in pair]
    inputs = [pretrained, finetuned, gate, *statistics]
    inputs += [value for pair in parameters for value in pair if value is not None]
    # Values, not variables (TensorFlow's custom gradients would want to know of the variables,
    # and its `convert_to_tensor` returns a variable as it is).
    inputs = [ops.copy(value) if isinstance(value, keras.Variable) else value for value in inputs]

    @ops.custom_gradient
    def forward(*tensors):
        pretrained, finetuned, gate, *rest = tensors
        statistics, given = rest[:4], iter(rest[4:])
        gamma_beta = [next(given) if known else None for known in present]
        branches = (pretrained, finetuned)
        affines = [
            normalization_affine(statistics[2 * i], statistics[2 * i + 1], epsilon,
                                 *gamma_beta[2 * i:2 * i + 2])
            for i in range(2)
        ]  # fmt: skip
        output = mix_normalized(*branches, *affines, gate)

        def gradient(*args, upstream=None):
            if upstream is None:  # TensorFlow and JAX pass it positionally
                (upstream,) = args
            return _gradient(upstream, branches, gate, statistics, affines, epsilon, present)

        return output, gradient

    return forward(*inputs)


def _gradient(upstream, branches, gate, statistics, affines, epsilon, present):
    """The gradients of `mix_batch_normalized`'s inputs, in their order, given `upstream`."""
    spatial = tuple(range(1, len(upstream.shape) - 1))
    count = _count(upstream)
    upstream_sum = ops.sum(upstream, axis=spatial)  # (batch, channels)
    weights = (1.0 - gate, gate)  # of each branch in the mix
    gradients, parameter_gradients, branch_sums = [], [], []
    for index, values in enumerate(branches):
        mean, variance = statistics[2 * index], statistics[2 * index + 1]
        scale, _ = affines[index]
        weight = weights[index]
        inverse = ops.rsqrt(variance + epsilon)
        values_sum = ops.sum(upstream * values, axis=spatial)  # sum of dy * x per example
        branch_sums.append(values_sum)
        # Sums over the batch of the normalized branch's gradient, dy * weight, and of its
        # product with the normalized branch: beta's and gamma's gradients.
        beta_gradient = ops.sum(weight * upstream_sum, axis=0)
        gamma_gradient = inverse * (ops.sum(weight * values_sum, axis=0) - mean * beta_gradient)
        values_coefficient = -scale * inverse * gamma_gradient / count
        constant = scale * (inverse * gamma_gradient * mean - beta_gradient) / count
        gradients.append(
            upstream * broadcastable(weight * scale, upstream)
            + (values * values_coefficient + constant)
        )
        parameter_gradients += [gamma_gradient, beta_gradient]
    (pretrained_scale, pretrained_offset), (finetuned_scale, finetuned_offset) = affines
    gate_gradient = (
        finetuned_scale * branch_sums[1]
        - pretrained_scale * branch_sums[0]
        + (finetuned_offset - pretrained_offset) * upstream_sum
    )
    if gate.shape[-1] == 1:  # one gate shared by all filters
        gate_gradient = ops.sum(gate_gradient, axis=-1, keepdims=True)
    statistics_gradients = [ops.zeros_like(value) for value in statistics]
    kept = [g for g, known in zip(parameter_gradients, present, strict=True) if known]
    return (*gradients, gate_gradient, *statistics_gradients, *kept)


def _count(values):
    """The number of values per channel, as a float (a tensor where the shape is not known)."""
    if all(size is not None for size in values.shape):
        return float(math.prod(values.shape[:-1]))
    return ops.cast(ops.size(values), values.dtype) / values.shape[-1]
