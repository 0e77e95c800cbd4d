"""The offline transfer benchmark: AdaFilter against the baselines on data shipped in packages.

    python benchmarks/transfer.py --quick     # one task, few-shot, 3 seeds (about 10 min, CPU)
    python benchmarks/transfer.py             # 3 tasks x 2 regimes x 6 methods x 2 optimizers
    python benchmarks/transfer.py --help

Same as `adafilter-keras benchmark`. Writes runs.jsonl (one line per run; a second run of the
same command resumes), results.json, table.md and differences.png to --output-dir.
"""

import sys

from adafilter_keras.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
