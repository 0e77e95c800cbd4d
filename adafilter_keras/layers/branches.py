"""How AdaFilterConv2D and GatedBatchNorm mix their two branches with a gate.

The mixes subtract where they could add, for the same values bit for bit (negation is exact, and
so is swapping the terms of a sum).
On TensorFlow, Grappler's arithmetic optimizer merges a tree of additions of same-shape tensors
into one sum: here the mix's two full-size terms and the residual connection that often follows
the layer. Its memory optimizer then accumulates each sum of more than two tensors into a
temporary initialised from zeros of the full shape, and constant folding makes those zeros
constants that the model holds between steps (ResNet50, 224 px, batch 8: about 130 MB;
docs/performance.md). A subtraction ends the tree. Not on PyTorch, which has no such optimizer
and differentiates a subtraction with a full-size negation (measured: the small model's gated step
about 1.5% slower with it).
"""

import keras
from keras import ops

from adafilter_keras.layers.casting import cast

_SUBTRACT = keras.backend.backend() != "torch"


def mix_branches(pretrained, finetuned, gate):
    """Per example and per channel, picks the fine-tuned branch where `gate` is 1.

    Args:
        pretrained: Tensor `(batch, ..., filters)`.
        finetuned: Tensor of the same shape.
        gate: Tensor `(batch, filters)` (or `(batch, 1)` for one gate shared by all filters),
            broadcast over the spatial axes.

    Returns:
        `gate * finetuned + (1 - gate) * pretrained`, computed as
        `pretrained + gate * (finetuned - pretrained)`: the backward pass then keeps one tensor,
        the difference, instead of both branches (measured: about 300 MB less for a ResNet50
        training step at batch 8, 224x224). A 0 gate returns `pretrained` bit for bit, a 1 gate
        `finetuned` up to one rounding. Written with a subtraction (see above).
    """
    gate = broadcastable(cast(gate, pretrained.dtype), pretrained)
    if not _SUBTRACT:
        return pretrained + gate * (finetuned - pretrained)
    return pretrained - gate * (pretrained - finetuned)


def mix_normalized(pretrained, finetuned, pretrained_affine, finetuned_affine, gate):
    """`mix_branches` of the two branches, each first normalized by its own affine map.

    Args:
        pretrained: Tensor `(batch, ..., filters)`, the pre-trained branch before normalization.
        finetuned: Tensor of the same shape, the fine-tuned branch.
        pretrained_affine: `(scale, offset)`, tensors `(filters,)`: the normalized pre-trained
            branch is `pretrained * scale + offset`.
        finetuned_affine: The same for the fine-tuned branch.
        gate: Tensor `(batch, filters)` or `(batch, 1)`.

    Returns:
        `gate * (finetuned * s_f + o_f) + (1 - gate) * (pretrained * s_p + o_p)`, computed as
        `pretrained * ((1 - gate) s_p) + finetuned * (gate s_f) + (o_p + gate (o_f - o_p))`:
        the per-example coefficients are small `(batch, filters)` tensors, so the full-size work
        is four operations instead of nine (two normalizations, then the mix), and the backward
        pass keeps the two branches, which the batch moments keep anyway. Measured: a ResNet50
        step on PyTorch (docs/performance.md). Written with a subtraction (see above).
    """
    (pretrained_scale, pretrained_offset), (finetuned_scale, finetuned_offset) = (
        pretrained_affine,
        finetuned_affine,
    )
    gate = cast(gate, pretrained.dtype)
    # Subtracting, the pre-trained coefficient is negated: `gate - 1` rather than `1 - gate`.
    pretrained_weight = gate - 1.0 if _SUBTRACT else 1.0 - gate
    coefficients = (
        pretrained_weight * pretrained_scale,
        gate * finetuned_scale,
        pretrained_offset + gate * (finetuned_offset - pretrained_offset),
    )
    pretrained_coefficient, finetuned_coefficient, offset = (
        broadcastable(c, pretrained) for c in coefficients
    )
    if _SUBTRACT:
        return finetuned * finetuned_coefficient - pretrained * pretrained_coefficient + offset
    return pretrained * pretrained_coefficient + finetuned * finetuned_coefficient + offset


def broadcastable(values, branch):
    """`values`, shape `(batch, channels)`, reshaped to broadcast over `branch`'s spatial axes.

    One reshape: each `expand_dims` is an operation of its own on an eager backend.
    """
    spatial = len(branch.shape) - 2
    if spatial == 0:
        return values
    return ops.reshape(values, (-1, *([1] * spatial), values.shape[-1]))


def check_gate(gate_shape, filters, layer_name):
    """Raises `ValueError` unless `gate_shape` is `(batch, filters)` or `(batch, 1)`."""
    shape = tuple(gate_shape)
    if len(shape) != 2 or (shape[-1] is not None and shape[-1] not in (filters, 1)):
        raise ValueError(
            f"Layer '{layer_name}' expects a gate of shape (batch, {filters}), one value per "
            "filter (or (batch, 1), one value for all filters). "
            f"Received: gate.shape={shape}"
        )
