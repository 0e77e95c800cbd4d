"""GateSettings: every gate option of AdaFilter, its one name, its default and its check.

`wrap()`, the layers (`GateController`, `GatedBatchNorm`), the training configuration, the
transfer benchmark and the tuner all read their defaults and run their checks here, so that a
model assembled by hand from the layers gets the same gates as `wrap(model)`.
"""

import dataclasses
import functools

from adafilter_keras import validation
from adafilter_keras.layers.gate_sampling import INFERENCE_RULES

POLICIES = ("learned", "random")
PRETRAINED_BRANCH_MODES = ("frozen", "adapt")
GRANULARITIES = ("filter", "block")


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """The gate settings of an AdaFilter model, checked when created.

    The defaults were chosen on validation accuracy across the transfer benchmark's tasks and
    seeds (research/controller_defaults), and `initial_rate=0.8` on its selection suite of four
    backbones of other widths and kinds (research/default_selection: 5 of 48 seeds more than 3
    points below fine-tuning, against 11 with 0.5). Some values are kept only as ablations, each
    with the measurement that set it aside:

    * `pretrained_bn="frozen"`: 78.5 % against 93.2 % for `"adapt"` on a shifted target at 10
      shots (research/controller_defaults); it does not close the gap to fine-tuning on the
      domain-shift cell either (research/losing_cell).
    * `inference="threshold"`: threshold minus expected -0.23 ± 0.54 points on validation,
      -0.30 ± 0.49 on test (few-shot, 3 tasks x 5 seeds, `own` optimizer;
      research/inference_rule).
    * `gate_warmup_steps > 0`: a 150-step warm-up ties with the defaults on validation
      (+0.5 ± 3.1 points, `own` optimizer) and stays behind fine-tuning
      (research/losing_cell).
    * `normalize_controller_inputs=False`: the gates then learn a per-filter rate that does not
      depend on the input (group gap 0.004-0.029 against 0.16-0.30 normalized;
      research/input_dependent_gates). On one backbone the benchmark never ran it was ahead of
      the 0.1 defaults (research/unseen_backbone); on the selection suite it had more bad seeds
      (10 of 48; research/default_selection).
    * `normalize_controller_gradient=True`: makes the controller's step independent of the
      backbone's width, but ranked below `initial_rate=0.8` on the selection suite (8 of 48
      bad seeds at RMS 0.3 or 0.03; research/default_selection).

    Create one with keywords (`GateSettings(gradient_scale=100)`) or from a mapping with
    `GateSettings.from_mapping`; change one with `dataclasses.replace` or `replace`. Every value
    is checked and held in its canonical type (`gradient_scale=300` is held as `300.0`).

    Attributes:
        controller_units: Width of the controller's projections and LSTM cell (int > 0).
        temperature: Temperature of the straight-through Gumbel gates (> 0).
        pretrained_bn: `"adapt"` (the pre-trained branch of every `GatedBatchNorm` trains and
            updates its statistics like the fine-tuned one) or `"frozen"` (stored source
            statistics, not trained; an ablation).
        policy: `"learned"` (the gate controller) or `"random"`: gates drawn at `random_rate` in
            training and fixed at `random_rate` at inference, the stochastic fine-tuning
            baseline.
        random_rate: Probability of the fine-tuned branch under `policy="random"`, a float in
            (0, 1), or a list of one such probability per gated layer in controller order.
        granularity: `"filter"` (one gate per example and filter) or `"block"` (one gate per
            example and residual block, as in SpotTune).
        initial_rate: Initial probability, in (0, 1), that a learned gate picks the fine-tuned
            filter (the controller heads' bias starts at its logit).
        gradient_scale: Factor (> 0) on the gradient that reaches the controller: its learning
            rate relative to the filters' under SGD; with `normalize_controller_gradient`, the
            RMS the head biases' gradient is normalized to.
        normalize_controller_gradient: If True, the gradient reaching each gated layer's gate
            logits is normalized so the controller head's bias gets a gradient of RMS
            `gradient_scale` at every step, whatever the backbone's width.
        inference: `"expected"` (gate = `sigmoid(logit)`, the training gate's mean) or
            `"threshold"` (gate = `1[logit > 0]`, the paper's rule; an ablation).
        gate_warmup_steps: Training steps (int >= 0) during which every learned gate is 1 (plain
            fine-tuning) while the controller already learns; 0, none, is the default and any
            other value an ablation.
        normalize_controller_inputs: If True, the controller standardizes each pooled input
            channel over the batch, so its gates respond to how an example differs from the
            others; False is an ablation.
    """

    controller_units: int = 64
    temperature: float = 1.0
    pretrained_bn: str = "adapt"
    policy: str = "learned"
    random_rate: float | list = 0.5
    granularity: str = "filter"
    initial_rate: float = 0.8
    gradient_scale: float = 300.0
    normalize_controller_gradient: bool = False
    inference: str = "expected"
    gate_warmup_steps: int = 0
    normalize_controller_inputs: bool = True

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = check(field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)

    @classmethod
    def names(cls):
        """The names of the settings, in declaration order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, settings):
        """Creates the settings from a mapping of names to values; missing ones take defaults.

        Raises:
            TypeError: If a name is not a gate setting (the message lists the known ones).
            ValueError: If a value is not one the setting accepts.
        """
        check_names(settings)
        return cls(**settings)

    def replace(self, **changes):
        """A copy with `changes` applied and checked."""
        check_names(changes)
        return dataclasses.replace(self, **changes)

    def as_dict(self):
        """The settings as a dict, in declaration order (lists copied)."""
        return {
            name: list(value) if isinstance(value, list) else value
            for name, value in ((name, getattr(self, name)) for name in self.names())
        }

    def __hash__(self):
        values = self.as_dict().values()
        return hash(tuple(tuple(v) if isinstance(v, list) else v for v in values))


def _one_of(choices, name, value):
    return validation.one_of(name, value, choices)


# Each setting's check: `check(name, value)` returns the value in its canonical type or raises
# a `ValueError` naming the setting and echoing the value.
_CHECKS = {
    "controller_units": validation.positive_int,
    "temperature": validation.positive_float,
    "pretrained_bn": functools.partial(_one_of, PRETRAINED_BRANCH_MODES),
    "policy": functools.partial(_one_of, POLICIES),
    "random_rate": validation.rates,
    "granularity": functools.partial(_one_of, GRANULARITIES),
    "initial_rate": validation.rate,
    "gradient_scale": validation.positive_float,
    "normalize_controller_gradient": validation.boolean,
    "inference": functools.partial(_one_of, INFERENCE_RULES),
    "gate_warmup_steps": validation.non_negative_int,
    "normalize_controller_inputs": validation.boolean,
}


def check(setting, value, name=None):
    """Checks one gate setting's value.

    Args:
        setting: The setting's name in `GateSettings`.
        value: The value to check.
        name: How the error message names the argument, when a layer calls it otherwise
            (`GateController(warmup_steps=...)` for `gate_warmup_steps`); default `setting`.

    Returns:
        The value in its canonical type (a float for `gradient_scale=300`).

    Raises:
        ValueError: If the value is not one the setting accepts.
    """
    return _CHECKS[setting](name or setting, value)


def check_names(settings):
    """Raises `TypeError` if a key of `settings` is not a gate setting, listing the known ones."""
    unknown = sorted(set(settings) - set(GateSettings.names()))
    if unknown:
        raise TypeError(
            f"Unknown gate setting(s) {', '.join(unknown)}. The gate settings are: "
            f"{', '.join(GateSettings.names())}. Received: {', '.join(unknown)}"
        )


def check_values(settings):
    """Checks a mapping of some gate settings; returns the same keys with canonical values.

    For callers that pass such settings on later (the benchmark's `--wrap-settings`), so that a
    bad value is refused before any work starts: `{"gradient_scale": 300}` gives
    `{"gradient_scale": 300.0}`, so equal settings compare and print alike.

    Raises:
        TypeError: If a key is not a gate setting.
        ValueError: If a value is not one the setting accepts.
    """
    check_names(settings)
    return {name: check(name, value) for name, value in settings.items()}


DEFAULTS = GateSettings()
"""The default gate settings: what `wrap()` and the layers use unless told otherwise."""
