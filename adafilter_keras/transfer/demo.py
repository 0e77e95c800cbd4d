"""The offline quick start (`adafilter-keras demo`): a preset of the transfer benchmark.

It runs the benchmark's `demo` preset (`command.PRESETS["demo"]`) with the benchmark's engine:
the same task (`digits`: a SmallResNet pre-trained on MNIST, transferred to the UCI digits of
scikit-learn), the same per-method recipe (`own`, TrainConfig's defaults in steps), the same
paired statistics (`adafilter_keras.statistics`). It is a demonstration that finishes in
minutes; the accuracy numbers the documentation reports come from `adafilter-keras benchmark`.
"""

import dataclasses
import pathlib
import shutil
import sys
import time

from adafilter_keras.training.config import METHODS
from adafilter_keras.transfer import command, report
from adafilter_keras.transfer.runs import Benchmark

BASELINE = report.BASELINE
DEFAULT_OUTPUT_DIR = "runs/quickstart"
CLOSING = (
    "These numbers show the comparison on a small budget (one task, few seeds); they are not "
    "the library's reported results. The accuracy the documentation reports comes from the "
    "transfer benchmark: adafilter-keras benchmark (docs/benchmark.md)."
)


@dataclasses.dataclass
class DemoResult:
    """What `run()` produced.

    Attributes:
        table: The Markdown report printed at the end (the benchmark's report of these runs).
        rows: `report.compare` rows: per method, test accuracy and the paired difference against
            `finetune` with its 95% interval and worst seed.
        records: The run records (one per method and seed).
        output_dir: Where everything was written.
        plot: Path of `differences.png` (None when nothing is paired with `finetune`).
        wall_time_s: Seconds the whole quick start took.
    """

    table: str
    rows: list
    records: list
    output_dir: pathlib.Path
    plot: pathlib.Path | None
    wall_time_s: float


def check(settings):
    """Refuses settings the quick start cannot compare, before any work.

    Raises:
        ValueError: A method is unknown, `finetune` is missing, or no seed is given.
    """
    unknown = [m for m in settings.methods if m not in METHODS]
    if unknown or not settings.methods:
        raise ValueError(
            f"Methods must be a non-empty list of {', '.join(METHODS)}. "
            f"Received: methods={list(settings.methods)!r}"
        )
    if BASELINE not in settings.methods:
        raise ValueError(
            f"The quick start compares every method against `{BASELINE}`; include it. "
            f"Received: methods={list(settings.methods)!r}"
        )
    if not settings.seeds:
        raise ValueError(f"Give at least one seed. Received: seeds={list(settings.seeds)!r}")


def run(output_dir=DEFAULT_OUTPUT_DIR, *, settings=None, fresh=False, stream=None):
    """Runs the quick start and writes its artefacts under `output_dir`.

    Runs already in `output_dir/runs.jsonl` under the same settings are reused (a second call
    only prints the report again); so is the cached source model. `fresh=True` starts over.

    Args:
        output_dir: Directory for the source model, `runs.jsonl` and the reports.
        settings: A `BenchmarkSettings` (default: the `demo` preset).
        fresh: Delete `output_dir` first: retrain the source model and redo every run.
        stream: Where progress and the report are printed (default stdout).

    Returns:
        A `DemoResult`.

    Raises:
        ValueError: Settings the quick start cannot compare (see `check`).
    """
    started = time.time()
    settings = settings or command.PRESETS["demo"]
    check(settings)
    stream = stream or sys.stdout
    output_dir = pathlib.Path(output_dir)
    if fresh and output_dir.exists():
        shutil.rmtree(output_dir)
    print(f"Quick start: {command.describe(settings)}.", file=stream, flush=True)
    records = Benchmark(settings, output_dir, stream=stream).run()
    table = report.write(records, output_dir, command.note(settings))
    plot = output_dir / "differences.png"
    wall_time = time.time() - started
    print(f"\n{table}\n", file=stream)
    print(
        f"{CLOSING}\nWrote {output_dir / 'results.json'}, {output_dir / 'table.md'}"
        + (f", {plot}" if plot.exists() else "")
        + f" and {output_dir / 'runs.jsonl'}. Total time {_clock(wall_time)}.",
        file=stream,
    )
    rows = [r for r in report.compare(records) if r["method"] in settings.methods]
    return DemoResult(table, rows, records, output_dir, plot if plot.exists() else None, wall_time)


def _clock(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"
