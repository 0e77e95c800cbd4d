"""Where a training step's time goes: each backend's own profiler, AdaFilter against fine-tuning.

Usage:
    KERAS_BACKEND=torch python benchmarks/profile_step.py [--models small resnet50] [--steps 5]
                                                          [--top 20] [--output FILE]

For each model (the presets of `benchmarks/step_time.py`: `small` is `SmallResNet` at 32 px,
batch 32; `resnet50` is ResNet50 at 64 px, batch 8) it builds the `finetune` and `adafilter`
models of `step_time.py` (same backbone, synthetic batch, SGD with momentum), runs 3 warm-up
`train_on_batch` steps (compilation excluded), then profiles `--steps` steps with the backend's
own profiler:

* PyTorch: `torch.profiler`; the ops are its ATen ops (`aten::convolution`, ...), self CPU time;
* TensorFlow: the TensorFlow profiler (`tf.profiler.experimental`); the ops are the executor's
  kernels by op type (`Conv2D`, `FusedBatchNormV3`, ...), self time;
* JAX: `jax.profiler`; the ops are the compiled step's XLA kernels by kind (`convolution`,
  `fusion`, `dot`, ...), self time.

Every op's self time (its time minus the time of the ops it contains) is summed per op name over
the profiled steps and divided by their number. For each model the script prints a Markdown table
of the `--top` op names by AdaFilter's extra time over fine-tuning (ms per step and calls per step
of each method), then the totals. Where the runtime runs ops side by side (XLA on a CPU), their
self times add up to more than the step's wall time.

Then, unless `--no-ablations`, the parts of a gated layer are timed by taking them away: median
ms of `--repeats` alternating `train_on_batch` steps of `finetune`, `adafilter`, `adafilter`
with random gates (`policy="random"`: no controller, no gate network to train) and `adafilter`
with a frozen pre-trained branch normalization (`pretrained_bn="frozen"`: no batch moments for
that branch), and `adafilter` with one convolution per gated layer (each `AdaFilterConv2D` runs
its fine-tuned convolution only and its pre-trained branch is a copy of that output: the cost of
the second convolution, forward and input gradient, with the rest of the layer unchanged), each
against fine-tuning.

Writes the same figures as JSON: `{"machine", "settings", "models": [{"model", "ops": [...],
"totals": {...}, "ablations": {...}}]}`.
"""

import argparse
import collections
import json
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import step_time  # noqa: E402  (the benchmark's models, batches and presets)

PROFILED = ("finetune", "adafilter")


def convolve_once(model):
    """Makes every `AdaFilterConv2D` of `model` run its fine-tuned convolution only; its
    pre-trained branch becomes a copy of that output. Returns `model`."""
    from keras import ops

    from adafilter_keras import AdaFilterConv2D
    from adafilter_keras.layers.adafilter_conv2d import _convolve
    from adafilter_keras.wrapping.graph import sublayers

    def call(layer, inputs, gate=None):
        (finetuned,) = _convolve(
            inputs,
            (layer.finetuned_kernel,),
            strides=layer.strides,
            padding=layer.padding,
            data_format=layer.data_format,
            dilation_rate=layer.dilation_rate,
        )
        if layer.use_bias:
            finetuned = finetuned + layer.finetuned_bias
        finetuned = layer.activation(finetuned)
        return finetuned if gate is not None else (ops.copy(finetuned), finetuned)

    for layer in sublayers(model):
        if isinstance(layer, AdaFilterConv2D):
            layer.call = call.__get__(layer)
    return model


# The ablations, each taking one part of a gated layer away: `wrap()` settings, and a change of
# the wrapped model.
ABLATIONS = {
    "adafilter": ({}, None),
    "random_gates": ({"policy": "random"}, None),
    "frozen_pretrained_bn": ({"pretrained_bn": "frozen"}, None),
    "one_convolution": ({}, convolve_once),
}


