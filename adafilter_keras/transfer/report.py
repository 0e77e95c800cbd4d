"""Paired comparisons, tables and a figure from the transfer benchmark's run records."""

import collections
import itertools
import json
import math
import statistics

from adafilter_keras.statistics import cell_summary, format_difference, overall

BASELINE = "finetune"
MATCHED = "stochastic_matched"
# Robustness: no seed worse than the same seed's fine-tuning by more than this (points); every
# layer's fine-tuned fraction within `GATE_RANGE`; the gates depend on the input
# (disagreement >= `MIN_DISAGREEMENT`) in most layers.
WORST_SEED_LIMIT = 3.0
GATE_RANGE = (0.1, 0.9)
MIN_DISAGREEMENT = 0.02


def where(record):
    """The task a record's cell is on, with its backbone when it names one (`digits resnet32@32`).

    Runs of the 0.1 tables' backbone name none: their label is the task alone.
    """
    backbone = record.get("backbone")
    return f"{record['task']} {backbone}" if backbone else record["task"]


def compare(records, metric="test_accuracy", baseline=BASELINE):
    """Per (task, regime, optimizer, method): the paired difference against `baseline`.

    Each method's run is paired with the baseline's run of the same task, regime, optimizer and
    seed (same training images, order and head initialisation). Differences are in percentage
    points of accuracy (positive: the method is better).

    Returns:
        A list of dicts with `task, regime, optimizer, method` and the fields of
        `statistics.cell_summary`: `seeds`, `accuracy` (mean %), `std`, `difference` (mean paired
        difference), `interval` (95% half-width), `worst` and `worst_seed`.
    """
    by_cell = collections.defaultdict(dict)
    for record in records:
        cell = (where(record), record["regime"], record["optimizer"], record["method"])
        by_cell[cell][record["seed"]] = 100.0 * record[metric]
    rows = []
    for (task, regime, optimizer, method), values in by_cell.items():
        base = by_cell.get((task, regime, optimizer, baseline), {})
        row = {"task": task, "regime": regime, "optimizer": optimizer, "method": method}
        row.update(cell_summary(values, base))
        rows.append(row)
    return rows


def pair_methods(records, method, other, metric="test_accuracy"):
    """Like `compare` for one pair: `method - other` per (task, regime, optimizer).

    Only the cells where both methods have a run of the same seed (a benchmark of some methods
    may have no `other` runs at all).
    """
    kept = [r for r in records if r["method"] in (method, other)]
    renamed = [dict(r, method=BASELINE if r["method"] == other else r["method"]) for r in kept]
    return [
        row
        for row in compare(renamed, metric)
        if row["method"] == method and not math.isnan(row["difference"])
    ]


def gate_summary(records, method="adafilter"):
    """Per (task, regime, optimizer): the instruments of `method`'s gates.

    Averaged over layers and seeds, over the last quarter of training.
    """
    keys = ("fraction_finetuned", "disagreement", "probability_spread", "train_inference_agreement")
    groups = collections.defaultdict(list)
    for record in records:
        if record["method"] == method and record.get("gates"):
            groups[(where(record), record["regime"], record["optimizer"])].append(record["gates"])
    return {
        cell: {
            key: statistics.fmean(
                statistics.fmean(layer[key] for layer in gates) for gates in runs_gates
            )
            for key in keys
        }
        for cell, runs_gates in groups.items()
    }


