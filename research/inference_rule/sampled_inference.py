"""Is the `expected` inference rule what training optimized? A paired probe on the benchmark.

Training draws hard gates; `inference="expected"` feeds each layer the expected mix instead,
whose variance is lower (by `p (1 - p) (F - P)^2` per channel) than that of the hard mixes the
next layers' batch normalization saw. This script trains AdaFilter exactly as the benchmark does
with its larger regime at 4 epochs (`Benchmark.trained`) and scores each trained model three
ways: the expected rule (the default), the threshold rule, and the average of the softmax over
`--samples` forward passes with gates drawn as in training (batch normalization at inference).
If the sampled average is clearly better, the expected rule loses accuracy to that shift; if it
ties, it does not.

    python research/inference_rule/sampled_inference.py --output-dir research/inference_rule/results
"""

import argparse
import json
import pathlib
import sys

import keras
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adafilter_keras.layers import gate_controller  # noqa: E402
from adafilter_keras.statistics import mean_interval as paired  # noqa: E402
from adafilter_keras.transfer import runs as benchmark_runs  # noqa: E402
from adafilter_keras.transfer.tasks import REGIMES, TASKS  # noqa: E402


def sampled_probabilities(model, images, samples):
    """The softmax of `model` averaged over `samples` passes with training-time gate draws.

    Batch normalization stays at inference; only the gates are drawn, as `fit` draws them.
    """
    original = gate_controller.sample_gates

    def drawn(logits, **kwargs):
        kwargs["training"] = True
        return original(logits, **kwargs)

    gate_controller.sample_gates = drawn
    model.predict_function = None
    try:
        total = 0.0
        for _ in range(samples):
            logits = model.predict(images, batch_size=256, verbose=0)
            total = total + keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    finally:
        gate_controller.sample_gates = original
        model.predict_function = None
    return total / samples


def build_parser():
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", required=True, help="where runs.jsonl and sources go")
    parser.add_argument(
        "--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="default: all three"
    )
    parser.add_argument("--regime", default="few_shot", choices=REGIMES, help="default: few_shot")
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=list(benchmark_runs.OPTIMIZERS),
        choices=benchmark_runs.OPTIMIZERS,
        help="as in the benchmark (default: both)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="default: 0-4"
    )
    parser.add_argument("--samples", type=int, default=8, help="gate draws averaged per image")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)

    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    path = output / "runs.jsonl"
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            done[record["task"], record["optimizer"], record["seed"]] = record
    benchmark = benchmark_runs.Benchmark(benchmark_runs.BenchmarkSettings(), output)
    settings = benchmark.settings
    for task in args.tasks:
        for optimizer in args.optimizers:
            todo = [s for s in args.seeds if (task, optimizer, s) not in done]
            if not todo:
                continue
            runs = benchmark.trained(task, args.regime, "adafilter", optimizer, todo)
            for seed, (record, model, task_data) in zip(todo, runs, strict=True):
                _, validation = task_data.sample(args.regime, seed, settings.shots)
                for split, data in (("val", validation), ("test", task_data.test)):
                    probabilities = sampled_probabilities(
                        model, data[0].astype("float32") / 255.0, args.samples
                    )
                    record[f"sampled_{split}_accuracy"] = float(
                        np.mean(np.argmax(probabilities, -1) == data[1])
                    )
                record.pop("gates", None)
                done[task, optimizer, seed] = record
                with path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(
                    f"{task}/{optimizer}/seed{seed}: test expected "
                    f"{100 * record['test_accuracy']:.1f}, threshold "
                    f"{100 * record['inference_threshold']['test_accuracy']:.1f}, sampled "
                    f"{100 * record['sampled_test_accuracy']:.1f}",
                    flush=True,
                )

    print(
        f"\nPaired over tasks and seeds, points ± 95% interval:\n\n| optimizer | split | "
        f"sampled ({args.samples}) − expected | threshold − expected |"
    )
    print("|---|---|---|---|")
    for optimizer in args.optimizers:
        for split in ("val", "test"):
            records = [
                done[t, optimizer, s]
                for t in args.tasks
                for s in args.seeds
                if (t, optimizer, s) in done
            ]
            base = np.array([r[f"{split}_accuracy"] for r in records])
            sampled = np.array([r[f"sampled_{split}_accuracy"] for r in records])
            threshold = np.array([r["inference_threshold"][f"{split}_accuracy"] for r in records])
            cells = []
            for other in (sampled, threshold):
                mean, half = paired(list(100 * (other - base)))
                cells.append(f"{mean:+.2f} ± {half:.2f}")
            print(f"| {optimizer} | {split} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
