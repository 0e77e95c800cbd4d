"""Discrete gates from logits: straight-through binary Gumbel in training, threshold otherwise."""

from keras import ops, random

_EPSILON = 1e-6


def sample_gates(logits, *, temperature, seed, training):
    """Turns gate logits into 0/1 gates.

    In training, logistic noise (the difference of two Gumbels) is added to the logits; the forward
    value is the hard decision `1[logits + noise > 0]` and the gradient is that of the relaxed gate
    `sigmoid((logits + noise) / temperature)` (straight-through estimator). At inference the gate is
    the deterministic `1[logits > 0]`.

    Args:
        logits: Float tensor `(batch, filters)`.
        temperature: Positive float; lower values sharpen the relaxed gate's gradient.
        seed: A `keras.random.SeedGenerator` (required under JAX jit).
        training: Python bool or None (None means inference).

    Returns:
        A float32 tensor of the logits' shape whose forward values are exactly 0.0 or 1.0.
    """
    logits = ops.cast(logits, "float32")
    if not training:
        return ops.cast(logits > 0, "float32")
    uniform = random.uniform(
        ops.shape(logits), minval=_EPSILON, maxval=1.0 - _EPSILON, dtype="float32", seed=seed
    )
    noisy = logits + ops.log(uniform) - ops.log1p(-uniform)
    soft = ops.sigmoid(noisy / temperature)
    hard = ops.cast(noisy > 0, "float32")
    # `soft - stop_gradient(soft)` is exactly 0.0 forward: the forward value is `hard` bit for bit.
    return hard + (soft - ops.stop_gradient(soft))
