"""Running the transfer benchmark: many runs in one process, each compiled model reused per seed.

A *cell* is (task, regime, method, optimizer). Its model is built and compiled once; each seed
then gets the weights of a model built fresh with that seed (same head initialisation, gate
noise seed and controller weights as a separate run would have), zeroed optimizer state, and
its own training images and order. Results are appended, one JSON line per run, to
`runs.jsonl`; a run already there is not run again, so a killed benchmark resumes where it
stopped and a benchmark spread over several sittings gives the same table.
"""

import contextlib
import dataclasses
import json
import math
import pathlib
import sys
import time

import keras
import numpy as np

from adafilter_keras.inspection import controller_or_none, gate_model
from adafilter_keras.layers.settings import DEFAULTS as GATE_DEFAULTS
from adafilter_keras.training.config import METHODS
from adafilter_keras.training.methods import HEAD, apply_method
from adafilter_keras.training.optimizers import SGDWithMultipliers, WarmupDecay
from adafilter_keras.transfer import backbones as benchmark_backbones
from adafilter_keras.transfer import tasks as task_data

# "own": each method under the harness's recipe for it (TrainConfig defaults: cosine schedule with
# warm-up, head at 10x the rate, weight decay; L2-SP's penalty instead of decay).
# "sgd": one plain keras.optimizers.SGD(0.01, momentum=0.9) for every method, as a user would
# compile it.
OPTIMIZERS = ("own", "sgd")
# For investigations (`--optimizers adam`): keras.optimizers.Adam() with Keras's defaults
# (learning rate 1e-3), the other optimizer a user compiles with; it normalizes each update,
# so a gradient scale does not speed it up.
EXTRA_OPTIMIZERS = ("adam",)
RESULTS = "runs.jsonl"
# Random gates at the rates the learned gates reach: each layer's fine-tuned fraction over the
# last quarter of the paired `adafilter` run (same cell, same seed), which must run first.
MATCHED = "stochastic_matched"
BENCHMARK_METHODS = (*METHODS, MATCHED)
_GATED = ("adafilter", "stochastic", "block", MATCHED)


@dataclasses.dataclass(frozen=True)
class BenchmarkSettings:
    """What to run. Every field that changes a run is part of its identity in `runs.jsonl`.

    The defaults are the 4-epoch benchmark (larger regime: 4 epochs, seeds 0-4), which the
    investigation scripts in `research/` pair with; `adafilter-keras benchmark`'s presets
    (`command.PRESETS`) run the larger regime for 2,000 steps with seeds 0-2.

    Attributes:
        tasks: Task names (`tasks.TASKS`).
        regimes: `few_shot` and/or `large`.
        methods: Method names (`METHODS`).
        optimizers: `own` and/or `sgd` (`OPTIMIZERS`), or `adam` (`EXTRA_OPTIMIZERS`).
        seeds: Seeds of the few-shot regime.
        large_seeds: Seeds of the larger regime.
        shots: Images per class in the few-shot regime.
        image_size: Image side in pixels.
        backbone: A name of `backbones.BACKBONES`; `backbones.LEGACY` (the default) is the 0.1
            tables' `SmallResNet` with its BN momentum set to 0.9.
        width: Width of the `backbones.LEGACY` backbone (the others have their own).
        batch_size: Training batch size.
        few_shot_steps: Training steps of a few-shot run.
        large_epochs: Epochs of a larger-regime run, unless `large_steps` is set.
        large_steps: Training steps of a larger-regime run, the same for every task (unset:
            `large_epochs` epochs, 312-752 steps on the three tasks).
        source_epochs: Epochs of source pre-training.
        variant: Extra `wrap()` settings for the gated methods (investigations), as a dict;
            empty means `wrap()`'s defaults.
    """

    tasks: tuple = task_data.TASKS
    regimes: tuple = task_data.REGIMES
    methods: tuple = METHODS
    optimizers: tuple = OPTIMIZERS
    seeds: tuple = (0, 1, 2, 3, 4)
    large_seeds: tuple = (0, 1, 2, 3, 4)
    shots: int = 10
    image_size: int = 16
    backbone: str = benchmark_backbones.LEGACY
    width: int = 16
    batch_size: int = 16
    few_shot_steps: int = 150
    large_epochs: int = 4
    large_steps: int | None = None
    source_epochs: int = 6
    variant: dict = dataclasses.field(default_factory=dict)

    def seeds_of(self, regime):
        return self.seeds if regime == "few_shot" else self.large_seeds

    def cells(self):
        """(task, regime, method, optimizer) in run order.

        Regimes first (few-shot first, so a benchmark cut short has whole comparisons), then
        tasks, optimizers, methods.
        """
        return [
            (task, regime, method, optimizer)
            for regime in self.regimes
            for task in self.tasks
            for optimizer in self.optimizers
            for method in self.methods
        ]

    def total_runs(self):
        return sum(len(self.seeds_of(cell[1])) for cell in self.cells())

    @property
    def model(self):
        """`NAME@PIXELS` of the backbone, as records and tables name it."""
        return f"{self.backbone}@{self.image_size}"


