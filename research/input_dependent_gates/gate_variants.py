"""Gate settings tried against the defaults on one transfer task, paired with fine-tuning.

Runs the transfer benchmark engine (`adafilter_keras.transfer`) for finetune, stochastic and
adafilter under each variant of `wrap()`'s gate settings, then prints, per variant, AdaFilter's
paired differences against finetune and against random gates (validation and test) and its gate
instruments. Runs are appended to OUTPUT_DIR/runs.jsonl and reused (finetune is shared by all
variants), so a second call resumes.

    python research/input_dependent_gates/gate_variants.py --task mixed \
        --output-dir research/input_dependent_gates/results/mixed_task
"""

import argparse
import json
import sys

# wrap()'s earlier defaults, on top of which the variants below were measured (so that the
# commands in research/input_dependent_gates/README.md still name the runs they reported).
OLD_DEFAULTS = {"initial_rate": 0.85, "gradient_scale": 30.0, "normalize_controller_inputs": False}
# Investigated on the mixed task (research/input_dependent_gates): can warm-up, a lower
# starting rate or a stronger controller gradient make the gates depend on the input?
_CHANGES = {
    "old_defaults": {},
    "warmup75": {"gate_warmup_steps": 75},
    "warmup75_rate05": {"gate_warmup_steps": 75, "initial_rate": 0.5},
    "scale300": {"gradient_scale": 300.0},
    "normalized": {"normalize_controller_inputs": True},
    "normalized_rate05": {"normalize_controller_inputs": True, "initial_rate": 0.5},
    "normalized_t03": {"normalize_controller_inputs": True, "temperature": 0.3},
    # The control: the same controller that (almost) does not learn. Input dependence it shows
    # comes from its random initial weights, not from training.
    "normalized_rate05_unlearned": {
        "normalize_controller_inputs": True,
        "initial_rate": 0.5,
        "gradient_scale": 0.001,
    },
}
VARIANTS = {
    **{name: {**OLD_DEFAULTS, **changes} for name, changes in _CHANGES.items()},
    "defaults": {},  # wrap()'s defaults now (normalized, start 0.5, gradient scale 300)
}


def build_parser():
    """The command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mixed", help="transfer task (default: %(default)s)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS),
        default=list(VARIANTS),
        help="gate settings to run (default: all)",
    )
    parser.add_argument(
        "--optimizer", choices=("own", "sgd"), default="sgd", help="(default: %(default)s)"
    )
    parser.add_argument(
        "--regime", choices=("few_shot", "large"), default="few_shot", help="(default: %(default)s)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--output-dir",
        default="runs/gate_variants",
        help="where runs.jsonl is written and resumed from (default: %(default)s)",
    )
    return parser


def main(argv=None):
    """Runs the variants and prints the table."""
    args = build_parser().parse_args(argv)
    from adafilter_keras import statistics
    from adafilter_keras.transfer import Benchmark, BenchmarkSettings

    print("| variant | adafilter − finetune (val / test) | adafilter − stochastic (val / test) "
          "| fine-tuned | disagreement | spread | group gap |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in args.variants:
        settings = BenchmarkSettings(
            tasks=(args.task,),
            regimes=(args.regime,),
            methods=("finetune", "stochastic", "adafilter"),
            optimizers=(args.optimizer,),
            seeds=tuple(args.seeds),
            variant=VARIANTS[name],
        )
        runs = {
            (r["method"], r["seed"]): r
            for r in Benchmark(settings, args.output_dir, stream=sys.stderr).run()
        }

        def paired(method, split, other, runs=runs):
            return statistics.mean_interval(
                [100 * (runs[method, s][split] - runs[other, s][split]) for s in args.seeds]
            )

        cells = [
            " / ".join(
                "{:+.2f} ± {:.2f}".format(*paired("adafilter", split, other))
                for split in ("val_accuracy", "test_accuracy")
            )  # fmt: skip
            for other in ("finetune", "stochastic")
        ]
        gates = [g for s in args.seeds for g in runs["adafilter", s]["gates"]]
        means = [
            sum(g[key] for g in gates) / len(gates)
            for key in ("fraction_finetuned", "disagreement", "probability_spread")
        ]
        # Only for a task of two kinds of image (mixed): how differently the gates treat them.
        gaps = [g for s in args.seeds for g in runs["adafilter", s].get("gate_group_gap", [])]
        gap = f"{sum(gaps) / len(gaps):.4f}" if gaps else "—"
        print(
            f"| {name} {json.dumps(VARIANTS[name])} | {cells[0]} | {cells[1]} | "
            f"{means[0]:.2f} | {means[1]:.3f} | {means[2]:.4f} | {gap} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
