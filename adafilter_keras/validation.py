"""Argument checks shared by the public API.

Every check raises a `ValueError` whose message states the rule and echoes the value, in the Keras
style: "... Received: filters=0".
"""

import json
import numbers
import pathlib


def positive_int(name, value):
    """Returns `value` as an `int` if it is a positive integer, else raises `ValueError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def positive_float(name, value):
    """Returns `value` as a `float` if it is a finite number > 0, else raises `ValueError`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 < value < float("inf")
    ):
        raise ValueError(f"`{name}` must be a finite number > 0. Received: {name}={value!r}")
    return float(value)


def non_negative_int(name, value):
    """Returns `value` as an `int` if it is an integer >= 0, else raises `ValueError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0. Received: {name}={value!r}")
    return int(value)


def boolean(name, value):
    """Returns `value` if it is `True` or `False`, else raises `ValueError`."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return value


def rate(name, value):
    """Returns `value` as a `float` if it is a number in (0, 1), else raises `ValueError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"`{name}` must be in (0, 1). Received: {name}={value!r}")
    return float(value)


def rates(name, value):
    """Returns `value` as a float in (0, 1), or a list of them (one per gated layer)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(
                f"`{name}` must be a rate in (0, 1) or a non-empty list of them. "
                f"Received: {name}={value!r}"
            )
        return [rate(f"{name}[{i}]", item) for i, item in enumerate(value)]
    return rate(name, value)


def int_pair(name, value):
    """Returns `value` as a pair of positive ints; a single int is used for both dimensions."""
    pair = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(
        isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0 for v in pair
    ):
        raise ValueError(
            f"`{name}` must be a positive integer or a pair of positive integers. "
            f"Received: {name}={value!r}"
        )
    return tuple(int(v) for v in pair)


def one_of(name, value, choices):
    """Returns `value` if it is one of `choices`, else raises `ValueError` listing them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {listed}. Received: {name}={value!r}")
    return value


def json_object_file(path, what, error=ValueError, hint=""):
    """Reads a file holding one JSON object; returns it as a dict.

    Args:
        path: The file.
        what: How messages name the file, e.g. "Config file".
        error: The `ValueError` subclass to raise.
        hint: Appended to the message when the JSON is not an object.

    Raises:
        error: The file is missing, is not JSON, or holds something other than an object.
    """
    path = pathlib.Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist.") from None
    except json.JSONDecodeError as decode_error:
        raise error(f"{what} {str(path)!r} is not valid JSON: {decode_error}") from None
    if not isinstance(values, dict):
        raise error(f"{what} {str(path)!r} must hold a JSON object{hint}.")
    return values