def run_key(settings, task, regime, method, optimizer, seed):
    """The identity of one run: every setting that changes its result."""
    key = {
        "task": task,
        "regime": regime,
        "method": method,
        "optimizer": optimizer,
        "seed": seed,
        "shots": settings.shots if regime == "few_shot" else None,
        "image_size": settings.image_size,
        "width": settings.width,
        "batch_size": settings.batch_size,
        "steps": settings.few_shot_steps if regime == "few_shot" else settings.large_steps,
        # Unset when the steps are: runs of an epoch count keep the key they always had.
        "epochs": settings.large_epochs
        if regime == "large" and settings.large_steps is None
        else None,
        "source_epochs": settings.source_epochs,
        # The gated methods' resolved settings: a change of wrap()'s defaults is a new run.
        "variant": variant_key(settings.variant, settings.backbone) if method in _GATED else {},
    }
    # The 0.1 tables' backbone keeps the keys its runs were recorded under.
    if settings.backbone != benchmark_backbones.LEGACY:
        key["backbone"] = settings.backbone
        del key["width"]
    return json.dumps(key, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Cell:
    """What a hook of `Benchmark` is told about the model it is given or asked for.

    Attributes:
        task: Task name (`tasks.TASKS` or `tasks.EXTRA_TASKS`).
        regime: `few_shot` or `large`.
        method: Method name (`METHODS`).
        optimizer: Optimizer name (`OPTIMIZERS` or `EXTRA_OPTIMIZERS`).
        steps: Training steps of each of the cell's runs.
    """

    task: str
    regime: str
    method: str
    optimizer: str
    steps: int


def default_optimizer(cell):
    """The optimizer the benchmark trains `cell` with: what `cell.optimizer` names.

    Args:
        cell: A `Cell`.

    Returns:
        A new `keras.optimizers.Optimizer`: `own_recipe(cell.steps, cell.method)` for `own`,
        `keras.optimizers.SGD(0.01, momentum=0.9)` for `sgd`, `keras.optimizers.Adam()` for
        `adam`.
    """
    if cell.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    if cell.optimizer == "adam":
        return keras.optimizers.Adam()
    return own_recipe(cell.steps, cell.method)


# The gate settings a benchmark variant may change (`--wrap-settings`), with their defaults
# (`GateSettings`): every run key of a gated method records their resolved values. The others
# follow from the method (policy, granularity, random_rate) or the harness (controller_units).
VARIANT_SETTINGS = {
    name: getattr(GATE_DEFAULTS, name)
    for name in (
        "temperature",
        "pretrained_bn",
        "initial_rate",
        "gradient_scale",
        "inference",
        "gate_warmup_steps",
        "normalize_controller_inputs",
        "normalize_controller_gradient",
    )
}

# Settings added to wrap() after runs were recorded, with the value that reproduces those runs:
# left out of a run's key while they hold it, so the recorded runs keep their keys.
_LATER_SETTINGS = {"normalize_controller_gradient": False}


# The gate settings the 0.1 tables were made with where today's defaults differ: runs on their
# backbone (`backbones.LEGACY`) are made with these unless the variant says otherwise, so that
# those tables keep their keys and their numbers.
LEGACY_GATES = {"initial_rate": 0.5}


def gate_settings(variant, backbone=benchmark_backbones.LEGACY):
    """The `wrap()` settings a gated run on `backbone` is made with: `variant` over its base.

    The base is today's defaults, or `LEGACY_GATES` on the 0.1 tables' backbone.
    """
    base = LEGACY_GATES if backbone == benchmark_backbones.LEGACY else {}
    return {**base, **variant}


def variant_key(variant, backbone=benchmark_backbones.LEGACY):
    """The gate settings a gated run's key holds: `variant` over the defaults.

    Use it wherever a run's `key["variant"]` is compared with settings, so that the settings left
    out of the key (`_LATER_SETTINGS`) compare alike. `backbone` is the run's (the 0.1 tables'
    backbone by default, whose runs the investigations in `research/` compare).
    """
    resolved = {**VARIANT_SETTINGS, **gate_settings(variant, backbone)}
    return {
        name: value
        for name, value in resolved.items()
        if name not in _LATER_SETTINGS or value != _LATER_SETTINGS[name]
    }


class Benchmark:
    """Runs `settings` into `output_dir`, skipping the runs already in `runs.jsonl`.

    Two hooks let an investigation change how the runs train without touching the library;
    neither is part of a run's key, so give a run made with a hook its own `output_dir`.

    Args:
        settings: A `BenchmarkSettings`, or a suite: a sequence of them (one per backbone), run
            in order into the same `runs.jsonl`.
        output_dir: Where `runs.jsonl`, the source backbones and the reports go.
        stream: Where progress is printed (default stdout): one line per run, redrawn in
            place on a terminal.
        optimizer_factory: Callable `(cell) -> keras.optimizers.Optimizer` given a `Cell`,
            called once per cell; default `default_optimizer`.
        model_hook: Callable `(model, cell) -> None` given every model the benchmark builds
            (after the method is applied, before it is compiled or its weights are set), to
            change it in place. It must act the same on every call, as each seed's weights
            are copied from a model built afresh.

    Raises:
        ValueError: `stochastic_matched` is asked for without `adafilter`, whose gate rates it
            draws at.
    """

    def __init__(
        self, settings, output_dir, stream=None, *, optimizer_factory=None, model_hook=None
    ):
        self.suite = list(settings) if isinstance(settings, (list, tuple)) else [settings]
        if not self.suite:
            raise ValueError("A benchmark suite needs at least one BenchmarkSettings.")
        self.settings = self.suite[0]
        for each in self.suite:
            if MATCHED in each.methods and "adafilter" not in each.methods:
                raise ValueError(
                    f"Method {MATCHED} draws random gates at the rates of the paired adafilter "
                    "run: add adafilter to the methods."
                )
        self.output_dir = pathlib.Path(output_dir)
        self.stream = stream or sys.stdout
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.results_path = self.output_dir / RESULTS
        self.optimizer_factory = optimizer_factory or default_optimizer
        self.model_hook = model_hook

    def done(self):
        """The results recorded so far, by run key."""
        if not self.results_path.exists():
            return {}
        records = {}
        for line in self.results_path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["key"]] = record
        return records

    def total_runs(self):
        """How many runs the suite holds."""
        return sum(settings.total_runs() for settings in self.suite)

    def keys(self):
        """`(settings, cell, seed, key)` of every run of the suite, in run order."""
        return [
            (settings, cell, seed, run_key(settings, *cell, seed))
            for settings in self.suite
            for cell in settings.cells()
            for seed in settings.seeds_of(cell[1])
        ]

    def run(self):
        """Runs what is missing; returns every record of the suite (done before or now)."""
        with _deterministic():
            return self._run()

    def _run(self):
        self.output_dir.mkdir(parents=True, exist_ok=True)
        done = self.done()
        keys = self.keys()
        total = len(keys)
        finished = sum(key in done for *_, key in keys)
        started, ran = time.time(), 0
        if finished:
            self._print(f"resuming: {finished} of {total} runs already in {self.results_path}")
        for settings in self.suite:
            for cell in settings.cells():
                todo = [
                    seed
                    for seed in settings.seeds_of(cell[1])
                    if run_key(settings, *cell, seed) not in done
                ]
                if not todo:
                    continue
                runner = None
                for seed in todo:
                    if cell[2] == MATCHED:
                        # One compiled model per seed: the rates are the seed's own.
                        paired = run_key(settings, *cell[:2], "adafilter", cell[3], seed)
                        runner = self._cell(settings, cell, matched_rates(done[paired]))
                    elif runner is None:
                        runner = self._cell(settings, cell)
                    label = "/".join(cell) + f"/seed{seed}"
                    if settings.backbone != benchmark_backbones.LEGACY:
                        label = f"{settings.model}/{label}"
                    record = runner.run(seed)
                    record["key"] = run_key(settings, *cell, seed)
                    with self.results_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    done[record["key"]] = record
                    finished, ran = finished + 1, ran + 1
                    elapsed = time.time() - started
                    left = elapsed / ran * (total - finished)
                    self._print(
                        f"[{finished}/{total}] {label}: validation "
                        f"{100 * record['val_accuracy']:.1f} %, test "
                        f"{100 * record['test_accuracy']:.1f} % ({record['seconds']:.0f} s; "
                        f"{_clock(elapsed)} elapsed, about {_clock(left)} left)"
                    )
        return [done[key] for *_, key in keys]

    def _cell(self, settings, cell, random_rate=None):
        return _Cell(
            settings,
            self.output_dir,
            *cell,
            log=self._print,
            optimizer_factory=self.optimizer_factory,
            model_hook=self.model_hook,
            random_rate=random_rate,
        )

    def trained(self, task, regime, method, optimizer, seeds):
        """Trains seeds of one cell as `run()` does, without recording them, to inspect the models.

        For investigations that score or probe a trained model in ways the benchmark does not.
        The runs are those `run()` would make (same source models in `output_dir/sources`, same
        hooks, TensorFlow op determinism on while the generator runs), but nothing is read from
        or written to `runs.jsonl`.

        Args:
            task: Task name.
            regime: `few_shot` or `large`.
            method: Method name (`METHODS`).
            optimizer: Optimizer name (`OPTIMIZERS` or `EXTRA_OPTIMIZERS`).
            seeds: The seeds to train, in order.

        Yields:
            `(record, model, task)` per seed: the run's record as `run()` writes it (without its
            key); the trained `keras.Model` (one object for all seeds, given each seed's weights
            in turn: use it before asking for the next seed); and the cell's `tasks.Task` (images
            are uint8; the model reads them as `images.astype("float32") / 255`).
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with _deterministic():
            runner = _Cell(
                self.settings,
                self.output_dir,
                task,
                regime,
                method,
                optimizer,
                log=self._print,
                optimizer_factory=self.optimizer_factory,
                model_hook=self.model_hook,
            )
            for seed in seeds:
                yield runner.run(seed), runner.model, runner.task

    def _print(self, text):
        self.stream.write(text + "\n")
        self.stream.flush()


@contextlib.contextmanager
def _deterministic():
    """Same command, same numbers: deterministic TensorFlow kernels while the benchmark runs.

    Op determinism is process-wide; it is switched back off afterwards (TensorFlow's public API
    has no switch-off, its `framework.config` module has) so that code run later in the same
    process, such as an augmentation op that refuses seed 0 under determinism, is unaffected.
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    from tensorflow.python.framework import config

    was_on = config.is_op_determinism_enabled()
    config.enable_op_determinism()
    try:
        yield
    finally:
        if not was_on:
            config.disable_op_determinism()


