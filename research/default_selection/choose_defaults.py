"""Which wrap() defaults to keep: the selection suite's candidates against fine-tuning.

Reads the runs `run.sh` recorded (one `adafilter-keras benchmark --suite selection` per
candidate) and ranks the candidates on **validation** accuracy only: per optimizer, the mean
over cells (task x backbone) of the paired difference against fine-tuning with its 95% interval,
the worst seed of any cell, and how many seeds fall more than 3 points below the same seed's
fine-tuning. Test accuracy is not read.

    python research/default_selection/choose_defaults.py [research/default_selection/results]

Writes `selection.md` and `selection.json` next to the runs.
"""

import argparse
import json
import pathlib

from adafilter_keras.statistics import overall
from adafilter_keras.transfer import report
from adafilter_keras.transfer.runs import RESULTS

METRIC = "val_accuracy"


# The gate settings of the 0.1 tables, against which a candidate is named.
BEFORE = {
    "temperature": 1.0,
    "pretrained_bn": "adapt",
    "initial_rate": 0.5,
    "gradient_scale": 300.0,
    "inference": "expected",
    "gate_warmup_steps": 0,
    "normalize_controller_inputs": True,
    "normalize_controller_gradient": False,
}


def label(variant):
    """A candidate's name: the settings of its run key that differ from `BEFORE`."""
    changed = {
        name: value for name, value in {**BEFORE, **variant}.items() if BEFORE.get(name) != value
    }
    if not changed:
        return "0.1 defaults"
    return ", ".join(f"{name}={value}" for name, value in sorted(changed.items()))


def rank(records):
    """Per candidate and optimizer: mean ± interval over cells, worst seed, seeds below -3."""
    finetune = [r for r in records if r["method"] == "finetune"]
    gated = [r for r in records if r["method"] == "adafilter"]
    candidates = sorted({json.dumps(_resolved(r), sort_keys=True) for r in gated})
    rows = []
    for text in candidates:
        variant = json.loads(text)
        runs = [r for r in gated if _resolved(r) == variant]
        cells = [c for c in report.compare(finetune + runs, METRIC) if c["method"] == "adafilter"]
        for optimizer in sorted({c["optimizer"] for c in cells}) + ["all"]:
            chosen = [c for c in cells if optimizer in ("all", c["optimizer"])]
            mean, interval = overall(chosen)
            worst = min(chosen, key=lambda c: c["worst"])
            where = f"{worst['task']} {worst['optimizer']} seed {worst['worst_seed']}"
            below = _seeds_below(finetune, runs, optimizer)
            rows.append(
                {
                    "candidate": label(variant),
                    "variant": variant,
                    "optimizer": optimizer,
                    "cells": len(chosen),
                    "mean": mean,
                    "interval": interval,
                    "worst": worst["worst"],
                    "worst_cell": where,
                    "seeds_below_3": below,
                    "cells_worse": sum(c["difference"] + c["interval"] < 0 for c in chosen),
                }
            )
    return rows


def _resolved(record):
    # The settings the run was made with, as its key holds them (the flag's dict in
    # `record["variant"]` is relative to the defaults of its day).
    return json.loads(record["key"])["variant"]


def _seeds_below(finetune, runs, optimizer, limit=report.WORST_SEED_LIMIT):
    base = {
        (report.where(r), r["optimizer"], r["seed"]): r[METRIC]
        for r in finetune
        if optimizer in ("all", r["optimizer"])
    }
    return sum(
        100 * (r[METRIC] - base[key]) < -limit
        for r in runs
        if (key := (report.where(r), r["optimizer"], r["seed"])) in base
    )


def markdown(rows):
    lines = [
        "| candidate | optimizer | cells | validation − finetune (mean ± 95%) | worst seed "
        "(cell) | seeds < −3 | cells worse beyond interval |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['candidate']} | {row['optimizer']} | {row['cells']} | "
            f"{row['mean']:+.2f} ± {row['interval']:.2f} | {row['worst']:+.1f} "
            f"({row['worst_cell']}) | {row['seeds_below_3']} | {row['cells_worse']} |"
        )
    return "\n".join(lines) + "\n"


def build_parser():
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "output_dir",
        nargs="?",
        default="research/default_selection/results",
        help="where run.sh wrote runs.jsonl (default: %(default)s)",
    )
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    directory = pathlib.Path(args.output_dir)
    path = directory / RESULTS
    if not path.exists():
        parser.error(f"no runs in {path}: run research/default_selection/run.sh first")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = rank(records)
    table = markdown(rows)
    (directory / "selection.md").write_text(table)
    (directory / "selection.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table)
    return rows


if __name__ == "__main__":
    main()
