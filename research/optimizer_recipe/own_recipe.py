"""Which part of the harness recipe costs AdaFilter against fine-tuning?

Under the benchmark's `own` optimizer (the harness recipe: warm-up and cosine decay to zero,
the head at 10x the rate, L2 decay 1e-4 on kernels) AdaFilter trails fine-tuning; under one
plain `SGD(0.01, momentum=0.9)` or Keras's `Adam()` it does not. This script runs `finetune`
and `adafilter` under the recipe with one ingredient taken away at a time, so that each
paired difference can be read against the recipe's own:

* `constant_rate`: the learning rate stays at its peak after the warm-up (no cosine decay);
* `no_weight_decay`: no L2 decay on kernels;
* `no_head_multiplier`: the head at the backbone's rate.

Runs go to OUTPUT_DIR/<ingredient>/runs.jsonl (resumed); the recipe's own runs are read from
--baseline-runs (a benchmark output directory) and paired by seed.

    python research/optimizer_recipe/own_recipe.py \\
        --output-dir research/optimizer_recipe/results/domain_large \\
        --baseline-runs benchmarks/results/transfer_epochs4 --tasks domain --regimes large
"""

import argparse
import dataclasses
import itertools
import json
import pathlib
import shutil

# Each ingredient: the `runs.own_recipe` flag that takes it away.
INGREDIENTS = {
    "constant_rate": "cosine",
    "no_weight_decay": "weight_decay",
    "no_head_multiplier": "head_multiplier",
}


def build_parser():
    """The command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="where the runs go (resumed)")
    parser.add_argument(
        "--baseline-runs",
        required=True,
        help="a benchmark output directory: its `own` runs are the recipe's, its source models "
        "are reused",
    )
    parser.add_argument(
        "--ingredients", nargs="+", choices=list(INGREDIENTS), default=list(INGREDIENTS)
    )
    parser.add_argument("--tasks", nargs="+", default=["domain"])
    parser.add_argument("--regimes", nargs="+", default=["large"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    return parser


def recipe_without(ingredient):
    """An `optimizer_factory` for `Benchmark`: the `own` recipe with `ingredient` taken away."""
    from adafilter_keras.transfer.runs import own_recipe

    flags = {INGREDIENTS[ingredient]: False}
    return lambda cell: own_recipe(cell.steps, cell.method, **flags)


def differences(records, baseline):
    """Per (task, regime): adafilter − finetune, seed by seed, for `records` and `baseline`."""

    def by(rows):
        return {(r["task"], r["regime"], r["method"], r["seed"]): r for r in rows}

    rows, base = by(records), by(baseline)
    out = []
    for task, regime in sorted({(t, g) for t, g, _, _ in rows}):
        seeds = sorted(
            s
            for t, g, m, s in rows
            if (t, g, m) == (task, regime, "adafilter")
            and (task, regime, "finetune", s) in rows
            and (task, regime, "adafilter", s) in base
            and (task, regime, "finetune", s) in base
        )

        line = {"task": task, "regime": regime, "seeds": seeds}
        for split in ("val", "test"):
            metric, cell = f"{split}_accuracy", (task, regime)
            line[f"ingredient_{split}"] = _gap(
                rows, "adafilter", rows, "finetune", cell, seeds, metric
            )
            line[f"recipe_{split}"] = _gap(base, "adafilter", base, "finetune", cell, seeds, metric)
            line[f"finetune_change_{split}"] = _gap(
                rows, "finetune", base, "finetune", cell, seeds, metric
            )
        out.append(line)
    return out


def _gap(first, first_method, second, second_method, cell, seeds, metric):
    """Mean and 95% half-width of `first`'s method minus `second`'s, paired by seed, in points."""
    from adafilter_keras.statistics import mean_interval as paired

    return paired(
        [
            100
            * (first[(*cell, first_method, s)][metric] - second[(*cell, second_method, s)][metric])
            for s in seeds
        ]
    )


def main(argv=None):
    """Runs each ingredient's finetune and adafilter; prints and writes the paired table."""
    args = build_parser().parse_args(argv)
    from adafilter_keras.transfer import Benchmark, BenchmarkSettings
    from adafilter_keras.transfer import runs as benchmark_runs

    output, source = pathlib.Path(args.output_dir), pathlib.Path(args.baseline_runs)
    recipe = dataclasses.replace(
        BenchmarkSettings(), seeds=tuple(args.seeds), large_seeds=tuple(args.seeds)
    )
    done = Benchmark(recipe, source).done()
    baseline = [
        done[key]
        for task, regime, method in itertools.product(
            args.tasks, args.regimes, ("finetune", "adafilter")
        )
        for seed in args.seeds
        if (key := benchmark_runs.run_key(recipe, task, regime, method, "own", seed)) in done
    ]
    lines = [
        "| without | task | regime | seeds | adafilter − finetune, recipe (val / test) "
        "| adafilter − finetune, without it (val / test) | finetune change (val / test) |",
        "|---|---|---|---|---|---|---|",
    ]
    results = {}
    for ingredient in args.ingredients:
        directory = output / ingredient
        directory.mkdir(parents=True, exist_ok=True)
        # The baseline's source models if it kept them; otherwise the benchmark pre-trains them
        # from seed 0 (the same models where the baseline's runs were made by the same code).
        if not (directory / "sources").exists() and (source / "sources").is_dir():
            shutil.copytree(source / "sources", directory / "sources")
        settings = BenchmarkSettings(
            tasks=tuple(args.tasks),
            regimes=tuple(args.regimes),
            methods=("finetune", "adafilter"),
            optimizers=("own",),
            seeds=tuple(args.seeds),
            large_seeds=tuple(args.seeds),
        )
        records = Benchmark(settings, directory, optimizer_factory=recipe_without(ingredient)).run()
        results[ingredient] = differences(records, baseline)
        for line in results[ingredient]:
            cells = [
                " / ".join(_shown(line[f"{name}_{split}"]) for split in ("val", "test"))
                for name in ("recipe", "ingredient", "finetune_change")
            ]
            lines.append(
                f"| {ingredient} | {line['task']} | {line['regime']} | {len(line['seeds'])} | "
                + " | ".join(cells)
                + " |"
            )
    table = "\n".join(lines)
    (output / "table.md").write_text(table + "\n")
    (output / "results.json").write_text(json.dumps(results, indent=1))
    print(table)


def _shown(values):
    mean, half_width = values
    return f"{mean:+.2f} ± {half_width:.2f}"


if __name__ == "__main__":
    main()
