"""The offline transfer benchmark: AdaFilter against the baselines on data shipped in packages.

    python benchmarks/transfer.py --quick     # checks the suites run (about 4 min, CPU, 2 cores)
    python benchmarks/transfer.py             # 3 tasks x 2 regimes x 6 methods x 2 optimizers
    python benchmarks/transfer.py --help

Same as `adafilter-keras benchmark`. Writes runs.jsonl (one line per run; a second run of the
same command resumes), results.json, table.md and differences.png to --output-dir. The numbers
the documentation reports come from the full run, not from `--quick`.
"""

import sys

from adafilter_keras.cli import command_parser, main
from adafilter_keras.transfer import command  # noqa: F401  (its settings check these flags)


def build_parser():
    """Returns a parser of this script's flags, which are those of `adafilter-keras benchmark`."""
    return command_parser("benchmark", prog="benchmarks/transfer.py")


if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