def targets(records, method="adafilter"):
    """The benchmark's two targets for `method`, read from the runs, per optimizer and split.

    * `versus_finetune`: not worse than fine-tuning (non-inferiority, not "at least as good":
      a tie within the noise meets it). `mean` is the mean over cells of the paired
      difference, `interval` its 95% half-width. `level` holds when that interval reaches zero
      or above (not worse on the mean by more than the noise); `ahead` when the
      mean itself is >= 0; `worse_cells` lists the cells worse than fine-tuning by more than
      their own interval. `met` is `level` with no such cell. Where a cell has a single
      paired seed (no interval), `level` and `met` are None (undetermined) unless a cell is
      already worse by more than its interval.
    * `versus_random`: learned gates better than random gates drawn at the starting rate
      (`method - stochastic`; `stochastic` draws at the gated methods' `initial_rate`, 0.5
      under the defaults). `met`
      when the mean exceeds its interval (None when undetermined). `disagreement` is the
      range over cells of how often two examples' gates differ (`gate_summary`): how much
      the gates depend on the input.

    Returns:
        A list of dicts, one per (target, optimizer, split), for the cells where both methods
        were run; empty when `method` was not.
    """
    verdicts = []
    gates = gate_summary(records, method)
    for split, metric in (("test", "test_accuracy"), ("validation", "val_accuracy")):
        against = {
            "versus_finetune": [r for r in compare(records, metric) if r["method"] == method],
            "versus_random": pair_methods(records, method, "stochastic", metric),
        }
        for target, rows in against.items():
            for optimizer in sorted({r["optimizer"] for r in rows}):
                cells = [
                    r
                    for r in rows
                    if r["optimizer"] == optimizer and not math.isnan(r["difference"])
                ]
                if not cells:
                    continue
                mean, interval = overall(cells)
                # A cell with one paired seed has no interval, and the mean then has none:
                # the verdict is undetermined (None) rather than "not met".
                known = not math.isnan(interval)
                verdict = {
                    "target": target,
                    "optimizer": optimizer,
                    "split": split,
                    "cells": len(cells),
                    "mean": mean,
                    "interval": interval,
                }
                if target == "versus_finetune":
                    worse = [
                        f"{r['task']} {r['regime']}"
                        for r in cells
                        if r["difference"] + r["interval"] < 0
                    ]
                    level = bool(mean + interval >= 0) if known else None
                    verdict.update(
                        level=level,
                        ahead=bool(mean >= 0),
                        worse_cells=worse,
                        met=False if worse else level,
                    )
                else:
                    spread = [
                        values["disagreement"]
                        for (_, _, o), values in gates.items()
                        if o == optimizer
                    ]
                    verdict.update(
                        met=bool(mean - interval > 0) if known else None,
                        disagreement=[min(spread), max(spread)] if spread else None,
                    )
                verdicts.append(verdict)
    return verdicts


def robustness(records, method="adafilter", metric="test_accuracy"):
    """The robustness targets of `method`, per optimizer, over the cells where it was run.

    * `worst_seed`: the smallest paired difference against the same seed's fine-tuning over
      every seed of every cell, and the cell it is in; `met` when it is above
      `-WORST_SEED_LIMIT` points.
    * `versus_matched`: `method - stochastic_matched` (random gates drawn at each layer's
      learned rate), mean over cells with its 95% interval; `met` when the mean is >= 0.
    * `gates`: the range of the layers' fine-tuned fractions (`met` when inside
      `GATE_RANGE`), and the share of layers whose disagreement reaches `MIN_DISAGREEMENT`
      (`met` when more than half).

    Returns:
        A dict per optimizer, empty when `method` was not run.
    """
    verdicts = {}
    rows = [r for r in compare(records, metric) if r["method"] == method]
    matched = pair_methods(records, method, MATCHED, metric)
    for optimizer in sorted({r["optimizer"] for r in rows}):
        cells = [r for r in rows if r["optimizer"] == optimizer and r["seeds"]]
        if not cells:
            continue
        worst = min(cells, key=lambda r: r["worst"])
        verdict = {
            "cells": len(cells),
            "worst_seed": {
                "difference": worst["worst"],
                "cell": f"{worst['task']} {worst['regime']}",
                "seed": worst["worst_seed"],
                "met": bool(worst["worst"] > -WORST_SEED_LIMIT),
            },
        }
        paired_cells = [r for r in matched if r["optimizer"] == optimizer]
        if paired_cells:
            mean, interval = overall(paired_cells)
            verdict["versus_matched"] = {
                "cells": len(paired_cells),
                "mean": mean,
                "interval": interval,
                "met": bool(mean >= 0),
            }
        layers = [
            layer
            for record in records
            if record["method"] == method
            and record["optimizer"] == optimizer
            and record.get("gates")
            for layer in record["gates"]
        ]
        if layers:
            fractions = [layer["fraction_finetuned"] for layer in layers]
            varied = statistics.fmean(layer["disagreement"] >= MIN_DISAGREEMENT for layer in layers)
            verdict["gates"] = {
                "fraction_finetuned": [min(fractions), max(fractions)],
                "within_range": bool(
                    GATE_RANGE[0] <= min(fractions) and max(fractions) <= GATE_RANGE[1]
                ),
                "input_dependent_share": varied,
                "input_dependent": bool(varied > 0.5),
            }
        verdicts[optimizer] = verdict
    return verdicts


