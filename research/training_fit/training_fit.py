"""Does AdaFilter lose to fine-tuning by overfitting, by fitting more slowly, or at inference?

Trains `finetune` and `adafilter` exactly as the benchmark does (`Benchmark.trained`;
`--large-epochs 4` is the benchmark's larger regime at 4 epochs, bit for bit) and records, per
run, the loss and accuracy on the run's own training images (scored at inference, after the last
step) next to validation and test. For AdaFilter it also scores the trained model with every
learned gate forced to the fine- tuned filter at inference (`forced_finetuned_*`): if the
pre-trained choices at inference were what costs, forcing them away would recover the gap. Runs
go to OUTPUT_DIR/runs.jsonl (resumed); the table pairs the methods by seed.

    python research/training_fit/training_fit.py --output-dir research/training_fit/results \\
        --sources benchmarks/results/transfer_epochs4_mixed_versions/sources --large-epochs 4 8
"""

import argparse
import contextlib
import dataclasses
import json
import pathlib
import shutil
import sys

import keras
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adafilter_keras.inspection import controller_or_none  # noqa: E402
from adafilter_keras.statistics import mean_interval as paired  # noqa: E402
from adafilter_keras.transfer import runs as benchmark_runs  # noqa: E402
from adafilter_keras.transfer.tasks import REGIMES, TASKS  # noqa: E402

METHODS = ("finetune", "adafilter")


@contextlib.contextmanager
def forced_gates(model, value):
    """Every gate of `model`'s controller is `value` at inference inside the block.

    Training-time gates are untouched; the model's compiled predict function is dropped on the
    way in and out, so that `predict` sees the forced gates and then the controller's own rule.
    """
    controller = controller_or_none(model)
    if controller is None:
        raise ValueError(f"Model '{model.name}' has no gate controller: nothing to force.")
    original = controller.call

    def call(inputs, states=None, index=0, training=None):
        gate, hidden, cell_state = original(inputs, states=states, index=index, training=training)
        if not training:
            gate = keras.ops.full(keras.ops.shape(gate), value, dtype=gate.dtype)
        return gate, hidden, cell_state

    controller.call = call
    model.predict_function = None
    try:
        yield model
    finally:
        del controller.call  # back to the class's method
        model.predict_function = None


def fit_of(model, data):
    """Mean cross-entropy and accuracy of `model` on `data` (images uint8, labels), at inference."""
    logits = model.predict(data[0].astype("float32") / 255.0, batch_size=256, verbose=0)
    loss = keras.losses.sparse_categorical_crossentropy(data[1], logits, from_logits=True)
    return {
        "loss": float(np.mean(keras.ops.convert_to_numpy(loss))),
        "accuracy": float(np.mean(np.argmax(logits, -1) == data[1])),
    }


