"""Training-step time and memory of AdaFilter against plain fine-tuning and feature extraction.

Usage:
    python benchmarks/step_time.py [--models small resnet50] [--repeats 20] [--warmup 3]
                                   [--dtype float32|mixed_bfloat16] [--no-memory] [--profile]
                                   [--backends tensorflow jax torch] [--output FILE]
    python benchmarks/step_time.py --backbone ResNet50|SmallResNet [--image-size 64 224]
                                   [--batch-size 8] [...the flags above but --models]

The models measured: by default both presets of `--models`, the small model (`small`:
`SmallResNet` at 32 px, batch 32, whose step is mostly the per-layer extra work) and ResNet50
(`resnet50`: 64 px, batch 8). `--backbone`, `--image-size` or `--batch-size` describe one custom
model instead, measured at each `--image-size`; the flags not given keep their defaults
(ResNet50, 64 and 224 px, batch 8). Giving `--models` with any of them is an error.

For each model, one process builds three models on the same backbone (weights=None, random
synthetic data, SGD with momentum, same compile settings):

* `finetune`: backbone + new head, every weight trains;
* `feature_extraction`: frozen backbone, only the head trains (the floor);
* `adafilter`: `adafilter_keras.wrap()` of the fine-tuning model.

Two kinds of rows:

* `train_on_batch`: after warm-up steps (compilation excluded), `--repeats` rounds that time one
  `train_on_batch` of each method in turn on one in-memory batch (alternating, so drifts of the
  machine hit all methods alike); the median ms/step.
* `fit`: `model.fit` as the training harness (`adafilter-keras train`) runs it, input pipeline
  included. The images are a folder of random PNGs at the model's input size, written to a
  temporary directory and read by the harness's own loader (`adafilter_keras.data.load`:
  decode, random resized crop, flip, normalize, batch, prefetch; one-hot labels); the models are
  the harness's (`training.methods.build_model`, its SGD with learning-rate multipliers and
  weight decay, its loss, accuracy metric and `jit_compile`), and the adafilter model counts its
  gate statistics in every step, as the harness's `GateStatistics` callback makes it do.
  `training.train()` itself is not called: it builds and compiles a new model per call and ends
  with an evaluation, so methods could not alternate. Each fresh model first runs one epoch of
  `FIRST_EPOCH_STEPS` steps (a `fit` call timed whole: compilation, the first iterator over the
  data and everything `fit` does first included; reported per step and against the steady
  state, in a second table), then the methods take turns in short `fit` calls of
  `FIT_STEPS_PER_CALL` timed steps each until `--repeats` steps are timed per method; the first
  step of each call (a new iterator over the data) is not timed. A Keras callback times each
  step from the end of the previous step (the start of the first) to its end, so fetching the
  batch and the harness's per-step callback (`StopOnNaN`) count on every backend; the median
  of those per-step times is reported. The input pipeline is `tf.data`: without TensorFlow
  installed (a JAX or PyTorch machine), the `fit` rows are skipped with a line saying why.

Each row gives ms/step, img/s and the time against `finetune` of the same model and kind.
Memory is measured for the `train_on_batch` models, for each method after its warm-up steps, as
the backend counts it:

* TensorFlow: in a fresh subprocess per method, the allocator's peak during one training step
  (CPU: with the BFC allocator, which keeps the count) and the bytes it held just before
  (weights, optimizer state, anything the runtime keeps);
* JAX (CPU or GPU): XLA's buffer sizes of the compiled training step, read in the timing process
  from the step Keras already compiled (no second compilation): arguments (the state) plus
  temporaries. On a GPU the device's peak bytes in use over the whole process is recorded too;
* PyTorch with a GPU: `torch.cuda`'s peak during one step and the bytes allocated just before, in
  the timing process; with a CPU it is not measured (the CPU allocator keeps no count).

`--profile` adds, after the timing, a profile of one `train_on_batch` step of `finetune` and
`adafilter`: on PyTorch `torch.profiler`'s table of the ops that take the most time; on JAX XLA's
cost analysis of the compiled step (floating-point operations and bytes accessed).

Prints a Markdown table (model, kind, method, ms/step, img/s, time vs finetune, and the memory
columns where measured) and writes the same rows as JSON.

`--backends` runs the whole measurement once per Keras backend, each in its own process (one after
the other, so they do not compete for cores), and prints one table with a backend column.

On a JAX GPU the script turns off JAX's pre-allocation of most of the device's memory
(`XLA_PYTHON_CLIENT_PREALLOCATE=false`, unless set) so that memory is allocated as it is used.
"""

