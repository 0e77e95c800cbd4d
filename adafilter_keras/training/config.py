"""TrainConfig: every setting of a training run, validated before any work starts."""

import dataclasses
import pathlib
import re

from adafilter_keras import validation
from adafilter_keras.backbones.models import SMALL, check_backbone
from adafilter_keras.layers.settings import DEFAULTS as GATE_DEFAULTS
from adafilter_keras.layers.settings import GateSettings

# Every method the harness, the benchmark and the quick start know, baseline first (the order of
# every table); defined here only, and imported wherever methods are listed.
METHODS = ("finetune", "feature_extraction", "l2sp", "stochastic", "block", "adafilter")
SCHEDULES = ("cosine", "step")
PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")
# Distributions per Keras backend; PyTorch has none in Keras 3 (one process, one device).
BACKEND_DISTRIBUTIONS = {
    "tensorflow": ("mirrored", "multi_worker"),
    "jax": ("data_parallel", "multi_process"),
    "torch": (),
}
DISTRIBUTIONS = (None, "mirrored", "multi_worker", "data_parallel", "multi_process")


# The TrainConfig fields that are GateSettings fields of the same name. `random_rate` is the
# `stochastic` method's; the policy and granularity follow from `method`.
GATE_FIELDS = (
    "controller_units",
    "temperature",
    "pretrained_bn",
    "random_rate",
    "initial_rate",
    "gradient_scale",
    "inference",
    "gate_warmup_steps",
    "normalize_controller_inputs",
)


