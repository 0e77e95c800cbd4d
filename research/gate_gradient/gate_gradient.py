"""Where do the gates stand at the end of training, and what does their gradient say?

Trains AdaFilter exactly as the transfer benchmark does with its larger regime at 4 epochs (one
cell, `Benchmark.trained`, the benchmark's source models) and then, on the run's training images
in the benchmark's batches of 16 (training-mode forward passes: noisy hard gates, batch
statistics), records for every gated layer, per example and filter, the gate, the gradient of
the loss with respect to the gate (`dL/dg`: negative means the fine-tuned filter would lower the
loss) and the gate's logit. It prints, per layer, the mean of `dL/dg` against its per-example
size, how many filters' mean gradient is significant (|t| > 2), and how the logits split into
the heads' biases (one per filter) and the part that depends on the input. With several seeds it
also prints how well the filters' rates agree between seeds: every seed starts from the same
source model, so filter k is the same pre-trained filter in every run, and a rate that the data
sets should come back in another run, while one that the gradient's noise sets should not; and
the same for the part of the gates that depends on the input: each (test image, filter)
inference gate's deviation from its filter's mean, compared between seeds on the task's fixed
test images. Results (with each filter's rate and mean gradient) go to
OUTPUT_DIR/gate_gradient.json, the agreement between seeds to OUTPUT_DIR/between_seeds.json.
TensorFlow only.

    python research/gate_gradient/gate_gradient.py \\
        --output-dir research/gate_gradient/results/domain_large_own \\
        --task domain --regime large --seeds 0 1 2
"""

import argparse
import contextlib
import json
import pathlib
import shutil
import sys

import keras
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adafilter_keras.inspection import controller_or_none, gate_model  # noqa: E402
from adafilter_keras.layers import gate_controller  # noqa: E402
from adafilter_keras.transfer import runs as benchmark_runs  # noqa: E402
from adafilter_keras.transfer.tasks import EXTRA_TASKS, REGIMES, TASKS  # noqa: E402


@contextlib.contextmanager
def recorded_gates():
    """Inside the block, every gate the controllers draw is appended, with its logits."""
    original = gate_controller.sample_gates
    recorded = []

    def sample_gates(logits, **options):
        gates = original(logits, **options)
        recorded.append((gates, logits))
        return gates

    gate_controller.sample_gates = sample_gates
    try:
        yield recorded
    finally:
        gate_controller.sample_gates = original


def gate_gradients(model, images, labels, batch_size):
    """Per gated layer: gates, per-example `dL/dg` and logits, each `(examples, filters)`.

    Training-mode forward passes over `images` in batches of `batch_size`, with the model's
    softmax cross-entropy from logits; `dL/dg` is the gradient of the batch's summed loss with
    respect to each example's gate (batch statistics couple the examples of a batch).
    """
    import tensorflow as tf

    batches = []
    for start in range(0, len(images), batch_size):
        with recorded_gates() as recorded, tf.GradientTape() as tape:
            logits = model(images[start : start + batch_size], training=True)
            loss = tf.reduce_sum(
                keras.losses.sparse_categorical_crossentropy(
                    labels[start : start + batch_size], logits, from_logits=True
                )
            )
        gradients = tape.gradient(loss, [gates for gates, _ in recorded])
        batches.append(
            [
                (gates.numpy(), gradient.numpy(), gate_logits.numpy())
                for (gates, gate_logits), gradient in zip(recorded, gradients, strict=True)
            ]
        )
    return [
        tuple(np.concatenate([batch[layer][part] for batch in batches]) for part in range(3))
        for layer in range(len(batches[0]))
    ]


def summarize(layer, bias):
    """One gated layer's statistics from `gate_gradients`' `(gates, gradient, logits)`."""
    gates, gradient, logits = layer
    mean = gradient.mean(0)
    t = mean / (gradient.std(0) / np.sqrt(len(gradient)) + 1e-12)
    return {
        "fraction_finetuned": float(gates.mean()),
        "mean_gradient": float(gradient.mean()),
        "mean_abs_gradient": float(np.abs(gradient).mean()),
        "filters_t_below_minus2": float(np.mean(t < -2)),
        "filters_t_above_2": float(np.mean(t > 2)),
        "mean_logit": float(logits.mean()),
        "mean_bias": float(np.mean(bias)),
        "logit_sd_over_examples": float(logits.std(0).mean()),
        "bias_sd_over_filters": float(np.std(bias)),
        "filter_fraction_finetuned": [float(v) for v in gates.mean(0)],
        "filter_mean_gradient": [float(v) for v in mean],
    }


def agreement_between_seeds(results):
    """Per gated layer, the mean Pearson correlation of the filters' rates over pairs of seeds.

    Args:
        results: One entry per seed, each with `layers`, a list of `summarize` dicts.

    Returns:
        One float per layer (nan where a seed's rates do not vary), or `[]` with fewer than
        two seeds.
    """
    if len(results) < 2:
        return []
    return [
        _mean_pairwise_correlation([r["layers"][i]["filter_fraction_finetuned"] for r in results])
        for i in range(len(results[0]["layers"]))
    ]


def _mean_pairwise_correlation(arrays):
    """The mean over pairs of `arrays` of their Pearson correlation (nan if one is constant)."""
    arrays = [np.ravel(a) for a in arrays]
    return float(
        np.mean(
            [
                np.corrcoef(a, b)[0, 1] if a.std() > 0 and b.std() > 0 else np.nan
                for j, a in enumerate(arrays)
                for b in arrays[j + 1 :]
            ]
        )
    )