import argparse
import dataclasses
import functools
import importlib.util
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

METHODS = ("finetune", "adafilter", "feature_extraction")
NUM_CLASSES = 100
# The preset models of `--models`: backbone, image size and batch size.
PRESETS = {
    "small": {"backbone": "SmallResNet", "image_size": 32, "batch_size": 32},
    "resnet50": {"backbone": "ResNet50", "image_size": 64, "batch_size": 8},
}
# A custom model (`--backbone`, `--image-size`, `--batch-size`): the defaults of flags not given.
CUSTOM_DEFAULTS = {"backbone": "ResNet50", "image_size": [64, 224], "batch_size": 8}
CUSTOM_FLAGS = {
    "backbone": "--backbone",
    "image_size": "--image-size",
    "batch_size": "--batch-size",
}
FIT_STEPS_PER_CALL = 5  # timed steps of each short `fit` call (the methods alternate between calls)
FIT_UNTIMED_STEPS = 1  # steps at the start of each `fit` call not timed (a new data iterator)
FIRST_EPOCH_STEPS = 15  # the first `fit` of each fresh model, timed whole (the harness's epochs)


@dataclasses.dataclass(frozen=True)
class ModelSetting:
    """One model to measure: a preset of `--models` or the custom model of the flags.

    Attributes:
        name: The preset's name (`small`, `resnet50`) or `custom`.
        backbone: A `keras.applications` name or `SmallResNet`.
        image_size: Input side in pixels.
        batch_size: Images per step.
    """

    name: str
    backbone: str
    image_size: int
    batch_size: int

    @property
    def label(self):
        """The model column of the table."""
        return f"{self.backbone} {self.image_size} px, batch {self.batch_size}"


def model_settings(args):
    """The models `args` asks for: the `--models` presets, or one custom model per image size."""
    given = {name: getattr(args, name) for name in CUSTOM_FLAGS if getattr(args, name) is not None}
    if given:
        custom = CUSTOM_DEFAULTS | given
        return [
            ModelSetting("custom", custom["backbone"], size, custom["batch_size"])
            for size in custom["image_size"]
        ]
    return [ModelSetting(name, **PRESETS[name]) for name in args.models or tuple(PRESETS)]


def build(method, backbone, image_size, **wrap_changes):
    """One method's model on `backbone` (a `keras.applications` name or `SmallResNet`).

    `wrap_changes` are gate settings for `adafilter` (`wrap()`'s keywords), none by default.
    """
    import keras

    import adafilter_keras as ak

    if backbone == "SmallResNet":  # the small model: its step is mostly the per-layer extra work
        from adafilter_keras.backbones.models import small_resnet

        base = small_resnet((image_size, image_size, 3))
    else:
        base = getattr(keras.applications, backbone)(
            weights=None, include_top=False, pooling="avg", input_shape=(image_size, image_size, 3)
        )
    if method == "feature_extraction":
        base.trainable = False
    inputs = keras.Input((image_size, image_size, 3))
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(base(inputs)))
    if method == "adafilter":
        model = ak.wrap(model, seed=0, **wrap_changes)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def batch(batch_size, image_size):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, (batch_size,))
    return x, y


def time_methods(args, setting):
    """Returns the median seconds per `train_on_batch` step of each method, the in-process
    memory records and the profiles."""
    import keras

    models = {m: build(m, setting.backbone, setting.image_size) for m in METHODS}
    x, y = batch(setting.batch_size, setting.image_size)
    memory = {}
    for method, model in models.items():
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
        if not args.no_memory and keras.backend.backend() != "tensorflow":
            memory[method] = step_memory(model, x, y)
    medians = median_step_times(models, x, y, args.repeats)
    profiles = {}
    if args.profile:
        profiles = {m: profile_step(models[m], x, y) for m in ("finetune", "adafilter")}
    return medians, memory, profiles


