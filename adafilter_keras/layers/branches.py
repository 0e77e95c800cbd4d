"""The two-branch tensor layout shared by AdaFilterConv2D and GatedBatchNorm.

A "stacked" tensor holds both branches on the channel (last) axis: channels `[:filters]` are the
pre-trained branch, channels `[filters:]` the fine-tuned branch.
"""

from keras import ops


def split_branches(stacked):
    """Splits a stacked tensor into `(pretrained, finetuned)` halves along the last axis."""
    pretrained, finetuned = ops.split(stacked, 2, axis=-1)
    return pretrained, finetuned


def mix_branches(pretrained, finetuned, gate):
    """Per example and per channel, picks the fine-tuned branch where `gate` is 1.

    Args:
        pretrained: Tensor `(batch, ..., filters)`.
        finetuned: Tensor of the same shape.
        gate: Tensor `(batch, filters)` (or `(batch, 1)` for one gate shared by all filters),
            broadcast over the spatial axes.

    Returns:
        `gate * finetuned + (1 - gate) * pretrained`. Written this way (not as
        `pretrained + gate * (finetuned - pretrained)`) so that a 0/1 gate returns a branch bit
        for bit.
    """
    gate = ops.cast(gate, pretrained.dtype)
    for _ in range(len(pretrained.shape) - 2):
        gate = ops.expand_dims(gate, axis=1)
    return gate * finetuned + (1.0 - gate) * pretrained


def check_gate(gate_shape, filters, layer_name):
    """Raises `ValueError` unless `gate_shape` is `(batch, filters)` or `(batch, 1)`."""
    shape = tuple(gate_shape)
    if len(shape) != 2 or (shape[-1] is not None and shape[-1] not in (filters, 1)):
        raise ValueError(
            f"Layer '{layer_name}' expects a gate of shape (batch, {filters}), one value per "
            "filter (or (batch, 1), one value for all filters). "
            f"Received: gate.shape={shape}"
        )
