"""Training-step time and memory of AdaFilter against plain fine-tuning and feature extraction.

Usage:
    python benchmarks/step_time.py [--image-size 64 224] [--batch-size 8] [--repeats 10]
                                   [--backbone ResNet50|SmallResNet]
                                   [--dtype float32|mixed_bfloat16]
                                   [--backends tensorflow jax torch] [--output FILE]

In one process, for each image size, builds three models on the same backbone (weights=None,
random synthetic data, SGD with momentum, same compile settings):

* `finetune`: backbone + new head, every weight trains;
* `feature_extraction`: frozen backbone, only the head trains (the floor);
* `adafilter`: `adafilter_keras.wrap()` of the fine-tuning model.

It runs warm-up steps (compilation excluded), then `--repeats` rounds that time one
`train_on_batch` of each method in turn (alternating, so drifts of the machine hit all methods
alike), and reports the median ms/step, img/s and the ratio against `finetune`. Memory is
measured for each method after its warm-up steps, as the backend counts it:

* TensorFlow: in a fresh subprocess per method, the allocator's peak during one training step
  (CPU: with the BFC allocator, which keeps the count) and the bytes it held just before
  (weights, optimizer state, anything the runtime keeps);
* JAX (CPU or GPU): XLA's buffer sizes of the compiled training step, read in the timing process
  from the step Keras already compiled (no second compilation): arguments (the state) plus
  temporaries. On a GPU the device's peak bytes in use over the whole process is recorded too;
* PyTorch with a GPU: `torch.cuda`'s peak during one step and the bytes allocated just before, in
  the timing process; with a CPU it is not measured (the CPU allocator keeps no count).

`--profile` adds, after the timing, a profile of one training step of `finetune` and
`adafilter`: on PyTorch `torch.profiler`'s table of the ops that take the most time; on JAX
XLA's cost analysis of the compiled step (floating-point operations and bytes accessed). Prints a
Markdown table and writes JSON.

`--backends` runs the whole measurement once per Keras backend, each in its own process (one after
the other, so they do not compete for cores), and prints one table with a backend column.

On a JAX GPU the script turns off JAX's pre-allocation of most of the device's memory
(`XLA_PYTHON_CLIENT_PREALLOCATE=false`, unless set) so that memory is allocated as it is used.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

METHODS = ("finetune", "adafilter", "feature_extraction")
NUM_CLASSES = 100


def build(method, backbone, image_size):
    """One method's model on `backbone` (a `keras.applications` name or `SmallResNet`)."""
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
        model = ak.wrap(model, seed=0)
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


def time_methods(args, image_size):
    """Returns the median seconds per step of each method, and the in-process memory records."""
    import keras

    models = {m: build(m, args.backbone, image_size) for m in METHODS}
    x, y = batch(args.batch_size, image_size)
    memory = {}
    for method, model in models.items():
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
        if not args.no_memory and keras.backend.backend() != "tensorflow":
            memory[method] = step_memory(model, x, y)
    times = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for method, model in models.items():
            start = time.perf_counter()
            loss = model.train_on_batch(x, y)
            float(np.asarray(loss))  # wait for the step to finish (asynchronous backends)
            times[method].append(time.perf_counter() - start)
    profiles = {}
    if args.profile:
        profiles = {m: profile_step(models[m], x, y) for m in ("finetune", "adafilter")}
    return {m: statistics.median(t) for m, t in times.items()}, memory, profiles


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