def _robustness_markdown(verdicts):
    lines = [
        f"**Robustness** (test): the worst seed of any cell against the same seed's fine-tuning "
        f"(target: above −{WORST_SEED_LIMIT:g} points); learned gates − random gates at each "
        "layer's learned rate (`stochastic_matched`, target: mean ≥ 0); the range of the layers' "
        f"fine-tuned fractions over runs (target: within {GATE_RANGE[0]:g}-{GATE_RANGE[1]:g}); "
        f"the share of layers whose gates depend on the input (disagreement ≥ "
        f"{MIN_DISAGREEMENT:g}; target: most)",
        "",
        "| optimizer | cells | worst seed (cell) | learned − rate-matched | fine-tuned fraction "
        "| input-dependent layers |",
        "|---|---|---|---|---|---|",
    ]
    for optimizer, verdict in sorted(verdicts.items()):
        worst = verdict["worst_seed"]
        matched = verdict.get("versus_matched")
        gates = verdict.get("gates")
        lines.append(
            f"| {optimizer} | {verdict['cells']} | {worst['difference']:+.1f} ({worst['cell']}, "
            f"seed {worst['seed']}) {'✓' if worst['met'] else '✗'} | "
            + (
                f"{matched['mean']:+.2f} ± {matched['interval']:.2f} "
                f"{'✓' if matched['met'] else '✗'}"
                if matched
                else "—"
            )
            + " | "
            + (
                f"{gates['fraction_finetuned'][0]:.2f}-{gates['fraction_finetuned'][1]:.2f} "
                f"{'✓' if gates['within_range'] else '✗'} | "
                f"{100 * gates['input_dependent_share']:.0f} % "
                f"{'✓' if gates['input_dependent'] else '✗'}"
                if gates
                else "— | —"
            )
            + " |"
        )
    lines.append("")
    return lines


def _verdict(met):
    return "undetermined (a cell with one seed)" if met is None else "yes" if met else "no"


def _targets_markdown(verdicts):
    lines = [
        "**Targets** (mean over cells ± 95% interval, points; against fine-tuning, "
        "non-inferiority: met when the mean's interval reaches zero and no cell is worse by more "
        "than its own interval, which says 'not shown worse', not 'better or equal'; against "
        "random gates at the starting rate: met when the mean exceeds its interval)",
        "",
        "| target | optimizer | split | mean | mean ≥ 0 | cells worse by more than their "
        "interval | gates' disagreement | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "versus_finetune": "adafilter not worse than finetune",
        "versus_random": "learned > random at the starting rate",
    }
    order = {"versus_finetune": 0, "versus_random": 1}
    for verdict in sorted(verdicts, key=lambda v: (order[v["target"]], v["optimizer"])):
        worse = verdict.get("worse_cells")
        spread = verdict.get("disagreement")
        lines.append(
            f"| {names[verdict['target']]} | {verdict['optimizer']} | {verdict['split']} | "
            f"{verdict['mean']:+.2f} ± {verdict['interval']:.2f} "
            f"({verdict['cells']} cell{'' if verdict['cells'] == 1 else 's'}) | "
            + ("—" if "ahead" not in verdict else "yes" if verdict["ahead"] else "no")
            + " | "
            + ("—" if worse is None else ", ".join(worse) or "none")
            + " | "
            + ("—" if not spread else f"{spread[0]:.3f}-{spread[1]:.3f}")
            + f" | {_verdict(verdict['met'])} |"
        )
    lines.append("")
    return lines


