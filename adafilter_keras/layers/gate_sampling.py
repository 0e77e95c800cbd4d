"""Discrete gates from logits: straight-through binary Gumbel in training; inference rules."""

from keras import ops, random

from adafilter_keras.layers.casting import cast

_EPSILON = 1e-6

INFERENCE_RULES = ("expected", "threshold")


def gate_probability(logits):
    """The probability that a training gate is 1: `sigmoid(logits)` (logistic noise, see below)."""
    return ops.sigmoid(cast(logits, "float32"))


def sample_gates(logits, *, temperature, seed, training, inference="expected"):
    """Turns gate logits into gates.

    In training, logistic noise (the difference of two Gumbels) is added to the logits; the forward
    value is the hard decision `1[logits + noise > 0]`, which is 1 with probability
    `sigmoid(logits)`, and the gradient is that of the relaxed gate
    `sigmoid((logits + noise) / temperature)` (straight-through estimator).

    At inference the gate follows `inference`:

    * `"expected"`: `sigmoid(logits)`, the mean of the training gate. The network then computes
      the expected mix it was trained on; a filter the controller is sure about (logit far from
      0) still gets a gate of (almost exactly) 0 or 1.
    * `"threshold"`: `1[logits > 0]`, the most likely training gate. Training never sees this
      noiseless rule, so a filter with logits near 0 (trained as a coin flip) is pinned to one
      branch; measured to lose accuracy (research/inference_rule).

    Args:
        logits: Float tensor `(batch, filters)`.
        temperature: Positive float; lower values sharpen the relaxed gate's gradient.
        seed: A `keras.random.SeedGenerator` (required under JAX jit).
        training: Python bool or None (None means inference).
        inference: `"expected"` or `"threshold"`, see above.

    Returns:
        A float32 tensor of the logits' shape. In training its forward values are exactly 0.0 or
        1.0; at inference they are in [0, 1] (`"expected"`) or exactly 0.0 or 1.0.
    """
    logits = cast(logits, "float32")
    if not training:
        if inference == "threshold":
            return ops.cast(logits > 0, "float32")
        return gate_probability(logits)
    uniform = random.uniform(
        ops.shape(logits), minval=_EPSILON, maxval=1.0 - _EPSILON, dtype="float32", seed=seed
    )
    noisy = logits + ops.log(uniform) - ops.log1p(-uniform)
    soft = ops.sigmoid(noisy if temperature == 1.0 else noisy / temperature)
    hard = ops.cast(noisy > 0, "float32")
    # `soft - stop_gradient(soft)` is exactly 0.0 forward: the forward value is `hard` bit for bit.
    return hard + (soft - ops.stop_gradient(soft))


def scale_gradient(x, scale):
    """Returns `x` unchanged in the forward pass, with its gradient multiplied by `scale`."""
    if scale == 1.0:
        return x
    frozen = ops.stop_gradient(x)
    return frozen + scale * (x - frozen)


# Below this mean square the gradient is taken as exactly zero (the branches are still equal).
_TINY = 1e-30


def normalize_gradient(logits, scale):
    """Returns `logits` unchanged forward, with a gradient of a fixed size backward.

    The gradient reaching `logits`, shape `(batch, filters)`, is divided by the root mean square
    over filters of its sum over the batch (what a per-filter bias of the logits receives) and
    multiplied by `scale`: the logits' bias then receives a gradient of RMS exactly `scale`
    whatever the size of the loss gradient, which shrinks with the number of filters and with
    how far the fine-tuned filters have moved. The direction, and the relative size of the
    examples' and filters' contributions, are kept. A gradient that is exactly zero stays zero.

    Args:
        logits: Float tensor `(batch, filters)`.
        scale: Positive float, the RMS of the bias gradient after normalization.

    Returns:
        A tensor equal to `logits`.
    """

    @ops.custom_gradient
    def identity(x):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            gradient = ops.cast(upstream, "float32")
            summed = ops.sum(gradient, axis=0)
            factor = scale * ops.rsqrt(ops.mean(summed * summed) + _TINY)
            # Zero stays zero: rsqrt(_TINY) times a zero gradient is zero.
            return ops.cast(gradient * factor, upstream.dtype)

        return x, grad

    return identity(ops.convert_to_tensor(logits))