def median_step_times(models, x, y, repeats):
    """The median seconds of a `train_on_batch` step of each of `models` (a dict), over
    `repeats` rounds that step each model in turn (so drifts of the machine hit all alike)."""
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            loss = model.train_on_batch(x, y)
            float(np.asarray(loss))  # wait for the step to finish (asynchronous backends)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def tensorflow_available():
    """Whether TensorFlow can be imported (the harness's input pipeline is `tf.data`)."""
    return importlib.util.find_spec("tensorflow") is not None


def fit_skip_reason(dtype):
    """Why the `fit` rows cannot be measured here, in one line; None when they can."""
    if not tensorflow_available():
        return "TensorFlow is not installed, and the harness's input pipeline is tf.data"
    from adafilter_keras.training.config import PRECISIONS

    if dtype != "float32" and dtype not in PRECISIONS:
        known = ", ".join(["float32", *filter(None, PRECISIONS)])
        return f"the harness trains in {known}, not {dtype}"
    return None


@functools.cache
def _fit_step_timer_class():
    """The callback class of `fit_step_timer` (made on first use: Keras is imported late)."""
    import keras

    class FitStepTimer(keras.callbacks.Callback):
        """Per-step durations of `model.fit`, leaving out `warmup` steps at the start of each fit.

        A step lasts from the end of the previous step of the same epoch (for the first step of
        an epoch: its own start) to its end, so whatever `fit` does between steps (fetching the
        batch, the other callbacks) counts. Keras hands a callback that overrides
        `on_train_batch_end` (and is not `async_safe`) logs already converted to Python
        numbers, so the end is taken after the step has finished, on every backend.
        """

        def __init__(self, warmup, clock):
            super().__init__()
            self.warmup = warmup
            self.clock = clock
            self.durations = []
            self._step = 0
            self._last = None

        def on_train_begin(self, logs=None):
            self._step = 0

        def on_epoch_begin(self, epoch, logs=None):
            self._last = None

        def on_train_batch_begin(self, batch, logs=None):
            if self._last is None:
                self._last = self.clock()

        def on_train_batch_end(self, batch, logs=None):
            now = self.clock()
            if self._step >= self.warmup:
                self.durations.append(now - self._last)
            self._step += 1
            self._last = now

    return FitStepTimer


def fit_step_timer(warmup, clock=time.perf_counter):
    """A Keras callback whose `durations` are the seconds of each timed `fit` step.

    Args:
        warmup: Steps at the start of each `fit` call that are not timed.
        clock: The clock read at the batch callbacks.
    """
    return _fit_step_timer_class()(warmup, clock)