def subprocess_memory(args, method, image_size):
    """Runs one method's training steps in a fresh process; returns its memory record."""
    command = [
        sys.executable, __file__, "--measure-memory", method, "--image-size", str(image_size),
        "--batch-size", str(args.batch_size), "--backbone", args.backbone, "--dtype", args.dtype,
        "--warmup", str(args.warmup),
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
    image_size = args.image_size[0]
    model = build(args.measure_memory, args.backbone, image_size)
    x, y = batch(args.batch_size, image_size)
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


def build_parser():
    """Returns the argument parser of this script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--backbone",
        default="ResNet50",
        help="a keras.applications model name, or SmallResNet (width 16; measure it with "
        "--image-size 32 --batch-size 32) (default ResNet50)",
    )
    parser.add_argument("--dtype", default="float32", help="Keras dtype policy")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one step of finetune and adafilter (PyTorch: torch.profiler's op "
        "table; JAX: XLA's cost analysis) and write it into the JSON",
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
    rows, machines = [], {}
    for backend in args.backends:
        output = args.output.with_name(f"{args.output.stem}_{backend}.json")
        command = [sys.executable, __file__, *_flags(args), "--output", str(output)]
        print(f"{backend}: measuring ...", flush=True)
        result = subprocess.run(command, env=dict(os.environ, KERAS_BACKEND=backend))
        if result.returncode:
            raise SystemExit(f"the {backend} measurement failed (exit status {result.returncode})")
        report = json.loads(output.read_text())
        machines[backend] = report["machine"]
        rows += [dict(row, backend=backend) for row in report["results"]]
    print("\n| backend | size | method | ms/step | img/s | time vs finetune |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['image_size']} | {r['method']} | {r['ms_per_step']:.0f} "
            f"| {r['img_per_s']:.1f} | {r['ratio_vs_finetune']:.2f} |"
        )
    report = {"machines": machines, "settings": vars(args) | {"output": str(args.output)}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report | {"results": rows}, indent=2) + "\n")
    print(f"\nwrote {args.output}")


def _flags(args):
    """The measurement's settings as flags, for one backend's process."""
    flags = ["--image-size", *map(str, args.image_size), "--batch-size", str(args.batch_size)]
    flags += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    flags += ["--backbone", args.backbone, "--dtype", args.dtype]
    return flags + (["--no-memory"] if args.no_memory else []) + (["--profile"] * args.profile)


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
    rows = []
    for image_size in args.image_size:
        medians, memory, profiles = time_methods(args, image_size)
        for method in METHODS:
            if method not in memory:
                memory[method] = (
                    {} if args.no_memory else subprocess_memory(args, method, image_size)
                )
        for method, profile in profiles.items():
            print(f"\nprofile of {method} at {image_size} px: {profile['kind']}")
            print(profile.get("table") or {k: v for k, v in profile.items() if k != "kind"})
        for method in METHODS:
            peak, held = memory[method].get("peak"), memory[method].get("held")
            rows.append(
                {
                    "method": method,
                    "image_size": image_size,
                    "batch_size": args.batch_size,
                    "dtype": args.dtype,
                    "ms_per_step": 1000 * medians[method],
                    "img_per_s": args.batch_size / medians[method],
                    "ratio_vs_finetune": medians[method] / medians["finetune"],
                    "peak_memory_mb": None if peak is None else peak / 2**20,
                    "held_memory_mb": None if held is None else held / 2**20,
                    "memory_vs_finetune": None
                    if peak is None
                    else peak / memory["finetune"]["peak"],
                    "memory_kind": memory[method].get("kind"),
                    "profile": profiles.get(method),
                }
            )
    facts = machine_facts()
    print(f"{args.backbone}, batch {args.batch_size}, {args.dtype}, {facts['backend']} backend")
    print(
        "| size | method | ms/step | img/s | time vs finetune | peak memory MB "
        "| held between steps MB | memory vs finetune |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        memory = "| - | - | - |"
        if r["peak_memory_mb"] is not None:
            memory = (
                f"| {r['peak_memory_mb']:.0f} | {r['held_memory_mb']:.0f} "
                f"| {r['memory_vs_finetune']:.2f} |"
            )
        print(
            f"| {r['image_size']} | {r['method']} | {r['ms_per_step']:.0f} | {r['img_per_s']:.1f} "
            f"| {r['ratio_vs_finetune']:.2f} {memory}"
        )
    if rows and rows[0]["memory_kind"]:
        print(f"memory: {rows[0]['memory_kind']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": facts,
        "settings": vars(args) | {"output": str(args.output)},
        "results": rows,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
