"""Casting that costs nothing when the dtype is already right."""

import keras
from keras import ops


def cast(x, dtype):
    """`ops.cast(x, dtype)`, or `x` itself when it is a backend tensor or variable of `dtype`.

    The values are the same either way; an eager backend (PyTorch) then dispatches no operation
    for the many casts of a gated layer that are no-ops in float32.
    """
    is_backend_value = ops.is_tensor(x) or isinstance(x, keras.Variable)
    if is_backend_value and keras.backend.standardize_dtype(x.dtype) == dtype:
        return x
    return ops.cast(x, dtype)  # also turns NumPy arrays into backend tensors


def normalization_dtype(dtype):
    """The dtype batch normalization computes in for inputs of `dtype`: float32 at least.

    Batch normalization overflows easily in float16 and bfloat16.
    """
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in ("float16", "bfloat16") else dtype