@dataclasses.dataclass
class TrainConfig:
    """The settings of one training run. Every field has a command-line flag of the same name.

    The gate fields (`GATE_FIELDS`) are `GateSettings` fields under the same names: their defaults
    are `GateSettings()`'s and they are checked by its rules.

    Attributes:
        dataset: Registry name (`adafilter-keras datasets`) or `folder:/path`.
        method: One of `METHODS`: `adafilter`; `finetune` (every weight trains);
            `feature_extraction` (frozen backbone, new head); `l2sp` (fine-tuning with
            `l2sp_alpha / 2 * ||w - w0||^2` on the backbone and `l2sp_beta / 2 * ||w||^2` on the
            head); `stochastic` (AdaFilter layers with random gates at `random_rate`); `block`
            (one learned gate per residual block).
        backbone: `keras.applications` model name, `SmallResNet` (tests, quick start), or a
            keras-hub preset name (`resnet_50_imagenet`) or local preset directory (needs
            `pip install "adafilter_keras[hub]"`).
        weights: `imagenet`, a weights file, `none`, or `auto`: ImageNet weights for a
            `keras.applications` backbone, none for `SmallResNet` (which has no ImageNet weights).
            For a keras-hub preset `imagenet` (and `auto`) means the preset's own weights.
        image_size: Input side in pixels.
        batch_size: Global batch size.
        epochs: Training epochs.
        seed: Seed of the data split, augmentation, initialisation and gates.
        validation_fraction: Fraction of the training split used for model selection.
        test_fraction: For `folder:DIR` laid out `DIR/<class>/<image>`: the fraction of every
            class held out for testing (fixed seed; the split is written to the run directory).
        shots_per_class: Optional k for k-shot training.
        rest_as_test: With `shots_per_class`, test also on the training examples left unused.
        data_dir: Where datasets are looked for (default `$TFDS_DATA_DIR`/`~/tensorflow_datasets`).
        learning_rate: Peak learning rate of the backbone.
        head_lr_multiplier: Learning-rate multiplier of the new head.
        controller_lr_multiplier: Learning-rate multiplier of the gate controller.
        momentum: SGD momentum.
        weight_decay: L2 weight decay on kernels (added to the gradient, as in `torch.optim.SGD`).
        warmup_epochs: Epochs of linear warm-up from 0 to the peak rate; unset: 1, or 0 for a
            one-epoch run.
        schedule: `cosine` (to 0 at the end) or `step` (times `step_factor` at `step_epochs`).
        step_epochs: Epochs where the step schedule decays; unset: 2/3 and 8/9 of `epochs`
            (those that are at least 1).
        step_factor: Decay factor of the step schedule.
        label_smoothing: Label smoothing of the cross-entropy.
        controller_units: Width of the gate controller.
        temperature: Gate temperature.
        pretrained_bn: `adapt` or `frozen`: the pre-trained branch of every gated BN.
        initial_rate: Initial probability of a fine-tuned gate (`wrap(initial_rate=...)`).
        gradient_scale: Factor on the controller's gradient (`wrap(gradient_scale=...)`).
        inference: `expected` or `threshold`: the inference rule of learned gates.
        gate_warmup_steps: Training steps with every learned gate forced to 1.
        normalize_controller_inputs: Standardize the controller's pooled inputs over the batch
            (`wrap(normalize_controller_inputs=...)`).
        random_rate: Gate probability of the `stochastic` method (default: the default of
            `initial_rate`, so that `stochastic` is the ablation of the learned policy).
        l2sp_alpha: L2-SP strength toward the pre-trained weights.
        l2sp_beta: L2 strength on the head for L2-SP.
        mixed_precision: None, `mixed_float16` or `mixed_bfloat16`.
        jit_compile: `auto`, true or false (passed to `model.compile`).
        distribution: None, `mirrored` (TensorFlow, all local GPUs), `multi_worker` (TensorFlow,
            `TF_CONFIG`), `data_parallel` (JAX, all local devices) or `multi_process` (JAX,
            several processes or machines; see `--coordinator-address`). None on PyTorch.
        run_dir: Output directory; default `runs/<dataset>/<method>/seed<seed>`.
        steps_per_epoch: Optional cap on training steps per epoch (smoke tests).
        cache: Input pipeline caching: `auto`, true or false.
    """

    dataset: str
    method: str = "adafilter"
    backbone: str = "ResNet50"
    weights: str | None = "auto"
    image_size: int = 224
    batch_size: int = 32
    epochs: int = 30
    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    shots_per_class: int | None = None
    rest_as_test: bool = False
    data_dir: str | None = None
    learning_rate: float = 0.01
    head_lr_multiplier: float = 10.0
    controller_lr_multiplier: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int | None = None
    schedule: str = "cosine"
    step_epochs: list | None = None
    step_factor: float = 0.1
    label_smoothing: float = 0.0
    controller_units: int = GATE_DEFAULTS.controller_units
    temperature: float = GATE_DEFAULTS.temperature
    pretrained_bn: str = GATE_DEFAULTS.pretrained_bn
    initial_rate: float = GATE_DEFAULTS.initial_rate
    gradient_scale: float = GATE_DEFAULTS.gradient_scale
    inference: str = GATE_DEFAULTS.inference
    gate_warmup_steps: int = GATE_DEFAULTS.gate_warmup_steps
    normalize_controller_inputs: bool = GATE_DEFAULTS.normalize_controller_inputs
    random_rate: float = GATE_DEFAULTS.random_rate
    l2sp_alpha: float = 0.01
    l2sp_beta: float = 0.01
    mixed_precision: str | None = None
    jit_compile: str | bool = "auto"
    distribution: str | None = None
    run_dir: str | None = None
    steps_per_epoch: int | None = None
    cache: str | bool = "auto"

    def __post_init__(self):
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(
                f"`dataset` must be a dataset name. Received: dataset={self.dataset!r}"
            )
        # Defaults that depend on other settings are resolved here, each change said in `notes`
        # (one line each, printed by the commands), so that no unset setting makes a run fail.
        self.notes = []
        if self.weights in ("none", "None", ""):
            self.weights = None
        if self.weights == "auto" and self.backbone == SMALL:
            self.notes.append(
                f"weights: none ({self.backbone} has no ImageNet weights; pass --weights FILE "
                "to start from saved ones)"
            )
        validation.one_of("method", self.method, METHODS)
        check_backbone(self.backbone)
        validation.one_of("schedule", self.schedule, SCHEDULES)
        validation.one_of("mixed_precision", self.mixed_precision, PRECISIONS)
        validation.one_of("distribution", self.distribution, DISTRIBUTIONS)
        # The gate settings are checked by their one rule (`GateSettings`).
        GateSettings(**{name: getattr(self, name) for name in GATE_FIELDS})
        validation.one_of("jit_compile", self.jit_compile, ("auto", True, False))
        validation.one_of("cache", self.cache, ("auto", True, False))
        validation.one_of("rest_as_test", self.rest_as_test, (True, False))
        if self.rest_as_test and self.shots_per_class is None:
            raise ValueError(
                "`rest_as_test` tests on the training examples not chosen as shots, so it needs "
                "`shots_per_class`. Received: shots_per_class=None"
            )
        for name in ("image_size", "batch_size", "epochs"):
            validation.positive_int(name, getattr(self, name))
        for name in ("learning_rate", "step_factor"):
            validation.positive_float(name, getattr(self, name))
        for name in ("head_lr_multiplier", "controller_lr_multiplier", "weight_decay",
                     "l2sp_alpha", "l2sp_beta", "label_smoothing", "momentum"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
        if isinstance(self.test_fraction, bool) or not (
            isinstance(self.test_fraction, (int, float)) and 0 < self.test_fraction < 1
        ):
            raise ValueError(
                f"`test_fraction` must be in (0, 1). Received: test_fraction={self.test_fraction!r}"
            )
        if self.momentum >= 1 or self.label_smoothing >= 1:
            raise ValueError(
                "`momentum` and `label_smoothing` must be < 1. "
                f"Received: momentum={self.momentum!r}, label_smoothing={self.label_smoothing!r}"
            )
        if self.warmup_epochs is None:
            if self.epochs == 1:
                self.notes.append("warmup_epochs: 0 (a one-epoch run has no room for warm-up)")
        elif (
            isinstance(self.warmup_epochs, bool)
            or not isinstance(self.warmup_epochs, int)
            or (not 0 <= self.warmup_epochs < self.epochs)
        ):
            raise ValueError(
                "`warmup_epochs` must be an int in [0, epochs). "
                f"Received: warmup_epochs={self.warmup_epochs!r} with epochs={self.epochs}"
            )
        for name in ("shots_per_class", "steps_per_epoch"):
            if getattr(self, name) is not None:
                validation.positive_int(name, getattr(self, name))

    @property
    def resolved_run_dir(self):
        """The run directory, defaulting to `runs/<dataset>/<method>/seed<seed>`."""
        if self.run_dir:
            return pathlib.Path(self.run_dir).expanduser()
        dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.dataset).strip("_")
        return pathlib.Path("runs") / dataset / self.method / f"seed{self.seed}"

    # The fields keep what was set ("auto", None) so that a copy with other epochs or another
    # backbone, or a config.json read back, resolves again; these give the values a run uses.
    @property
    def resolved_weights(self):
        """`weights` with `auto` resolved: none for `SmallResNet`, else `imagenet`."""
        if self.weights == "auto":
            return None if self.backbone == SMALL else "imagenet"
        return self.weights

    @property
    def resolved_warmup_epochs(self):
        """`warmup_epochs`, or when unset 1 (0 for a one-epoch run)."""
        if self.warmup_epochs is None:
            return min(1, self.epochs - 1)
        return self.warmup_epochs

    def resolved_step_epochs(self):
        """The epochs where the step schedule decays (`step_epochs`, or its default)."""
        if self.step_epochs:
            return list(self.step_epochs)
        return sorted({e for e in (self.epochs * 2 // 3, self.epochs * 8 // 9) if e >= 1})

    def with_epochs(self, epochs):
        """A copy trained for `epochs`, with the warm-up shortened to fit if needed."""
        warmup = self.warmup_epochs
        return dataclasses.replace(
            self, epochs=epochs, warmup_epochs=None if warmup is None else min(warmup, epochs - 1)
        )

    def to_dict(self):
        """All fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Builds a config from a dict, refusing unknown keys with the list of known ones."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown configuration keys {unknown}. Known keys: {', '.join(sorted(known))}"
            )
        return cls(**values)

    @classmethod
    def from_file(cls, path, **overrides):
        """Reads a JSON config file (a flat object of fields); `overrides` win over the file."""
        values = validation.json_object_file(path, "Config file", hint=" of settings")
        return cls.from_dict({**values, **overrides})
