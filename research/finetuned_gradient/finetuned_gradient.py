"""Do random gates cost accuracy because the fine-tuned filters learn from fewer examples?

With gates at rate p, a fine-tuned filter gets the gradient of the examples whose gate picked it,
a fraction p of them: it learns as if its learning rate were p times smaller. This script runs
the transfer benchmark's gated methods with that taken away: the mix `P + g (F - P)` keeps its
forward value, but the fine-tuned branch F receives the gradient of every example, as if its
gate were 1 (a straight-through gradient for F; the gate and the pre-trained branch get their
usual gradients). If random gates then cost fine-tuning less, the cost was F's slower learning;
if not, it is the mixing with the pre-trained filters itself. Runs go to OUTPUT_DIR/runs.jsonl
(resumed); finetune runs are copied from --finetune-runs so that the pairs are the same.

    python research/finetuned_gradient/finetuned_gradient.py \
        --output-dir research/finetuned_gradient/results \
        --finetune-runs research/controller_defaults/results/normalized_controller --wrap-settings \
        '{"normalize_controller_inputs": true, "initial_rate": 0.5, "gradient_scale": 30}'
"""

import argparse
import json
import pathlib
import shutil


def build_parser():
    """The command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="where runs.jsonl is (resumed)")
    parser.add_argument(
        "--finetune-runs",
        required=True,
        help="a benchmark output directory whose finetune runs and source models to reuse",
    )
    parser.add_argument("--wrap-settings", default="{}", metavar="JSON", help="wrap() settings")
    parser.add_argument("--tasks", nargs="+", default=["digits", "classes", "domain"])
    parser.add_argument("--regimes", nargs="+", default=["few_shot"])
    parser.add_argument("--optimizers", nargs="+", default=["own", "sgd"])
    return parser


def mix_with_full_finetuned_gradient(pretrained, finetuned, gate):
    """`gate * finetuned + (1 - gate) * pretrained`, with the gradient of `finetuned` not gated."""
    from keras import ops

    gate = ops.cast(gate, pretrained.dtype)
    for _ in range(len(pretrained.shape) - 2):
        gate = ops.expand_dims(gate, axis=1)
    return finetuned + (1.0 - gate) * (pretrained - ops.stop_gradient(finetuned))


def mix_normalized_with_full_finetuned_gradient(
    pretrained, finetuned, pretrained_affine, finetuned_affine, gate
):
    """`GatedBatchNorm`'s mix (`mix_normalized`) with the same straight-through gradient."""
    (pretrained_scale, pretrained_offset), (finetuned_scale, finetuned_offset) = (
        pretrained_affine,
        finetuned_affine,
    )
    return mix_with_full_finetuned_gradient(
        pretrained * pretrained_scale + pretrained_offset,
        finetuned * finetuned_scale + finetuned_offset,
        gate,
    )


def mix_batch_normalized_with_full_finetuned_gradient(
    pretrained, finetuned, gate, moments, parameters, epsilon
):
    """`GatedBatchNorm`'s training mix (`mix_batch_normalized`), differentiated op by op (the
    batch moments included) with the same straight-through gradient."""
    from adafilter_keras.layers.gated_batch_norm import batch_moments
    from adafilter_keras.layers.mixed_batch_norm import normalization_affine

    affines = [
        normalization_affine(*batch_moments(values), epsilon, *weights)
        for values, weights in zip((pretrained, finetuned), parameters, strict=True)
    ]
    return mix_normalized_with_full_finetuned_gradient(pretrained, finetuned, *affines, gate)


def use_full_finetuned_gradient():
    """Makes the gated layers mix their branches with the mixes above, for this process.

    `AdaFilterConv2D` and `GatedBatchNorm` mix through the functions `mix_branches`,
    `mix_normalized` and (in training) `mix_batch_normalized` of their modules; these are
    swapped for the straight-through versions.
    """
    from adafilter_keras.layers import adafilter_conv2d, gated_batch_norm

    adafilter_conv2d.mix_branches = mix_with_full_finetuned_gradient
    gated_batch_norm.mix_normalized = mix_normalized_with_full_finetuned_gradient
    gated_batch_norm.mix_batch_normalized = mix_batch_normalized_with_full_finetuned_gradient


def main(argv=None):
    """Runs the gated methods with the straight-through fine-tuned gradient; prints the table."""
    args = build_parser().parse_args(argv)
    from adafilter_keras.transfer import Benchmark, BenchmarkSettings, report
    from adafilter_keras.transfer.command import wrap_settings

    use_full_finetuned_gradient()
    output, source = pathlib.Path(args.output_dir), pathlib.Path(args.finetune_runs)
    output.mkdir(parents=True, exist_ok=True)
    # The finetune runs' source models if their directory kept them; otherwise the benchmark
    # pre-trains them from seed 0 (the same models where those runs were made by the same code).
    if not (output / "sources").exists() and (source / "sources").is_dir():
        shutil.copytree(source / "sources", output / "sources")
    if not (output / "runs.jsonl").exists():
        lines = (source / "runs.jsonl").read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["method"] == "finetune"]
        (output / "runs.jsonl").write_text("".join(f"{line}\n" for line in kept))
    settings = BenchmarkSettings(
        tasks=tuple(args.tasks),
        regimes=tuple(args.regimes),
        methods=("finetune", "stochastic", "adafilter"),
        optimizers=tuple(args.optimizers),
        variant=wrap_settings(args.wrap_settings),
    )
    records = Benchmark(settings, output).run()
    note = (
        "The fine-tuned branch gets the gradient of every example (straight-through), "
        f"wrap() settings {args.wrap_settings}."
    )
    print(report.write(records, output, note))


if __name__ == "__main__":
    main()
