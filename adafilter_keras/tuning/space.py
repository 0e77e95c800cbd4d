"""Search spaces: the default space of every method, and search-space files that override it.

A space maps `TrainConfig` field names to a specification:

    {"type": "float", "min": 0.001, "max": 0.1, "sampling": "log"}   # or "linear"
    {"type": "int", "min": 32, "max": 128, "step": 32}
    {"type": "choice", "values": ["frozen", "adapt"]}
    {"type": "fixed", "value": 0.0}

A search-space file is a JSON object of such entries; its entries replace the default ones of the
same field and add new fields, and `{"type": "fixed", ...}` pins a field.
"""

import copy
import dataclasses
import math

from adafilter_keras import validation
from adafilter_keras.layers.settings import PRETRAINED_BRANCH_MODES
from adafilter_keras.training.config import TrainConfig

KINDS = ("float", "int", "choice", "fixed")

# Fields a search must not change: they define the task, the budget or the bookkeeping.
NOT_SEARCHABLE = (
    "dataset",
    "method",
    "seed",
    "epochs",
    "run_dir",
    "data_dir",
    "shots_per_class",
    "rest_as_test",
    "validation_fraction",
    "distribution",
    "steps_per_epoch",
    "cache",
)

_COMMON = {
    "learning_rate": {"type": "float", "min": 1e-3, "max": 1e-1, "sampling": "log"},
    "momentum": {"type": "choice", "values": [0.0, 0.5, 0.9]},
    "head_lr_multiplier": {"type": "float", "min": 1.0, "max": 30.0, "sampling": "log"},
    "weight_decay": {"type": "float", "min": 1e-5, "max": 1e-3, "sampling": "log"},
}
_GATED = {
    "controller_lr_multiplier": {"type": "float", "min": 1.0, "max": 100.0, "sampling": "log"},
    "temperature": {"type": "float", "min": 0.3, "max": 3.0, "sampling": "log"},
    "controller_units": {"type": "choice", "values": [32, 64, 128]},
    "pretrained_bn": {"type": "choice", "values": list(PRETRAINED_BRANCH_MODES)},
}
DEFAULT_SPACES = {
    "finetune": _COMMON,
    "feature_extraction": {
        "learning_rate": _COMMON["learning_rate"],
        "momentum": _COMMON["momentum"],
        "weight_decay": _COMMON["weight_decay"],
    },
    "l2sp": {
        **{k: v for k, v in _COMMON.items() if k != "weight_decay"},
        "l2sp_alpha": {"type": "float", "min": 1e-4, "max": 1e-1, "sampling": "log"},
        "l2sp_beta": {"type": "float", "min": 1e-4, "max": 1e-1, "sampling": "log"},
    },
    "adafilter": {**_COMMON, **_GATED},
    "block": {**_COMMON, **_GATED},
    "stochastic": {
        **_COMMON,
        "pretrained_bn": _GATED["pretrained_bn"],
        "random_rate": {"type": "float", "min": 0.1, "max": 0.9, "sampling": "linear"},
    },
}


class SearchSpaceError(ValueError):
    """A search space (or search-space file) is malformed; the message says which entry and why."""


def default_space(method):
    """A copy of the default search space of `method`."""
    return copy.deepcopy(DEFAULT_SPACES[method])


def load_space(method, path=None):
    """The default space of `method`, with the entries of the JSON file at `path` applied.

    Raises:
        SearchSpaceError: The file is missing, not JSON, or holds an invalid entry.
    """
    space = default_space(method)
    if path is None:
        return space
    entries = validation.json_object_file(
        path,
        "Search-space file",
        error=SearchSpaceError,
        hint=" mapping TrainConfig fields to specifications such as "
        '{"type": "float", "min": 0.001, "max": 0.1}',
    )
    space.update(entries)
    return validate(space, source=f"search-space file {str(path)!r}")


def validate(space, source="search space"):
    """Checks every entry of `space`; returns it unchanged.

    Raises:
        SearchSpaceError: Naming the field and what is wrong with its entry.
    """
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    for name, spec in space.items():
        where = f"In the {source}, entry {name!r}"
        if name not in fields:
            raise SearchSpaceError(
                f"{where} is not a TrainConfig field. Searchable fields: "
                f"{', '.join(sorted(set(fields) - set(NOT_SEARCHABLE)))}"
            )
        if name in NOT_SEARCHABLE:
            raise SearchSpaceError(
                f"{where} cannot be searched: it defines the task, the budget or the output. "
                "Set it on the command line instead."
            )
        if not isinstance(spec, dict) or spec.get("type") not in KINDS:
            raise SearchSpaceError(
                f"{where} must be an object with a 'type' in {KINDS}. Received: {spec!r}"
            )
        _check_entry(where, spec)
    return space


def _check_entry(where, spec):
    kind = spec["type"]
    required = {
        "float": {"min", "max"},
        "int": {"min", "max"},
        "choice": {"values"},
        "fixed": {"value"},
    }[kind]
    allowed = required | {"type"} | ({"sampling", "step"} if kind in ("float", "int") else set())
    missing, extra = required - set(spec), set(spec) - allowed
    if missing or extra:
        raise SearchSpaceError(
            f"{where} of type {kind!r} needs keys {sorted(required)}"
            + (
                f" and may have {sorted(allowed - required - {'type'})}"
                if kind in ("float", "int")
                else ""
            )
            + f". Received: {spec!r}"
        )
    if kind in ("float", "int"):
        low, high = spec["min"], spec["max"]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not math.isfinite(low) or not math.isfinite(high) or low >= high:
            raise SearchSpaceError(f"{where} needs numbers min < max. Received: {spec!r}")
        sampling = spec.get("sampling", "linear")
        if sampling not in ("linear", "log", "reverse_log"):
            raise SearchSpaceError(
                f"{where} has an unknown sampling {sampling!r}; use 'linear', 'log' or "
                "'reverse_log'."
            )
        if sampling != "linear" and low <= 0:
            raise SearchSpaceError(f"{where} uses {sampling} sampling, so min must be > 0.")
        if kind == "int" and not all(isinstance(v, int) for v in (low, high)):
            raise SearchSpaceError(f"{where} of type 'int' needs int min and max.")
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise SearchSpaceError(f"{where} needs a non-empty list of values. Received: {spec!r}")
        if len({type(v) for v in values if v is not None} - {int, float}) > 1 or (
            any(isinstance(v, str) for v in values) and any(not isinstance(v, str) for v in values)
        ):
            raise SearchSpaceError(
                f"{where} mixes value types; use all numbers or all strings. Received: {values!r}"
            )


def check_against(base, space):
    """Checks that every extreme value of `space` gives a valid config on top of `base`.

    Args:
        base: The `TrainConfig` the search starts from.
        space: A validated space.

    Raises:
        SearchSpaceError: Naming the entry and the config rule its value breaks.
    """
    for name, spec in space.items():
        if spec["type"] in ("float", "int"):
            values = [spec["min"], spec["max"]]
        elif spec["type"] == "choice":
            values = spec["values"]
        else:
            values = [spec["value"]]
        for value in values:
            try:
                dataclasses.replace(base, **{name: value})
            except ValueError as error:
                raise SearchSpaceError(
                    f"Search-space entry {name!r} allows {value!r}, which the training config "
                    f"refuses: {error}"
                ) from None