def build_parser():
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", required=True, help="where runs.jsonl and table.md go")
    parser.add_argument(
        "--sources",
        help="a benchmark's sources/ folder to copy the pre-trained models from (else they are "
        "pre-trained here, as the benchmark does)",
    )
    parser.add_argument("--task", default="domain", choices=TASKS, help="default: domain")
    parser.add_argument("--regime", default="large", choices=REGIMES, help="default: large")
    parser.add_argument(
        "--optimizer",
        default="own",
        choices=benchmark_runs.OPTIMIZERS + benchmark_runs.EXTRA_OPTIMIZERS,
        help="as in the benchmark (default: own)",
    )
    parser.add_argument(
        "--large-epochs",
        nargs="+",
        type=int,
        default=[4],
        help="epochs of a larger-regime run; 4 is the benchmark's 4-epoch table (default: 4)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    return parser


def _key(args, epochs, method, seed):
    return json.dumps([args.task, args.regime, args.optimizer, epochs, method, seed])


def main(argv=None):
    """Runs what is not in runs.jsonl yet; prints and writes the paired table."""
    args = build_parser().parse_args(argv)
    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if args.sources and not (output / "sources").exists():
        shutil.copytree(args.sources, output / "sources")
    path = output / "runs.jsonl"
    done = {}
    if path.exists():
        done = {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}
    epochs_list = args.large_epochs if args.regime == "large" else [None]
    for epochs in epochs_list:
        settings = benchmark_runs.BenchmarkSettings()
        if epochs is not None:
            settings = dataclasses.replace(settings, large_epochs=epochs)
        for method in METHODS:
            todo = [s for s in args.seeds if _key(args, epochs, method, s) not in done]
            if not todo:
                continue
            runs = benchmark_runs.Benchmark(settings, output).trained(
                args.task, args.regime, method, args.optimizer, todo
            )
            for seed, (record, model, task) in zip(todo, runs, strict=True):
                train, validation = task.sample(args.regime, seed, settings.shots)
                fit = fit_of(model, train)
                record.update(train_loss=fit["loss"], train_accuracy=fit["accuracy"])
                record["large_epochs"] = epochs
                if method == "adafilter":
                    with forced_gates(model, 1.0):
                        record["forced_finetuned_val_accuracy"] = fit_of(model, validation)[
                            "accuracy"
                        ]
                        record["forced_finetuned_test_accuracy"] = fit_of(model, task.test)[
                            "accuracy"
                        ]
                        record["forced_finetuned_train_loss"] = fit_of(model, train)["loss"]
                record["key"] = _key(args, epochs, method, seed)
                done[record["key"]] = record
                with path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(
                    f"{args.task}/{args.regime}/{args.optimizer}/{epochs} epochs/{method}/"
                    f"seed {seed}: train loss {fit['loss']:.3f}, train "
                    f"{100 * fit['accuracy']:.1f}, test {100 * record['test_accuracy']:.1f}",
                    flush=True,
                )
    keys = [_key(args, e, m, s) for e in epochs_list for m in METHODS for s in args.seeds]
    table = write_table(args, [done[key] for key in keys])
    print(table)


def write_table(args, records):
    """table.md: per number of epochs, each method's fit and the paired differences."""
    lines = [
        f"{args.task}, {args.regime}, optimizer {args.optimizer}; mean over seeds "
        f"(paired difference ± 95% interval)",
        "",
        "| epochs | seeds | train loss finetune / adafilter / adafilter, gates forced to "
        "fine-tuned | train accuracy % finetune / adafilter | adafilter − finetune, val / test "
        "(points) | gates forced to fine-tuned − adafilter, val / test (points) |",
        "|---|---|---|---|---|---|",
    ]
    for epochs in sorted({r["large_epochs"] for r in records}, key=lambda e: e or 0):
        rows = {(r["method"], r["seed"]): r for r in records if r["large_epochs"] == epochs}
        seeds = sorted({s for _, s in rows})
        fine, ada = ([rows[m, s] for s in seeds] for m in METHODS)

        def mean(runs, field, scale=1.0):
            return scale * float(np.mean([r[field] for r in runs]))

        def gap(first, first_field, second, second_field):
            values = [
                100 * (a[first_field] - b[second_field]) for a, b in zip(first, second, strict=True)
            ]
            return "{:+.2f} ± {:.2f}".format(*paired(values))

        lines.append(
            f"| {epochs} | {len(seeds)} | {mean(fine, 'train_loss'):.3f} / "
            f"{mean(ada, 'train_loss'):.3f} / {mean(ada, 'forced_finetuned_train_loss'):.3f} | "
            f"{mean(fine, 'train_accuracy', 100):.1f} / "
            f"{mean(ada, 'train_accuracy', 100):.1f} | "
            f"{gap(ada, 'val_accuracy', fine, 'val_accuracy')} / "
            f"{gap(ada, 'test_accuracy', fine, 'test_accuracy')} | "
            f"{gap(ada, 'forced_finetuned_val_accuracy', ada, 'val_accuracy')} / "
            f"{gap(ada, 'forced_finetuned_test_accuracy', ada, 'test_accuracy')} |"
        )
    table = "\n".join(lines)
    (pathlib.Path(args.output_dir) / "table.md").write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