def profile(model, x, y, steps):
    """`{op name: (seconds, calls)}` summed over `steps` profiled `train_on_batch` steps."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        return _torch_profile(model, x, y, steps)
    with tempfile.TemporaryDirectory() as directory:
        if backend == "tensorflow":
            import tensorflow as tf

            tf.profiler.experimental.start(directory)
            _steps(model, x, y, steps)
            tf.profiler.experimental.stop()
        else:
            import jax

            jax.profiler.start_trace(directory)
            _steps(model, x, y, steps)
            jax.profiler.stop_trace()
        (path,) = pathlib.Path(directory).rglob("*.xplane.pb")
        return xplane_self_times(path.read_bytes(), backend)


def _steps(model, x, y, steps):
    import numpy as np

    for _ in range(steps):
        float(np.asarray(model.train_on_batch(x, y)))


def _torch_profile(model, x, y, steps):
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        _steps(model, x, y, steps)
    return {
        event.key: (event.self_cpu_time_total / 1e6, event.count)
        for event in profiler.key_averages()
    }


# Names of host events that are not ops: the profiler's and runtime's own spans.
_NOT_OPS = re.compile(r"^(\$|TfrtModePjRt|PjitFunction|ThunkExecutor|Execute|ExecuteHelper|"
                      r"EagerExecute|EagerLocalExecute|ExecutorState|FunctionRun|__inference_|"
                      r"ProcessFunctionLibraryRuntime|MemoryAllocation|PjRt|CommonPjRt|"
                      r"KernelAndDevice|one_step_on_data$|EagerCopyToDevice$)")  # fmt: skip


def op_name(name, backend):
    """The op name a profiler event is summed under: its op type (TensorFlow: the part after the
    last `:` of `scope/name:Type`) or its XLA kernel kind (JAX: `fusion.12` is `fusion`)."""
    if backend == "tensorflow":
        return name.rsplit(":", 1)[-1] if ":" in name else name
    return re.sub(r"[._]\d+$", "", name.split(" ")[0])


def xplane_self_times(data, backend):
    """`{op name: (seconds, calls)}` of the host events of a serialized `XSpace` (the file
    `*.xplane.pb` of the TensorFlow and JAX profilers): per thread, events nest by time, and an
    event's self time is its duration minus its children's."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as error:  # a JAX machine without TensorFlow
        raise SystemExit(
            "reading the profile needs TensorFlow's `xplane_pb2` (the TensorFlow and JAX "
            "profilers write XSpace files): install tensorflow, or profile with "
            "KERAS_BACKEND=torch"
        ) from error

    space = xplane_pb2.XSpace()
    space.ParseFromString(data)
    totals = collections.defaultdict(lambda: [0.0, 0])
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        names = {key: metadata.name for key, metadata in plane.event_metadata.items()}
        for line in plane.lines:
            events = sorted(
                ((e.offset_ps, e.offset_ps + e.duration_ps, names.get(e.metadata_id, "?"))
                 for e in line.events),
                key=lambda e: (e[0], -e[1]),
            )  # fmt: skip
            for name, self_ps in _self_times(events):
                if _NOT_OPS.match(name):
                    continue
                total = totals[op_name(name, backend)]
                total[0] += self_ps / 1e12
                total[1] += 1
    return {name: tuple(value) for name, value in totals.items()}


def _self_times(events):
    """`(name, self duration)` of nested `(start, end, name)` events sorted by start."""
    stack = []  # [start, end, name, children's duration]
    for start, end, name in events:
        while stack and stack[-1][1] <= start:
            yield _close(stack)
        if stack:
            stack[-1][3] += end - start
        stack.append([start, end, name, 0])
    while stack:
        yield _close(stack)


def _close(stack):
    start, end, name, children = stack.pop()
    return name, max(end - start - children, 0)


def ablations(setting, repeats):
    """Median seconds of alternating `train_on_batch` steps of fine-tuning and each ablation."""
    x, y = step_time.batch(setting.batch_size, setting.image_size)
    models = {"finetune": step_time.build("finetune", setting.backbone, setting.image_size)}
    for name, (changes, change_model) in ABLATIONS.items():
        model = step_time.build("adafilter", setting.backbone, setting.image_size, **changes)
        models[name] = model if change_model is None else change_model(model)
    for model in models.values():
        _steps(model, x, y, 3)
    return step_time.median_step_times(models, x, y, repeats)


