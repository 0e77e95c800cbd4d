"""Does the training-time gate estimator cost AdaFilter accuracy? A paired probe on the benchmark.

In training, `sample_gates` draws hard gates with logistic noise (straight-through binary Gumbel),
so the rest of the network learns under random switching between the two branches, as under
dropout, and the inference rule (`expected`) never saw the noise. This script trains AdaFilter as
the benchmark does with another estimator patched in for training (inference unchanged):

* `expected`: no noise, no hard decision: the gate is `sigmoid(logit)` in training too, the same
  function as the `expected` inference rule (training and inference compute the same network,
  and the gate's gradient is exact rather than straight-through);
* `deterministic`: the hard decision without noise, `1[logit > 0]`, with the relaxed gate's
  gradient (straight-through);
* `relaxed`: the noisy relaxed gate `sigmoid((logit + noise) / temperature)` as the forward value
  (binary Concrete, no hard decision).

Finetune runs, AdaFilter's default runs and the source models are read from --baseline-runs (a
benchmark output directory), so every difference is paired run by run. Runs go to
OUTPUT_DIR/runs.jsonl (resumed); the table pairs the probe with fine-tuning and with the default
estimator.

    python benchmarks/gate_estimators.py --estimator expected \
        --output-dir benchmarks/results/gate_estimators/expected \
        --baseline-runs benchmarks/results/transfer
"""

import argparse
import json
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adafilter_keras.layers import gate_controller, gate_sampling  # noqa: E402
from adafilter_keras.transfer import runs as benchmark_runs  # noqa: E402
from adafilter_keras.transfer.report import overall, pair_methods  # noqa: E402
from adafilter_keras.transfer.tasks import REGIMES, TASKS  # noqa: E402


def expected(logits, *, temperature, seed, training, inference="expected"):
    """The gate's mean, `sigmoid(logits)`, in training as at inference (no noise)."""
    del temperature, seed, training, inference
    return gate_sampling.gate_probability(logits)


def deterministic(logits, *, temperature, seed, training, inference="expected"):
    """`1[logits > 0]` forward, the gradient of `sigmoid(logits / temperature)`."""
    from keras import ops

    del seed, training, inference
    logits = ops.cast(logits, "float32")
    soft = ops.sigmoid(logits / temperature)
    return ops.cast(logits > 0, "float32") + (soft - ops.stop_gradient(soft))


def relaxed(logits, *, temperature, seed, training, inference="expected"):
    """`sigmoid((logits + logistic noise) / temperature)`: noisy, but not hard."""
    from keras import ops, random

    del training, inference
    logits = ops.cast(logits, "float32")
    uniform = random.uniform(
        ops.shape(logits), minval=1e-6, maxval=1.0 - 1e-6, dtype="float32", seed=seed
    )
    return ops.sigmoid((logits + ops.log(uniform) - ops.log1p(-uniform)) / temperature)


ESTIMATORS = {"expected": expected, "deterministic": deterministic, "relaxed": relaxed}


def patched(estimator):
    """`sample_gates` with `estimator` in training and the library's rules at inference."""
    original = gate_sampling.sample_gates

    def sample_gates(logits, *, temperature, seed, training, inference="expected"):
        if not training:
            return original(
                logits, temperature=temperature, seed=seed, training=training, inference=inference
            )
        return estimator(
            logits, temperature=temperature, seed=seed, training=training, inference=inference
        )

    return sample_gates


def build_parser():
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--estimator", required=True, choices=sorted(ESTIMATORS), help="the training estimator"
    )
    parser.add_argument("--output-dir", required=True, help="where runs.jsonl goes (resumed)")
    parser.add_argument(
        "--baseline-runs",
        required=True,
        help="a benchmark output directory whose finetune and adafilter runs and source models "
        "to pair with",
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=list(benchmark_runs.OPTIMIZERS),
        choices=benchmark_runs.OPTIMIZERS,
        help="as in the benchmark (default: both)",
    )
    return parser


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv=None):
    """Runs AdaFilter with the patched estimator and prints the paired table."""
    args = build_parser().parse_args(argv)
    output, baseline = pathlib.Path(args.output_dir), pathlib.Path(args.baseline_runs)
    if not (baseline / "runs.jsonl").exists():
        raise SystemExit(f"No runs.jsonl in --baseline-runs {baseline}: run the benchmark first.")
    output.mkdir(parents=True, exist_ok=True)
    if not (output / "sources").exists():
        shutil.copytree(baseline / "sources", output / "sources")
    gate_controller.sample_gates = patched(ESTIMATORS[args.estimator])
    settings = benchmark_runs.BenchmarkSettings(
        tasks=tuple(args.tasks),
        regimes=tuple(args.regimes),
        methods=("adafilter",),
        optimizers=tuple(args.optimizers),
    )
    probe = benchmark_runs.Benchmark(settings, output).run()
    keys = {record["key"] for record in probe}
    cells = {(r["task"], r["regime"], r["optimizer"]) for r in probe}
    base = [
        r
        for r in _records(baseline / "runs.jsonl")
        if r["method"] in ("finetune", "adafilter")
        and (r["task"], r["regime"], r["optimizer"]) in cells
        and (r["method"] == "finetune" or r["key"] in keys)
    ]
    probe = [dict(r, method="probe") for r in probe]
    print(f"AdaFilter trained with the {args.estimator!r} estimator, points (mean ± 95% interval)")
    print("| optimizer | split | probe − finetune | probe − default estimator | cells |")
    print("|---|---|---|---|---|")
    for optimizer in args.optimizers:
        for metric in ("val_accuracy", "test_accuracy"):
            columns = []
            for other in ("finetune", "adafilter"):
                rows = [
                    row
                    for row in pair_methods(probe + base, "probe", other, metric)
                    if row["optimizer"] == optimizer
                ]
                columns.append(rows)
            means = [overall(rows) for rows in columns]
            per_cell = ", ".join(
                f"{row['task']} {row['regime']} {row['difference']:+.1f}" for row in columns[0]
            )
            print(
                f"| {optimizer} | {metric.split('_')[0]} | {means[0][0]:+.2f} ± {means[0][1]:.2f} "
                f"| {means[1][0]:+.2f} ± {means[1][1]:.2f} | vs finetune: {per_cell} |"
            )


if __name__ == "__main__":
    main()