def write_image_folder(root, image_size, batch_size):
    """Writes random PNGs at `image_size` as `root/{train,test}/<class>/<n>.png`; returns root.

    `NUM_CLASSES` classes, at least four batches of training images and one test image a class.
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    per_class = {"train": math.ceil(max(4 * batch_size, NUM_CLASSES) / NUM_CLASSES), "test": 1}
    for split, count in per_class.items():
        for label in range(NUM_CLASSES):
            folder = root / split / f"class_{label:03d}"
            folder.mkdir(parents=True)
            for n in range(count):
                pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
                (folder / f"{n}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return root


def _harness_fit_models(args, setting, folder, total_steps):
    """The training data and each method's compiled model, made as `training.train()` makes
    them; the adafilter model counts its gate statistics (as `GateStatistics` makes it)."""
    import keras

    from adafilter_keras.inspection import controller_or_none
    from adafilter_keras.training import runner
    from adafilter_keras.training.config import TrainConfig
    from adafilter_keras.training.methods import build_model

    configs = {
        method: TrainConfig(
            dataset=f"folder:{folder}",
            method=method,
            backbone=setting.backbone,
            weights="none",
            image_size=setting.image_size,
            batch_size=setting.batch_size,
            epochs=1,
            validation_fraction=0.0,
            mixed_precision=None if args.dtype == "float32" else args.dtype,
            steps_per_epoch=total_steps,
        )
        for method in METHODS
    }
    config = configs["finetune"]
    loaded = runner.load_data(config)
    # As train() with steps_per_epoch: one-hot labels, the pipeline repeated.
    train_data = runner._one_hot(loaded.train, loaded.num_classes).repeat()
    models = {}
    for method, config in configs.items():
        model = build_model(config, loaded.num_classes)
        model.compile(  # train()'s compile settings (one process)
            optimizer=runner._optimizer(config, total_steps),
            loss=keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=config.label_smoothing
            ),
            metrics=["accuracy"],
            jit_compile=config.jit_compile,
        )
        controller = controller_or_none(model)
        if controller is not None:
            controller.start_statistics()
        models[method] = model
    return train_data, models


def time_fit(args, setting):
    """Returns the median seconds per `fit` step of each method, the steps timed of each, and
    the seconds per step of each method's first epoch.

    See the module docstring (`fit` rows) for what is timed and how the methods alternate.
    """
    from adafilter_keras.training.callbacks import StopOnNaN

    per_call = min(FIT_STEPS_PER_CALL, args.repeats)
    calls = math.ceil(args.repeats / per_call)
    total_steps = FIRST_EPOCH_STEPS + calls * (FIT_UNTIMED_STEPS + per_call)
    timers = {m: fit_step_timer(FIT_UNTIMED_STEPS) for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_image_folder(pathlib.Path(tmp), setting.image_size, setting.batch_size)
        train_data, models = _harness_fit_models(args, setting, folder, total_steps)

        def fit(method, steps, timed):
            nan_guard = StopOnNaN(lambda epoch, step: FloatingPointError(f"{method}: NaN loss"))
            models[method].fit(
                train_data,
                epochs=1,
                steps_per_epoch=steps,
                callbacks=[nan_guard, *([timers[method]] if timed else [])],
                verbose=0,
                shuffle=False,
            )

        first_epoch = {}
        for method in METHODS:  # a fresh model's first epoch: compilation and warm-up included
            start = time.perf_counter()
            fit(method, FIRST_EPOCH_STEPS, timed=False)
            first_epoch[method] = (time.perf_counter() - start) / FIRST_EPOCH_STEPS
        for _ in range(calls):
            for method in METHODS:
                fit(method, FIT_UNTIMED_STEPS + per_call, timed=True)
    durations = {m: timer.durations for m, timer in timers.items()}
    medians = {m: statistics.median(d) for m, d in durations.items()}
    return medians, {m: len(d) for m, d in durations.items()}, first_epoch


def step_memory(model, x, y):
    """The memory record of one training step of `model`, as the current backend counts it."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_step_memory(model, x, y)
    if backend == "jax":
        return _jax_step_memory(model, x, y)
    return _torch_step_memory(model, x, y)


def profile_step(model, x, y):
    """A profile of one training step: the costliest ops (PyTorch) or XLA's cost analysis (JAX)."""
    import keras

    if keras.backend.backend() == "jax":
        analysis = _jax_compiled_step(model, x, y).cost_analysis()
        if isinstance(analysis, list):  # older jaxlib: one dict per device
            analysis = analysis[0]
        return {
            "kind": "XLA cost analysis of the compiled step",
            "flops": analysis.get("flops"),
            "bytes_accessed": analysis.get("bytes accessed"),
        }
    if keras.backend.backend() == "torch":
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(3):
                model.train_on_batch(x, y)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        sort_by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort_by, row_limit=25)
        return {"kind": f"torch.profiler, 3 steps, sorted by {sort_by}", "table": table}
    return {"kind": "not profiled (use the TensorFlow profiler through TensorBoard)"}


