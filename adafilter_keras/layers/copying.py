"""Copying weight values without sharing buffers."""

from keras import ops


def assign_copy(variable, value):
    """Assigns a fresh copy of `value` to `variable`.

    On JAX, `assign` may keep the very array it is given; two variables holding one buffer make a
    jitted train step fail ("Attempt to donate the same buffer twice"), and donating a buffer that
    another model's variable still holds would delete that model's weight. Copying avoids both.
    """
    variable.assign(ops.copy(ops.convert_to_tensor(value)))