def _cell(row):
    if math.isnan(row["difference"]) or row["method"] == BASELINE:
        return f"{row['accuracy']:.1f}"
    return f"{row['accuracy']:.1f} ({format_difference(row)})"


def markdown(records, settings_note=""):
    """The benchmark's tables in Markdown: one per optimizer setting, and the gate instruments."""
    lines = []
    for metric, title in (("test_accuracy", "Test"), ("val_accuracy", "Validation")):
        rows = compare(records, metric)
        columns = sorted({(r["task"], r["regime"]) for r in rows}, key=_column_order)
        seeds = {(r["task"], r["regime"]): r["seeds"] for r in rows}
        for optimizer in sorted({r["optimizer"] for r in rows}):
            chosen = [r for r in rows if r["optimizer"] == optimizer]
            methods = _method_order({r["method"] for r in chosen})
            lines.append(
                f"**{title} accuracy %, optimizer `{optimizer}`**: mean over seeds (paired "
                f"difference vs {BASELINE} ± 95% interval, and the worst seed's difference, "
                "points)"
            )
            lines.append("")
            header = " | ".join(
                f"{t} {g.replace('_', '-')} ({seeds[(t, g)]} seeds)" for t, g in columns
            )
            lines.append(f"| method | {header} | mean difference |")
            lines.append("|---" * (len(columns) + 2) + "|")
            for method in methods:
                cells = {(r["task"], r["regime"]): r for r in chosen if r["method"] == method}
                parts = [_cell(cells[c]) if c in cells else "—" for c in columns]
                mean, interval = overall(list(cells.values()))
                summary = "—" if method == BASELINE else f"{mean:+.2f} ± {interval:.2f}"
                lines.append(f"| {method} | " + " | ".join(parts) + f" | {summary} |")
            lines.append("")
    learned = {
        split: pair_methods(records, "adafilter", "stochastic", metric)
        for split, metric in (("test", "test_accuracy"), ("validation", "val_accuracy"))
    }
    if learned["test"]:
        columns = sorted({(r["task"], r["regime"]) for r in learned["test"]}, key=_column_order)
        lines.append(
            "**Learned gates vs random gates** (adafilter − stochastic, points: mean paired "
            "difference ± 95% interval, worst seed)"
        )
        lines.append("")
        lines.append(
            "| optimizer | split | " + " | ".join(f"{t} {g}" for t, g in columns) + " | mean |"
        )
        lines.append("|---" * (len(columns) + 3) + "|")
        optimizers = sorted({r["optimizer"] for r in learned["test"]})
        for optimizer, split in itertools.product(optimizers, learned):
            chosen = {
                (r["task"], r["regime"]): r for r in learned[split] if r["optimizer"] == optimizer
            }
            parts = [format_difference(chosen[c]) if c in chosen else "—" for c in columns]
            mean, interval = overall(list(chosen.values()))
            lines.append(
                f"| {optimizer} | {split} | "
                + " | ".join(parts)
                + f" | {mean:+.2f} ± {interval:.2f} |"
            )
        lines.append("")
    gates = gate_summary(records)
    if gates:
        lines.append(
            "**AdaFilter's gates** (last quarter of training, mean over layers and seeds): "
            "fraction of fine-tuned choices, disagreement between examples (input dependence, "
            "0 to 0.5), spread of the gate probability across a batch, agreement of the "
            "inference gates with the training gates"
        )
        lines.append("")
        lines.append(
            "| task | regime | optimizer | fine-tuned | disagreement | spread | agreement |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for (task, regime, optimizer), values in sorted(gates.items()):
            lines.append(
                f"| {task} | {regime} | {optimizer} | {values['fraction_finetuned']:.2f} | "
                f"{values['disagreement']:.3f} | {values['probability_spread']:.3f} | "
                f"{values['train_inference_agreement']:.2f} |"
            )
        lines.append("")
    verdicts = targets(records)
    if verdicts:
        lines.extend(_targets_markdown(verdicts))
    robust = robustness(records)
    if robust:
        lines.extend(_robustness_markdown(robust))
    if settings_note:
        lines.append(settings_note)
    return "\n".join(lines)


def _column_order(column):
    from adafilter_keras.transfer.tasks import EXTRA_TASKS, REGIMES, TASKS

    label, regime = column
    task, _, backbone = label.partition(" ")
    return (
        (TASKS + EXTRA_TASKS).index(task) if task in TASKS + EXTRA_TASKS else 99,
        backbone,
        REGIMES.index(regime) if regime in REGIMES else 99,
    )


def _method_order(methods):
    from adafilter_keras.training.config import METHODS

    return sorted(methods, key=lambda m: METHODS.index(m) if m in METHODS else 99)


def figure(records, path):
    """Saves a dot-and-interval plot of each method's paired test difference vs fine-tuning.

    Returns:
        False, and writes nothing, when no method is paired with fine-tuning (a run of
        `finetune` alone, or of methods without it); True otherwise.
    """
    rows = [r for r in compare(records) if r["method"] != BASELINE]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    optimizers = sorted({r["optimizer"] for r in rows})
    columns = sorted({(r["task"], r["regime"]) for r in rows}, key=_column_order)
    methods = _method_order({r["method"] for r in rows})
    figure_, axes = plt.subplots(
        1, len(optimizers), figsize=(5.5 * len(optimizers), 3.6), squeeze=False, sharey=True
    )
    colors = ["#3a7bd5", "#e07b39", "#4caf50", "#9c27b0", "#d32f2f", "#607d8b"]
    for axis, optimizer in zip(axes[0], optimizers, strict=True):
        for number, method in enumerate(methods):
            offset = (number - (len(methods) - 1) / 2) * 0.12
            chosen = {
                (r["task"], r["regime"]): r
                for r in rows
                if r["optimizer"] == optimizer and r["method"] == method
            }
            xs = [i + offset for i, c in enumerate(columns) if c in chosen]
            ys = [chosen[c]["difference"] for c in columns if c in chosen]
            errors = [
                0 if math.isnan(chosen[c]["interval"]) else chosen[c]["interval"]
                for c in columns
                if c in chosen
            ]
            axis.errorbar(xs, ys, yerr=errors, fmt="o", ms=4, capsize=2, label=method,
                          color=colors[number % len(colors)])  # fmt: skip
        axis.axhline(0, color="black", lw=0.8)
        axis.set_xticks(range(len(columns)))
        axis.set_xticklabels([f"{t}\n{g}" for t, g in columns], fontsize=8)
        axis.set_title(f"optimizer: {optimizer}", fontsize=9)
        axis.set_ylabel(f"test accuracy − {BASELINE} (points)")
    axes[0][0].legend(fontsize=7)
    figure_.tight_layout()
    figure_.savefig(path, dpi=100)
    plt.close(figure_)
    return True


def write(records, output_dir, settings_note=""):
    """Writes `results.json` (records + comparisons), `table.md` and `differences.png`.

    The figure is left out (and a stale one removed) when nothing is paired with fine-tuning.
    """
    import pathlib

    output_dir = pathlib.Path(output_dir)
    summary = {
        "comparisons": compare(records),
        "validation_comparisons": compare(records, "val_accuracy"),
        "learned_vs_random": pair_methods(records, "adafilter", "stochastic"),
        "validation_learned_vs_random": pair_methods(
            records, "adafilter", "stochastic", "val_accuracy"
        ),
        "targets": targets(records),
        "robustness": robustness(records),
        "learned_vs_matched": pair_methods(records, "adafilter", MATCHED),
        "gates": [
            {"task": t, "regime": g, "optimizer": o, **values}
            for (t, g, o), values in sorted(gate_summary(records).items())
        ],
        "runs": records,
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    table = markdown(records, settings_note)
    (output_dir / "table.md").write_text(table + "\n")
    plot = output_dir / "differences.png"
    if not figure(records, plot):
        plot.unlink(missing_ok=True)
    return table