def subprocess_memory(args, method, setting):
    """Runs one method's training steps in a fresh process; returns its memory record."""
    command = [
        sys.executable, __file__, "--measure-memory", method,
        "--image-size", str(setting.image_size), "--batch-size", str(setting.batch_size),
        "--backbone", setting.backbone, "--dtype", args.dtype, "--warmup", str(args.warmup),
    ]  # fmt: skip
    # TensorFlow counts the bytes of its CPU tensors only with the BFC allocator; it must be
    # chosen before TensorFlow is imported, hence the fresh process.
    environment = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true")
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    if result.returncode:
        raise SystemExit(f"measuring the memory of {method} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _measure_memory(args):
    """Prints {"peak", "held", "kind"} for one method as JSON: bytes at the step's peak and
    bytes held between steps (weights, optimizer state), as the backend counts them."""
    setting = model_settings(args)[0]
    model = build(args.measure_memory, setting.backbone, setting.image_size)
    x, y = batch(setting.batch_size, setting.image_size)
    for _ in range(max(args.warmup, 2)):
        model.train_on_batch(x, y)
    print(json.dumps(step_memory(model, x, y)))


def _torch_step_memory(model, x, y):
    import torch

    if not torch.cuda.is_available():
        return {"peak": None, "held": None, "kind": "not measured (PyTorch, CPU)"}
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model.train_on_batch(x, y)
    torch.cuda.synchronize()
    return {"peak": torch.cuda.max_memory_allocated(), "held": held, "kind": "torch.cuda, GPU"}


def _tensorflow_step_memory(model, x, y):
    import tensorflow as tf

    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    tf.config.experimental.reset_memory_stats(device)
    held = tf.config.experimental.get_memory_info(device)["current"]
    model.train_on_batch(x, y)
    peak = tf.config.experimental.get_memory_info(device)["peak"]
    return {"peak": peak, "held": held, "kind": f"TensorFlow allocator, {device}"}


def _jax_compiled_step(model, x, y):
    """The training step Keras's JAX trainer compiled for `model` on batches like `(x, y)`.

    Lowering the same function on arguments of the same shapes finds JAX's cached executable, so
    this costs no second compilation (measured: milliseconds after the first `train_on_batch`).
    The state is what the trainer passes to its jitted train_step (a private API of Keras).
    """
    import jax

    state = model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
        purge_model_variables=False,
    )
    return jax.jit(model.train_step, donate_argnums=0).lower(state, (x, y, None)).compile()


def _jax_step_memory(model, x, y):
    import jax

    analysis = _jax_compiled_step(model, x, y).memory_analysis()
    held = analysis.argument_size_in_bytes
    device = jax.devices()[0]
    return {
        "peak": held + analysis.temp_size_in_bytes,
        "held": held,
        "kind": f"XLA buffers of the compiled step, {device.platform} ({device.device_kind})",
    }


