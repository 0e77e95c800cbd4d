"""The `adafilter-keras` command."""

import argparse
import json
import sys

from adafilter_keras.version import __version__

DESCRIPTION = """\
AdaFilter for Keras 3: fine-tune a pre-trained CNN with a learned, per-example and per-filter
choice between each frozen pre-trained filter and a fine-tuned copy of it.

Python API:  import adafilter_keras as ak; model = ak.wrap(keras_model)
"""


def build_parser():
    """Returns the argument parser of the `adafilter-keras` command."""
    parser = argparse.ArgumentParser(
        prog="adafilter-keras",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__}",
        help="print the version of adafilter_keras and exit",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    datasets = commands.add_parser(
        "datasets",
        help="list the registered datasets and whether their data is on this machine",
        description="List every registered dataset: classes, split sizes, source, and whether "
        "it is present here, downloadable by TFDS, or needs a manual step (and which).",
    )
    datasets.add_argument(
        "--data-dir",
        help="where prepared TFDS data and dataset folders are looked for "
        "(default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    datasets.add_argument("--json", action="store_true", help="print JSON instead of a table")
    datasets.set_defaults(run=_datasets)
    return parser


def _datasets(args):
    from adafilter_keras.data import catalog

    rows = catalog.rows(args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    manual = []
    table = []
    for row in rows:
        status = row["status"]
        if status.startswith("manual step: "):
            manual.append(f"  {row['name']}: {status[len('manual step: ') :]}")
            status = "manual step (below)"
        table.append([row["name"], str(row["classes"]), row["splits"], row["source"], status])
    header = ["name", "classes", "splits", "source", "status"]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    for line in [header, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    if manual:
        print("\nManual steps:")
        print("\n".join(manual))
    return 0


def main(argv=None):
    """Runs the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
