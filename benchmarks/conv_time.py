"""How long a convolution's three parts take on the current Keras backend, by feature-map size.

Usage:
    KERAS_BACKEND=jax python benchmarks/conv_time.py [--sizes 1 2 3 4 7] [--channels 512]
        [--kernel-size 3] [--batch-size 8] [--repeats 20] [--output FILE]

A training step runs each convolution in three parts: the forward pass, the gradient of its input
and the gradient of its kernel. A gated layer's frozen pre-trained kernel adds a forward pass and
an input gradient, not a kernel gradient, so the way a backend's time splits between the three
parts decides what AdaFilter's second convolution costs (docs/performance.md).

For each square feature-map size (batch `--batch-size`, `--channels` in and out, a
`--kernel-size` kernel, stride 1, "same" padding, float32, channels last) the script times each
part on its own, compiled as the backend compiles a training step (JAX: `jax.jit`; TensorFlow:
`tf.function`; PyTorch: eager): the median of `--repeats` rounds that call the three parts in
turn, after 3 warm-up rounds. It prints a Markdown table with each part's ms and GFLOP/s (each
part counted as `2 * batch * size**2 * kernel_size**2 * channels**2` floating-point operations,
the taps that fall on the padding included, so on maps smaller than the kernel the rate is a
nominal one) and the second convolution's share, `(forward + input gradient) / (all three)`:
what a gated layer adds to the layer's convolution time in fine-tuning. It writes the same rows
as JSON:
`{"machine", "settings", "rows": [...]}`.
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))

PARTS = ("forward", "input_gradient", "kernel_gradient")


def parts(backend):
    """`{part: function(inputs, kernel, upstream) -> tensor}` of one convolution on `backend`,
    each compiled as that backend compiles a training step. The two gradients are those of
    `sum(conv(inputs, kernel) * upstream)`."""
    from keras import ops

    def conv(inputs, kernel):
        return ops.conv(inputs, kernel, padding="same")

    if backend == "jax":
        import jax

        return {
            "forward": jax.jit(lambda x, w, dy: conv(x, w)),
            "input_gradient": jax.jit(lambda x, w, dy: jax.vjp(lambda a: conv(a, w), x)[1](dy)[0]),
            "kernel_gradient": jax.jit(lambda x, w, dy: jax.vjp(lambda k: conv(x, k), w)[1](dy)[0]),
        }
    if backend == "tensorflow":
        import tensorflow as tf

        def gradient(of_input):
            def part(x, w, dy):
                with tf.GradientTape() as tape:
                    watched = x if of_input else w
                    tape.watch(watched)
                    y = conv(x, w)
                return tape.gradient(y, watched, output_gradients=dy)

            return tf.function(part)

        return {
            "forward": tf.function(lambda x, w, dy: conv(x, w)),
            "input_gradient": gradient(True),
            "kernel_gradient": gradient(False),
        }
    if backend == "torch":
        import torch

        def gradient(of_input):
            def part(x, w, dy):
                watched = (x if of_input else w).detach().requires_grad_()
                y = conv(watched, w) if of_input else conv(x, watched)
                (result,) = torch.autograd.grad(y, watched, dy)
                return result

            return part

        # PyTorch differentiates eagerly, so its gradient parts include a forward pass; the
        # table's forward row says how much of that is.
        return {
            "forward": lambda x, w, dy: conv(x, w),
            "input_gradient": gradient(True),
            "kernel_gradient": gradient(False),
        }
    raise SystemExit(f"unknown Keras backend {backend!r}: use tensorflow, jax or torch")


def tensors(batch_size, size, channels, kernel_size, seed=0):
    """The inputs, kernel and upstream gradient of one measurement, as backend tensors."""
    from keras import ops

    rng = np.random.default_rng(seed)
    shapes = [
        (batch_size, size, size, channels),
        (kernel_size, kernel_size, channels, channels),
        (batch_size, size, size, channels),
    ]
    return [ops.convert_to_tensor(rng.standard_normal(s).astype("float32")) for s in shapes]


def median_times(functions, arguments, repeats, warmup=3):
    """Median seconds of each of `functions` (a dict) over `repeats` rounds calling each in turn."""
    from keras import ops

    times = {name: [] for name in functions}
    for round_index in range(warmup + repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            ops.convert_to_numpy(function(*arguments))  # waits for asynchronous backends
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(args, backend):
    """The table's rows: one per feature-map size."""
    functions = parts(backend)
    rows = []
    for size in args.sizes:
        arguments = tensors(args.batch_size, size, args.channels, args.kernel_size)
        medians = median_times(functions, arguments, args.repeats)
        flops = 2 * args.batch_size * size**2 * args.kernel_size**2 * args.channels**2
        row = {"size": size, "gflop": flops / 1e9}
        for part in PARTS:
            row[f"{part}_ms"] = 1000 * medians[part]
            row[f"{part}_gflops"] = flops / 1e9 / medians[part]
        row["second_convolution_share"] = (medians["forward"] + medians["input_gradient"]) / sum(
            medians.values()
        )
        rows.append(row)
        print(f"  {size} px: {_cells(row)}", flush=True)
    return rows


def _cells(row):
    return (
        " | ".join(
            f"{row[f'{part}_ms']:.2f} ms ({row[f'{part}_gflops']:.0f} GFLOP/s)" for part in PARTS
        )
        + f" | {row['second_convolution_share']:.2f}"
    )


def build_parser():
    parser = argparse.ArgumentParser(
        description=(
            "Time of a convolution's forward pass, input gradient and kernel gradient on the "
            "current Keras backend (KERAS_BACKEND), by feature-map size."
        ),
        epilog="The second convolution's share is (forward + input gradient) / (all three).",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1, 2, 3, 4, 7],
        help="square feature-map sizes in pixels (default: 1 2 3 4 7, ResNet50's last stage "
        "at 32, 64, 96, 128 and 224 px images)",
    )
    parser.add_argument("--channels", type=int, default=512, help="channels in and out (512)")
    parser.add_argument("--kernel-size", type=int, default=3, help="kernel size (3)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size (8)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (20)")
    parser.add_argument(
        "--output", help="the JSON file (default benchmarks/results/conv_time_<backend>.json)"
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("channels", "kernel_size", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.sizes) < 1:
        raise SystemExit("--sizes must be at least 1 pixel each")
    import keras
    import step_time  # the machine facts, as the other benchmarks record them

    backend = keras.backend.backend()
    output = pathlib.Path(
        args.output or pathlib.Path(__file__).parent / "results" / f"conv_time_{backend}.json"
    )
    print(
        f"{backend}: {args.kernel_size}x{args.kernel_size} convolution, {args.channels} channels, "
        f"batch {args.batch_size}, sizes {args.sizes} px ...",
        flush=True,
    )
    rows = measure(args, backend)
    print(f"\n{backend}: ms per call (GFLOP/s)")
    print(
        "| feature map | forward | input gradient | kernel gradient | second convolution's share |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['size']}x{row['size']} | {_cells(row)} |")
    settings = {k: getattr(args, k) for k in ("sizes", "channels", "kernel_size", "batch_size")}
    settings["repeats"] = args.repeats
    report = {"machine": step_time.machine_facts(), "settings": settings, "rows": rows}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