def print_ablations(label, medians):
    print(f"\n{label}: train_on_batch without a part of the gated layers")
    print("| variant | ms/step | vs finetune |")
    print("|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {1000 * seconds:.1f} | {seconds / medians['finetune']:.2f} |")


def compare(profiles, steps):
    """The rows of one model: per op name, each method's ms and calls per step, sorted by
    AdaFilter's extra time; and the totals per method."""
    names = set().union(*profiles.values())
    rows = []
    for name in names:
        row = {"op": name}
        for method, ops in profiles.items():
            seconds, calls = ops.get(name, (0.0, 0))
            row[f"{method}_ms"] = 1000 * seconds / steps
            row[f"{method}_calls"] = calls / steps
        row["extra_ms"] = row["adafilter_ms"] - row["finetune_ms"]
        rows.append(row)
    rows.sort(key=lambda r: -r["extra_ms"])
    totals = {
        method: 1000 * sum(seconds for seconds, _ in ops.values()) / steps
        for method, ops in profiles.items()
    }
    return rows, totals


def print_rows(label, rows, totals):
    print(f"\n{label}: ops by AdaFilter's extra time, ms per step (calls per step)")
    print("| op | finetune ms | adafilter ms | extra ms |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['op']} | {r['finetune_ms']:.2f} ({r['finetune_calls']:.0f}) "
            f"| {r['adafilter_ms']:.2f} ({r['adafilter_calls']:.0f}) | {r['extra_ms']:+.2f} |"
        )
    print(
        f"| **all ops** | {totals['finetune']:.1f} | {totals['adafilter']:.1f} "
        f"| {totals['adafilter'] - totals['finetune']:+.1f} |"
    )


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The backend is KERAS_BACKEND's (tensorflow, jax or torch).",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=tuple(step_time.PRESETS),
        default=list(step_time.PRESETS),
        help="the preset models of step_time.py to profile (default: all)",
    )
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (default 5)")
    parser.add_argument("--top", type=int, default=20, help="op names shown (default 20)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="alternating steps per ablation (default 20)",
    )
    parser.add_argument(
        "--no-ablations", action="store_true", help="profile only; time no ablation"
    )
    parser.add_argument(
        "--output",
        type=pathlib.Path,
        help="the JSON file (default benchmarks/results/profile_step_<backend>.json)",
    )
    return parser


def main():
    args = build_parser().parse_args()
    if min(args.steps, args.top, args.repeats) < 1:
        raise SystemExit("--steps, --top and --repeats must be at least 1")
    import adafilter_keras  # noqa: F401  (first: Keras imported with TensorFlow's lines filtered)

    # isort: split
    import keras

    backend = keras.backend.backend()
    output = args.output or (
        pathlib.Path(__file__).parent / "results" / f"profile_step_{backend}.json"
    )
    report = {
        "machine": step_time.machine_facts(),
        "settings": {
            "models": args.models,
            "steps": args.steps,
            "top": args.top,
            "repeats": None if args.no_ablations else args.repeats,
        },
        "models": [],
    }
    for name in args.models:
        setting = step_time.ModelSetting(name, **step_time.PRESETS[name])
        print(f"{setting.label}: profiling {args.steps} steps ...", flush=True)
        x, y = step_time.batch(setting.batch_size, setting.image_size)
        profiles = {}
        for method in PROFILED:
            model = step_time.build(method, setting.backbone, setting.image_size)
            _steps(model, x, y, 3)
            start = time.perf_counter()
            profiles[method] = profile(model, x, y, args.steps)
            print(f"  {method}: {time.perf_counter() - start:.1f} s profiled", flush=True)
        rows, totals = compare(profiles, args.steps)
        print_rows(f"{backend}, {setting.label}", rows[: args.top], totals)
        # The JSON keeps the 50 ops of most extra time (the table shows --top of them).
        record = {"model": setting.label, "ops": rows[:50], "totals": totals}
        if not args.no_ablations:
            print(f"{setting.label}: timing the ablations ...", flush=True)
            medians = ablations(setting, args.repeats)
            print_ablations(f"{backend}, {setting.label}", medians)
            record["ablations"] = {
                name: {"ms_per_step": 1000 * seconds, "vs_finetune": seconds / medians["finetune"]}
                for name, seconds in medians.items()
            }
        report["models"].append(record)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