def inference_gates(model, images):
    """Per gated layer, the inference gates `(examples, filters)` of the benchmark's model."""
    gates = gate_model(model).predict(images, batch_size=256, verbose=0)
    return gates if isinstance(gates, list) else [gates]


def input_dependence_between_seeds(gates_by_seed):
    """Per gated layer, how well the input-dependent part of the gates agrees between seeds.

    Args:
        gates_by_seed: One entry per seed, each a list (one per layer) of inference gates
            `(examples, filters)` on the same images.

    Returns:
        Per layer, the mean over pairs of seeds of the Pearson correlation, over every
        (example, filter), of the gate minus its filter's mean over the examples; `[]` with
        fewer than two seeds.
    """
    if len(gates_by_seed) < 2:
        return []
    return [
        _mean_pairwise_correlation(
            [np.asarray(seed[i]) - np.asarray(seed[i]).mean(0) for seed in gates_by_seed]
        )
        for i in range(len(gates_by_seed[0]))
    ]


def build_parser():
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", required=True, help="where gate_gradient.json goes")
    parser.add_argument(
        "--sources",
        help="a benchmark's sources/ folder to copy the pre-trained models from (else they are "
        "pre-trained here, as the benchmark does)",
    )
    parser.add_argument("--task", default="domain", choices=TASKS + EXTRA_TASKS)
    parser.add_argument("--regime", default="large", choices=REGIMES)
    parser.add_argument("--optimizer", default="own", choices=benchmark_runs.OPTIMIZERS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--examples", type=int, default=2048, help="training images to read (default: 2048)"
    )
    return parser


def main(argv=None):
    """Trains each seed, records the gates' gradients, prints and writes the table."""
    args = build_parser().parse_args(argv)
    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    # The source models of --sources; without it the benchmark pre-trains them from seed 0 here
    # (the same models as another directory's where its runs were made by the same code).
    if args.sources and not (output / "sources").exists():
        shutil.copytree(args.sources, output / "sources")
    settings = benchmark_runs.BenchmarkSettings(
        tasks=(args.task,), regimes=(args.regime,), methods=("adafilter",)
    )
    runs = benchmark_runs.Benchmark(settings, output).trained(
        args.task, args.regime, "adafilter", args.optimizer, args.seeds
    )
    results, test_gates = [], []
    for seed, (record, model, task) in zip(args.seeds, runs, strict=True):
        train, _ = task.sample(args.regime, seed, settings.shots)
        images = train[0][: args.examples].astype("float32") / 255.0
        layers = gate_gradients(model, images, train[1][: args.examples], settings.batch_size)
        controller = controller_or_none(model)
        biases = [keras.ops.convert_to_numpy(head.bias) for head in controller.heads]
        summary = [summarize(layer, bias) for layer, bias in zip(layers, biases, strict=True)]
        results.append({"seed": seed, "test_accuracy": record["test_accuracy"], "layers": summary})
        test_gates.append(inference_gates(model, task.test[0].astype("float32") / 255.0))
        print(f"seed {seed}: test {100 * record['test_accuracy']:.1f} %")
    (output / "gate_gradient.json").write_text(json.dumps(results, indent=1) + "\n")
    between_seeds = agreement_between_seeds(results)
    input_part = input_dependence_between_seeds(test_gates)
    (output / "between_seeds.json").write_text(
        json.dumps(
            {
                "seeds": args.seeds,
                "filters_rates_r": between_seeds,
                "input_dependent_part_r": input_part,
                "test_gates_sd_over_examples": [
                    float(np.mean([np.asarray(seed[i]).std(0).mean() for seed in test_gates]))
                    for i in range(len(test_gates[0]))
                ],
            },
            indent=1,
        )
        + "\n"
    )
    print(
        f"{args.task} / {args.regime} / {args.optimizer}, mean over seeds {args.seeds}:\n"
        "| layer | fine-tuned | mean dL/dg | mean abs dL/dg | filters t < -2 | filters t > 2 "
        "| mean logit | mean head bias | logit s.d. over examples | bias s.d. over filters "
        "| filters' rates, r between seeds | r of rate and mean dL/dg "
        "| input-dependent part, r between seeds |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for i in range(len(results[0]["layers"])):
        row = {
            k: np.mean([r["layers"][i][k] for r in results])
            for k in results[0]["layers"][i]
            if not k.startswith("filter_")
        }
        follows = np.mean(
            [
                np.corrcoef(
                    r["layers"][i]["filter_fraction_finetuned"],
                    r["layers"][i]["filter_mean_gradient"],
                )[0, 1]
                for r in results
            ]
        )
        seeds_r = f"{between_seeds[i]:+.2f}" if between_seeds else "—"
        input_r = f"{input_part[i]:+.2f}" if input_part else "—"
        print(
            f"| {i} | {row['fraction_finetuned']:.2f} | {row['mean_gradient']:+.1e} "
            f"| {row['mean_abs_gradient']:.1e} | {row['filters_t_below_minus2']:.2f} "
            f"| {row['filters_t_above_2']:.2f} | {row['mean_logit']:+.2f} "
            f"| {row['mean_bias']:+.2f} | {row['logit_sd_over_examples']:.2f} "
            f"| {row['bias_sd_over_filters']:.2f} | {seeds_r} | {follows:+.2f} | {input_r} |"
        )


if __name__ == "__main__":
    main()