def matched_rates(record, low=0.02, high=0.98):
    """Per gated layer, the fine-tuned fraction the learned gates of `record` reached.

    Read from the gate report of the last quarter of an `adafilter` run, clipped to
    `[low, high]` (a layer whose learned gates all chose one branch is drawn at nearly that
    rate, not exactly: `random_rate` is a probability in (0, 1)).
    """
    gates = record.get("gates")
    if not gates:
        raise ValueError(
            f"Run {record.get('key', record)!r} has no gate report to match rates with."
        )
    return [min(high, max(low, float(layer["fraction_finetuned"]))) for layer in gates]


def _clock(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def own_recipe(
    steps, method, cosine=True, weight_decay=True, head_multiplier=True, multipliers=None
):
    """The `own` optimizer: the harness's recipe (TrainConfig defaults), in steps.

    Warm-up over the first 5 % of `steps`, then cosine decay from 0.01 to zero; the head at 10x
    the rate; L2 decay 1e-4 on kernels (none for `l2sp`, whose penalty replaces it).

    Args:
        steps: Training steps (the schedule's length).
        method: Method name (`l2sp` gets no weight decay).
        cosine: False keeps the peak rate after the warm-up (no decay).
        weight_decay: False takes the L2 decay away.
        head_multiplier: False trains the head at the backbone's rate.
        multipliers: Extra `{regex: multiplier}` of `SGDWithMultipliers`, matched before the
            head's.

    Returns:
        An `SGDWithMultipliers`.
    """
    warmup = max(1, steps // 20)
    return SGDWithMultipliers(
        learning_rate=WarmupDecay(
            peak=0.01,
            total_steps=steps,
            warmup_steps=warmup,
            kind="cosine" if cosine else "step",  # "step" without boundaries: constant
        ),
        momentum=0.9,
        weight_decay_l2=1e-4 if weight_decay and method != "l2sp" else 0.0,
        multipliers={
            **(multipliers or {}),
            **({f"^{HEAD}/": 10.0} if head_multiplier else {}),
        },
    )


class _Cell:
    """One compiled model for (task, regime, method, optimizer), run for several seeds."""

    def __init__(
        self,
        settings,
        output_dir,
        task,
        regime,
        method,
        optimizer,
        log,
        optimizer_factory=default_optimizer,
        model_hook=None,
        random_rate=None,
    ):
        self.settings = settings
        self.model_hook = model_hook
        self.random_rate = random_rate
        self.task = task_data.load_task(task, settings.image_size)
        self.regime, self.method, self.optimizer_name = regime, method, optimizer
        self.source_weights = _source_backbone(settings, self.task, output_dir, log)
        probe_train, _ = self.task.sample(regime, 0, settings.shots)
        self.train_size = len(probe_train[1])
        if regime == "few_shot":
            self.steps = settings.few_shot_steps
        elif settings.large_steps is not None:
            self.steps = settings.large_steps
        else:
            self.steps = settings.large_epochs * math.ceil(self.train_size / settings.batch_size)
        self.cell = Cell(task, regime, method, optimizer, self.steps)
        self.model = self._build(seed=0)
        self.model.compile(
            optimizer=optimizer_factory(self.cell),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        # The benchmark records the gates over the last quarter of training (`_LateGateReport`):
        # statistics on from the start, so the one train function made already counts them.
        controller = controller_or_none(self.model)
        if controller is not None:
            controller.start_statistics()
        optimizer = self.model.optimizer
        optimizer.build(self.model.trainable_variables)
        # Its state as a fresh optimizer has it (step 0, zero momentum, the learning rate).
        self.optimizer_state = [keras.ops.convert_to_numpy(v) for v in optimizer.variables]

    def _build(self, seed):
        keras.utils.set_random_seed(seed)
        size = self.settings.image_size
        backbone = _backbone(self.settings)
        backbone.load_weights(self.source_weights)
        inputs = keras.Input((size, size, 3), name="images")
        outputs = keras.layers.Dense(self.task.num_classes, name=HEAD)(backbone(inputs))
        model = keras.Model(inputs, outputs, name=f"{self.method}_{backbone.name}")
        gates = gate_settings(self.settings.variant, self.settings.backbone)
        if self.method == MATCHED:
            model = apply_method(
                model,
                backbone,
                "stochastic",
                seed=seed,
                random_rate=self.random_rate,
                **gates,
            )
        else:
            model = apply_method(model, backbone, self.method, seed=seed, **gates)
        if self.model_hook is not None:
            self.model_hook(model, self.cell)
        return model

    def run(self, seed):
        started = time.time()
        settings = self.settings
        fresh = self._build(seed)
        # `variables`, not `get_weights()`: the gate-noise seed generators' states too, so that a
        # seed run after another in one process equals that seed run first (resume).
        controller = controller_or_none(self.model)
        statistics = {id(v) for v in controller.statistics_variables} if controller else set()
        state = [v for v in self.model.variables if id(v) not in statistics]
        for variable, value in zip(state, fresh.variables, strict=True):
            variable.assign(value)
        for variable, value in zip(
            self.model.optimizer.variables, self.optimizer_state, strict=True
        ):
            variable.assign(value)
        train, validation = self.task.sample(self.regime, seed, settings.shots)
        rng = np.random.default_rng([task_data.PROTOCOL_SEED, seed, 7])
        batch = settings.batch_size
        order = np.concatenate(
            [
                rng.permutation(len(train[1]))
                for _ in range(math.ceil(self.steps * batch / len(train[1])) + 1)
            ]
        )[: self.steps * batch]
        reporter = _LateGateReport(controller, start_step=int(0.75 * self.steps))
        self.model.fit(
            _floats(train[0][order]),
            train[1][order],
            batch_size=batch,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[reporter] if controller else [],
        )
        record = {
            "task": self.task.name,
            "regime": self.regime,
            "method": self.method,
            "optimizer": self.optimizer_name,
            "seed": seed,
            "train_size": len(train[1]),
            "steps": self.steps,
            "variant": settings.variant,
        }
        if settings.backbone != benchmark_backbones.LEGACY:
            record["backbone"] = settings.model
        if self.method == MATCHED:
            record["random_rate"] = self.random_rate
        record.update(self._score(validation, "val"))
        record.update(self._score(self.task.test, "test"))
        if controller is not None:
            record["gates"] = reporter.report
            if self.task.test_groups is not None:
                record["gate_group_gap"] = self._group_gap()
            if controller.policy == "learned":
                # The other inference rule, scored on the same trained model (paired, free).
                other = "threshold" if controller.inference == "expected" else "expected"
                kept = controller.inference
                controller.inference = other
                self.model.predict_function = None
                try:
                    record[f"inference_{other}"] = {
                        **self._score(validation, "val"),
                        **self._score(self.task.test, "test"),
                    }
                finally:
                    controller.inference = kept
                    self.model.predict_function = None
        record["seconds"] = time.time() - started
        return record

    def _group_gap(self):
        # Does the policy tell the task's two kinds of image apart? Per gated layer, the mean
        # over filters of |mean inference gate on kind 1 - on kind 2|, over the test set.
        gates = gate_model(self.model).predict(
            _floats(self.task.test[0]), batch_size=256, verbose=0
        )
        first = self.task.test_groups
        return [
            float(np.mean(np.abs(layer[first].mean(0) - layer[~first].mean(0))))
            for layer in (gates if isinstance(gates, list) else [gates])
        ]

    def _score(self, data, prefix):
        logits = self.model.predict(_floats(data[0]), batch_size=256, verbose=0)
        return {f"{prefix}_accuracy": float(np.mean(np.argmax(logits, -1) == data[1]))}


def _floats(images):
    # The source model was trained on [0, 1] images.
    return images.astype("float32") / 255.0


class _LateGateReport(keras.callbacks.Callback):
    """The controller's gate report over the last quarter of training (the policy it ends with)."""

    def __init__(self, controller, start_step):
        super().__init__()
        self.controller = controller
        self.start_step = start_step
        self.report = None

    def on_train_begin(self, logs=None):
        self.controller.reset_gate_statistics()

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.start_step:
            # Under JAX the variables hold the state only once synced (a no-op elsewhere).
            getattr(self.model, "jax_state_sync", lambda: None)()
            self.controller.reset_gate_statistics()

    def on_train_end(self, logs=None):
        self.report = self.controller.gate_report()


def _source_backbone(settings, task, output_dir, log):
    """Pre-trains (once, then cached on disk) the backbone of `task`'s source."""
    size = settings.image_size
    model = (
        f"w{settings.width}"
        if settings.backbone == benchmark_backbones.LEGACY
        else settings.backbone
    )
    name = f"{task.source_name}_{size}px_{model}_e{settings.source_epochs}"
    path = pathlib.Path(output_dir) / "sources" / f"{name}.weights.h5"
    if path.exists():
        return path
    started = time.time()
    keras.utils.set_random_seed(0)
    backbone = _backbone(settings)
    inputs = keras.Input((size, size, 3))
    classes = int(task.source[1].max()) + 1
    model = keras.Model(inputs, keras.layers.Dense(classes)(backbone(inputs)))
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # One pass over epochs' worth of seeded permutations: Keras's own shuffle draws from
    # TensorFlow's op-seed sequence, which depends on what the process ran before.
    rng = np.random.default_rng(0)
    size = len(task.source[1])
    order = np.concatenate([rng.permutation(size) for _ in range(settings.source_epochs)])
    history = model.fit(
        _floats(task.source[0][order]),
        task.source[1][order],
        batch_size=64,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(str(path))
    log(
        f"source model {name}: training accuracy {100 * history.history['accuracy'][-1]:.1f} % "
        f"({time.time() - started:.0f} s), cached in {path}"
    )
    return path


def _backbone(settings):
    return benchmark_backbones.BACKBONES[settings.backbone].build(
        settings.image_size, settings.width
    )