def machine_facts():
    import keras

    facts = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
    }
    if keras.backend.backend() == "jax":
        import jax

        facts["device"] = str(jax.devices()[0].device_kind)
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:  # an accelerator keeps the count
            facts["process_peak_device_memory_mb"] = stats["peak_bytes_in_use"] / 2**20
    if keras.backend.backend() == "torch":
        import torch

        facts["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return facts


class _Parser(argparse.ArgumentParser):
    """An argument parser that also refuses `--models` beside a custom model's flags."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        custom = [flag for name, flag in CUSTOM_FLAGS.items() if getattr(parsed, name) is not None]
        if parsed.models is not None and custom:
            self.error(
                f"--models measures the preset models, and {' and '.join(custom)} "
                f"describe{'s' if len(custom) == 1 else ''} one custom model instead: give "
                "--models or the custom model's flags, not both"
            )
        return parsed, rest


def build_parser():
    """Returns the argument parser of this script."""
    parser = _Parser(
        description=__doc__.split("\n\n")[0],
        epilog="--models (the presets) or --backbone/--image-size/--batch-size (one custom "
        "model), not both.",
    )
    presets = ", ".join(
        f"{name} ({p['backbone']}, {p['image_size']} px, batch {p['batch_size']})"
        for name, p in PRESETS.items()
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=tuple(PRESETS),
        help=f"the preset models to measure: {presets} (default: both)",
    )
    parser.add_argument(
        "--backbone",
        help="a custom model instead of the presets: a keras.applications model name, or "
        "SmallResNet (width 16) (default ResNet50 when --image-size or --batch-size is given)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        help="a custom model's image sizes, each measured in turn (default 64 224 when "
        "--backbone or --batch-size is given)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="a custom model's batch size (default 8 when --backbone or --image-size is given)",
    )
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed steps per method and kind (default 20)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed train_on_batch steps per method first (default 3); the fit rows start "
        f"with a first epoch of {FIRST_EPOCH_STEPS} steps instead",
    )
    parser.add_argument("--dtype", default="float32", help="Keras dtype policy")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one train_on_batch step of finetune and adafilter (PyTorch: "
        "torch.profiler's op table; JAX: XLA's cost analysis) and write it into the JSON",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=("tensorflow", "jax", "torch"),
        help="measure each of these Keras backends in turn, in its own process, and print one "
        "table (default: only the backend of KERAS_BACKEND)",
    )
    parser.add_argument("--measure-memory", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--output",
        type=pathlib.Path,
        default=pathlib.Path(__file__).parent / "results" / "step_time.json",
    )
    return parser


def compare_backends(args):
    """Runs this script once per backend (fresh processes) and prints one table of them all."""
    rows, machines, skipped = [], {}, {}
    for backend in args.backends:
        output = args.output.with_name(f"{args.output.stem}_{backend}.json")
        command = [sys.executable, __file__, *_flags(args), "--output", str(output)]
        print(f"{backend}: measuring ...", flush=True)
        result = subprocess.run(command, env=dict(os.environ, KERAS_BACKEND=backend))
        if result.returncode:
            raise SystemExit(f"the {backend} measurement failed (exit status {result.returncode})")
        report = json.loads(output.read_text())
        machines[backend] = report["machine"]
        skipped[backend] = report["fit_skipped"]
        rows += [dict(row, backend=backend) for row in report["results"]]
    print()
    print_table(rows, backend=True)
    report = {
        "machines": machines,
        "settings": vars(args) | {"output": str(args.output)},
        "fit_skipped": skipped,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


def _flags(args):
    """The measurement's settings as flags, for one backend's process."""
    flags = ["--models", *args.models] if args.models else []
    flags += ["--backbone", args.backbone] if args.backbone else []
    flags += ["--image-size", *map(str, args.image_size)] if args.image_size else []
    flags += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    flags += ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--dtype", args.dtype]
    return flags + (["--no-memory"] if args.no_memory else []) + (["--profile"] * args.profile)


def result_rows(setting, kind, medians, steps, dtype, memory=None, profiles=None, first_epoch=None):
    """The rows of one model and kind: one per method, timed against `finetune`."""
    memory, profiles, first_epoch = memory or {}, profiles or {}, first_epoch or {}
    rows = []
    for method in METHODS:
        record = memory.get(method, {})
        first = first_epoch.get(method)
        peak, held = record.get("peak"), record.get("held")
        finetune_peak = memory.get("finetune", {}).get("peak")
        rows.append(
            {
                "model": setting.label,
                "preset": setting.name,
                "backbone": setting.backbone,
                "image_size": setting.image_size,
                "batch_size": setting.batch_size,
                "dtype": dtype,
                "kind": kind,
                "method": method,
                "steps_timed": steps[method],
                "ms_per_step": 1000 * medians[method],
                "img_per_s": setting.batch_size / medians[method],
                "ratio_vs_finetune": medians[method] / medians["finetune"],
                "peak_memory_mb": None if peak is None else peak / 2**20,
                "held_memory_mb": None if held is None else held / 2**20,
                "memory_vs_finetune": None if peak is None else peak / finetune_peak,
                "memory_kind": record.get("kind"),
                "first_epoch_ms_per_step": None if first is None else 1000 * first,
                "first_epoch_vs_steady": None if first is None else first / medians[method],
                "profile": profiles.get(method),
            }
        )
    return rows


def measure_train_on_batch(args, setting):
    """The `train_on_batch` rows of one model, with memory (unless `--no-memory`) and profiles."""
    medians, memory, profiles = time_methods(args, setting)
    for method in METHODS:
        if method not in memory:
            memory[method] = {} if args.no_memory else subprocess_memory(args, method, setting)
    for method, profile in profiles.items():
        print(f"\nprofile of {method}, {setting.label}: {profile['kind']}")
        print(profile.get("table") or {k: v for k, v in profile.items() if k != "kind"})
    steps = dict.fromkeys(METHODS, args.repeats)
    return result_rows(setting, "train_on_batch", medians, steps, args.dtype, memory, profiles)


def measure(args):
    """Measures every model of `args`; returns the rows and why the `fit` rows were skipped
    (None when they were measured). The reason is printed once, on one line."""
    fit_skipped = fit_skip_reason(args.dtype)
    if fit_skipped:
        print(f"fit rows skipped: {fit_skipped}", flush=True)
    rows = []
    for setting in model_settings(args):
        print(f"{setting.label}: train_on_batch ...", flush=True)
        rows += measure_train_on_batch(args, setting)
        if fit_skipped is None:
            print(f"{setting.label}: fit ...", flush=True)
            medians, steps, first_epoch = time_fit(args, setting)
            rows += result_rows(setting, "fit", medians, steps, args.dtype, first_epoch=first_epoch)
    return rows, fit_skipped


def _ms(value):
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def print_table(rows, backend=False):
    """Prints `rows` as a Markdown table (with a backend column when `backend`)."""
    first = "| backend " if backend else ""
    print(
        f"{first}| model | kind | method | ms/step | img/s | time vs finetune | peak memory MB "
        "| held between steps MB | memory vs finetune |"
    )
    print("|---" * (9 + backend) + "|")
    for r in rows:
        memory = "| - | - | - |"
        if r["peak_memory_mb"] is not None:
            memory = (
                f"| {r['peak_memory_mb']:.0f} | {r['held_memory_mb']:.0f} "
                f"| {r['memory_vs_finetune']:.2f} |"
            )
        print(
            (f"| {r['backend']} " if backend else "")
            + f"| {r['model']} | {r['kind']} | {r['method']} | {_ms(r['ms_per_step'])} "
            f"| {r['img_per_s']:.1f} | {r['ratio_vs_finetune']:.2f} {memory}"
        )
    kinds = dict.fromkeys(r["memory_kind"] for r in rows if r["memory_kind"])
    for kind in kinds:
        print(f"memory: {kind}")
    first_epochs = [r for r in rows if r.get("first_epoch_ms_per_step") is not None]
    if first_epochs:
        print(
            f"\nfirst epoch ({FIRST_EPOCH_STEPS} steps of `fit` on a fresh model, compilation "
            "included) against the steady state"
        )
        print(f"{first}| model | method | first epoch ms/step | steady ms/step "
              "| first epoch vs steady |")  # fmt: skip
        print("|---" * (4 + backend) + "|---|")
        for r in first_epochs:
            print(
                (f"| {r['backend']} " if backend else "")
                + f"| {r['model']} | {r['method']} | {_ms(r['first_epoch_ms_per_step'])} "
                f"| {_ms(r['ms_per_step'])} | {r['first_epoch_vs_steady']:.2f} |"
            )


def main():
    args = build_parser().parse_args()
    if args.backends:
        compare_backends(args)
        return
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import adafilter_keras  # noqa: F401  (first: Keras imported with TensorFlow's lines filtered)

    # isort: split
    import keras

    keras.config.set_dtype_policy(args.dtype)
    if args.measure_memory:
        _measure_memory(args)
        return
    rows, fit_skipped = measure(args)
    facts = machine_facts()
    print(f"\n{args.dtype}, {facts['backend']} backend")
    print_table(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": facts,
        "settings": vars(args) | {"output": str(args.output)},
        "models": [dataclasses.asdict(setting) for setting in model_settings(args)],
        "fit_skipped": fit_skipped,
        "results": rows,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
