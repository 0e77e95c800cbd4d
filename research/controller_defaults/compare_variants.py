"""AdaFilter under other wrap() settings against AdaFilter under the defaults, paired by seed.

Reads the runs that `adafilter-keras benchmark` (with and without `--wrap-settings`) appended
to OUTPUT_DIR/runs.jsonl (and, with `--baseline-runs`, to another directory's, so that the
baseline runs need not be copied) and prints, per optimizer and split, the mean over cells of
the paired difference `adafilter(settings) - adafilter(defaults)` with its 95% interval, and
each cell's. Runs nothing.

    python research/controller_defaults/compare_variants.py \
        --output-dir research/controller_defaults/results/normalized_controller \
        --wrap-settings '{"normalize_controller_inputs": true}'
"""

import argparse
import json
import pathlib


def build_parser():
    """The command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="where runs.jsonl is")
    parser.add_argument(
        "--wrap-settings", required=True, metavar="JSON", help="the settings to compare"
    )
    parser.add_argument(
        "--baseline",
        default="{}",
        metavar="JSON",
        help="the settings compared against (default: wrap()'s defaults)",
    )
    parser.add_argument(
        "--baseline-runs",
        metavar="DIR",
        help="also read the runs.jsonl of this benchmark output directory (for example the "
        "committed benchmark's, for its default adafilter runs)",
    )
    return parser


def main(argv=None):
    """Prints the paired comparison."""
    args = build_parser().parse_args(argv)
    from adafilter_keras import statistics
    from adafilter_keras.transfer import report
    from adafilter_keras.transfer.command import wrap_settings
    from adafilter_keras.transfer.runs import variant_key

    def resolved(text):
        return variant_key(wrap_settings(text))

    variant, baseline = resolved(args.wrap_settings), resolved(args.baseline)
    directories = [args.output_dir] + ([args.baseline_runs] if args.baseline_runs else [])
    runs = {}  # by key: a run in both directories counts once
    for directory in directories:
        path = pathlib.Path(directory) / "runs.jsonl"
        if not path.exists():
            raise SystemExit(f"No runs.jsonl in {directory}: run the benchmark there first.")
        for line in path.read_text().splitlines():
            record = json.loads(line)
            runs[record["key"]] = record
    lengths = {
        (key["steps"], key["epochs"])
        for key in (json.loads(r["key"]) for r in runs.values())
        if key["regime"] == "large"
    }
    if len(lengths) > 1:
        raise SystemExit(
            f"The larger runs in {', '.join(directories)} have different lengths "
            f"((steps, epochs): {sorted(lengths, key=str)}): their seeds would be paired across "
            "lengths. Compare directories whose larger runs have one length."
        )
    records = []
    for record in runs.values():
        settings = json.loads(record["key"])["variant"]
        if record["method"] != "adafilter" or settings not in (variant, baseline):
            continue
        # The baseline plays the part of `finetune` in report.compare's pairing.
        records.append(dict(record, method="adafilter" if settings == variant else "finetune"))
    if not records:
        raise SystemExit(f"No adafilter runs under either setting in {args.output_dir}.")
    print(f"adafilter {args.wrap_settings} − adafilter {args.baseline}, points")
    for metric in ("val_accuracy", "test_accuracy"):
        rows = [r for r in report.compare(records, metric) if r["method"] == "adafilter"]
        for optimizer in sorted({r["optimizer"] for r in rows}):
            chosen = [r for r in rows if r["optimizer"] == optimizer]
            mean, interval = statistics.overall(chosen)
            cells = ", ".join(
                f"{r['task']} {r['regime']} {r['difference']:+.1f} ± {r['interval']:.1f}"
                for r in chosen
            )
            print(f"{metric} {optimizer}: {mean:+.2f} ± {interval:.2f} ({cells})")


if __name__ == "__main__":
    main()
