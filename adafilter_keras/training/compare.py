"""`compare`: test accuracy per dataset and method over seeds, paired with a baseline by seed."""

import csv
import json
import pathlib

from adafilter_keras.statistics import cell_summary, format_difference


def collect(paths):
    """Reads every `results.json` under `paths` (files or directories, searched recursively)."""
    results = []
    for path in map(pathlib.Path, paths):
        files = [path] if path.is_file() else sorted(path.rglob("results.json"))
        if not path.exists():
            raise ValueError(f"No such run directory or results file: {str(path)!r}")
        for file in files:
            results.append(json.loads(file.read_text()))
    if not results:
        raise ValueError(f"No results.json found under {', '.join(map(str, paths))}.")
    return results


def shots_of(result):
    """The `shots_per_class` of a result (None: the whole training split)."""
    return (result.get("config") or {}).get("shots_per_class")


def summarize(results, baseline="finetune"):
    """One row per (dataset, shots, method): test accuracy over seeds, paired with `baseline`.

    Each run is paired with the baseline's run of the same dataset, shots and seed
    (`adafilter_keras.statistics`, as in the benchmark and the quick start): `difference` is the
    mean paired difference in points of test accuracy (positive: the method makes fewer top-1
    errors than the baseline), `interval` its 95% half-width (NaN with one paired seed), `worst` the
    worst seed's difference; all NaN where no seed has a baseline run.

    Raises:
        ValueError: Two runs of one (dataset, shots, method) share a seed, or runs of one dataset
            were tested on different splits of its folder.
    """
    _check_one_split_per_dataset(results)
    groups = {}
    for result in results:
        key = (result["dataset"], shots_of(result) or 0, result["method"])
        seeds = groups.setdefault(key, {})
        seed = result.get("seed")
        if seed in seeds:
            raise ValueError(
                f"Two runs of {key[2]} on {key[0]} share seed {seed}, so they cannot be paired "
                f"with {baseline}'s run of that seed. Compare the run directories of one "
                f"experiment at a time. Received: {result.get('run_dir', '?')}"
            )
        seeds[seed] = 100.0 * result["test_accuracy"]
    rows = []
    for (dataset, shots, method), values in sorted(groups.items()):
        summary = cell_summary(values, groups.get((dataset, shots, baseline), {}))
        rows.append(
            {
                "dataset": dataset,
                "shots": shots or None,
                "method": method,
                "seeds": summary["seeds"],
                "test_accuracy_mean": summary["accuracy"],
                "test_accuracy_std": summary["std"],
                "difference": summary["difference"],
                "interval": summary["interval"],
                "worst": summary["worst"],
                "worst_seed": summary["worst_seed"],
            }
        )
    return rows


def _check_one_split_per_dataset(results):
    """Refuses to compare runs of one dataset that were tested on different folder splits."""
    digests = {}
    for result in results:
        digest = result.get("split_digest")
        if digest is not None:
            digests.setdefault(result["dataset"], {}).setdefault(digest, []).append(result)
    for dataset, by_digest in digests.items():
        if len(by_digest) > 1:
            runs = "; ".join(
                f"{digest}: {', '.join(r.get('run_dir', '?') for r in runs[:2])}"
                for digest, runs in by_digest.items()
            )
            raise ValueError(
                f"Runs of {dataset} were tested on different splits of its folder (the images "
                f"changed between runs), so their accuracies cannot be compared: {runs}. Copy "
                "one run's split.json into the others' run directories and run them again."
            )


def markdown(rows, baseline="finetune"):
    """Renders `summarize` rows as a Markdown table."""
    with_shots = any(row["shots"] for row in rows)
    shots_header = " shots/class |" if with_shots else ""
    lines = [
        f"| dataset |{shots_header} method | seeds | test accuracy % (mean ± std) "
        f"| paired difference vs {baseline} (points, ± 95% interval, worst seed) |",
        "|---|---|---|---|---|" + ("---|" if with_shots else ""),
    ]
    for row in rows:
        shots = f" {row['shots'] or 'all'} |" if with_shots else ""
        difference = "—" if row["method"] == baseline else format_difference(row, digits=2)
        lines.append(
            f"| {row['dataset']} |{shots} {row['method']} | {row['seeds']} | "
            f"{row['test_accuracy_mean']:.2f} ± {row['test_accuracy_std']:.2f} | {difference} |"
        )
    return "\n".join(lines)


def write_csv(rows, path):
    """Writes `summarize` rows to a CSV file."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
