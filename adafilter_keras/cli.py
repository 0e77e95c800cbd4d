"""The `adafilter-keras` command."""

import argparse
import sys

from adafilter_keras.version import __version__

DESCRIPTION = """\
AdaFilter for Keras 3: fine-tune a pre-trained CNN with a learned, per-example and per-filter
choice between each frozen pre-trained filter and a fine-tuned copy of it.

Python API:  import adafilter_keras  (layers: AdaFilterConv2D, GatedBatchNorm, GateController)
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
    return parser


def main(argv=None):
    """Runs the command line; returns the process exit status."""
    parser = build_parser()
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
