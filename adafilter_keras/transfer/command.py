"""`adafilter-keras benchmark` (and `python benchmarks/transfer.py`): presets, flags, running."""

import dataclasses
import json
import pathlib
import time

from adafilter_keras.layers.settings import check_values as check_gate_settings
from adafilter_keras.transfer import report
from adafilter_keras.transfer.runs import (
    EXTRA_OPTIMIZERS,
    METHODS,
    OPTIMIZERS,
    Benchmark,
    BenchmarkSettings,
)
from adafilter_keras.transfer.runs import VARIANT_SETTINGS as WRAP_DEFAULTS
from adafilter_keras.transfer.tasks import EXTRA_TASKS, REGIMES, TASKS

# Everything: 3 tasks x 2 regimes x 6 methods x 2 optimizers, 5 seeds few-shot and 3 in the
# larger regime (288 runs). A larger-regime run is 2,000 steps on every task (4 epochs would be
# 312-752); 3 larger seeds keep the whole benchmark near 2 hours on 2 CPU cores, 5 would not.
_FULL = BenchmarkSettings(large_steps=2000, large_seeds=(0, 1, 2))
PRESETS = {
    "full": _FULL,
    # For iterating: one task, few-shot, 3 seeds (about 10 minutes on 2 CPU cores).
    "quick": dataclasses.replace(_FULL, tasks=("digits",), regimes=("few_shot",), seeds=(0, 1, 2)),
}


def add_arguments(parser):
    """The benchmark's flags, on `parser`."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the quick preset: task digits, few-shot only, seeds 0 1 2 (about 10 min)",
    )
    parser.add_argument(
        "--output-dir",
        default="runs/benchmark",
        help="where runs.jsonl, the cached source models, results.json, table.md and "
        "differences.png go; a second run with the same settings resumes (default: %(default)s)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=TASKS + EXTRA_TASKS,
        help=f"default: {' '.join(TASKS)}; also mixed (half the target images in the source's "
        "domain, half shifted: for investigating per-example gates)",
    )
    parser.add_argument(
        "--regimes", nargs="+", choices=REGIMES, help=f"default: {' '.join(REGIMES)}"
    )
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, help=f"default: {' '.join(METHODS)}"
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        choices=OPTIMIZERS + EXTRA_OPTIMIZERS,
        help="own: each method's harness recipe; sgd: one plain SGD(0.01, momentum 0.9) for all "
        f"(default: {' '.join(OPTIMIZERS)}); also adam: keras.optimizers.Adam() with its "
        "defaults, for investigations",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="few-shot seeds (default: 0 1 2 3 4)")
    parser.add_argument(
        "--large-seeds",
        nargs="+",
        type=int,
        help="seeds of the larger regime (default: 0 1 2; the investigations' directories of "
        "4-epoch runs have 0 1 2 3 4)",
    )
    parser.add_argument("--shots", type=int, help="few-shot images per class (default: 10)")
    parser.add_argument(
        "--image-size",
        type=int,
        help="image side in pixels, for the source models (pre-trained anew at that size) and "
        "the targets (default: 16; at 32 a run costs about 2-3 times as much)",
    )
    parser.add_argument(
        "--source-epochs",
        type=int,
        help="epochs of source pre-training (default: 6); the source models are pre-trained "
        "anew for another value, and it is part of every run's identity",
    )
    parser.add_argument(
        "--large-epochs",
        type=int,
        help="epochs of a larger-regime run instead of --large-steps (4 epochs are 312-752 "
        "steps on the three tasks; `--large-epochs 4 --large-seeds 0 1 2 3 4` names the "
        "committed 4-epoch runs); part of every larger run's identity",
    )
    parser.add_argument(
        "--large-steps",
        type=int,
        help="training steps of a larger-regime run, the same for every task (default: 2000); "
        "part of every larger run's identity",
    )
    parser.add_argument(
        "--wrap-settings",
        metavar="JSON",
        help="wrap() settings for the gated methods instead of its defaults, as a JSON object, "
        "e.g. '{\"initial_rate\": 0.85}'; part of each gated run's identity, so runs under other "
        f"settings are kept apart (keys: {', '.join(WRAP_DEFAULTS)})",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the table and figure from the runs done so far, run nothing",
    )


# The BenchmarkSettings fields that a flag of the same name overrides.
_FLAG_SETTINGS = (
    "tasks",
    "regimes",
    "methods",
    "optimizers",
    "seeds",
    "large_seeds",
    "shots",
    "image_size",
    "source_epochs",
    "large_epochs",
    "large_steps",
)


def settings_from(args):
    """The `BenchmarkSettings` the flags ask for."""
    settings = PRESETS["quick" if args.quick else "full"]
    overrides = {
        name: tuple(value) if isinstance(value, list) else value
        for name in _FLAG_SETTINGS
        if (value := getattr(args, name, None)) is not None
    }
    if "shots" in overrides and overrides["shots"] < 1:
        raise ValueError(f"`--shots` must be >= 1. Received: {overrides['shots']}")
    if "image_size" in overrides and overrides["image_size"] < 8:
        raise ValueError(
            f"`--image-size` must be >= 8 (pixels). Received: {overrides['image_size']}"
        )
    if "source_epochs" in overrides and overrides["source_epochs"] < 1:
        raise ValueError(f"`--source-epochs` must be >= 1. Received: {overrides['source_epochs']}")
    for name in ("large_epochs", "large_steps"):
        if name in overrides and overrides[name] < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"`{flag}` must be >= 1. Received: {overrides[name]}")
    if "large_epochs" in overrides and "large_steps" in overrides:
        raise ValueError(
            "Pass `--large-epochs` or `--large-steps`, not both: each sets the length of a "
            f"larger-regime run. Received: --large-epochs {overrides['large_epochs']} "
            f"--large-steps {overrides['large_steps']}"
        )
    if "large_epochs" in overrides:
        overrides["large_steps"] = None  # epochs instead of the preset's steps
    if getattr(args, "wrap_settings", None):
        overrides["variant"] = wrap_settings(args.wrap_settings)
    return dataclasses.replace(settings, **overrides)


def wrap_settings(text):
    """The `--wrap-settings` JSON as a dict of wrap() gate settings, checked."""
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"`--wrap-settings` must be a JSON object, e.g. '{{\"initial_rate\": 0.5}}'. "
            f"Received: {text!r} ({error})"
        ) from None
    if not isinstance(settings, dict):
        raise ValueError(f"`--wrap-settings` must be a JSON object. Received: {text!r}")
    unknown = sorted(set(settings) - set(WRAP_DEFAULTS))
    if unknown:
        raise ValueError(
            f"`--wrap-settings` has unknown keys {unknown}; the gate settings are: "
            f"{', '.join(WRAP_DEFAULTS)}."
        )
    return check_gate_settings(settings)


def _large_length(settings):
    if settings.large_steps is not None:
        return f"{settings.large_steps} steps"
    return f"{settings.large_epochs} epochs"


def note(settings):
    """What the table was run with, in words, for under the table."""
    return (
        f"Settings: SmallResNet (width {settings.width}) pre-trained on the source at "
        f"{settings.image_size} px for {settings.source_epochs} epochs; batch "
        f"{settings.batch_size}; few-shot: {settings.shots} images per class, "
        f"{settings.few_shot_steps} steps, seeds {list(settings.seeds)}; larger: up to 300 "
        f"images per class, {_large_length(settings)}, seeds {list(settings.large_seeds)}; "
        "20 validation images per class; accuracy after the last step (no selection on test)."
        + (
            f" Gated methods with wrap() settings {json.dumps(settings.variant)} instead of "
            "the defaults."
            if settings.variant
            else ""
        )
    )


def run(args, stream=None):
    """Runs (or resumes) the benchmark the flags ask for, then writes and prints the report."""
    settings = settings_from(args)
    benchmark = Benchmark(settings, args.output_dir, stream=stream)
    started = time.time()
    if args.report_only:
        records = [r for r in benchmark.done().values() if _wanted(r, settings)]
        if not records:
            raise ValueError(f"No runs of these settings in {benchmark.results_path} yet.")
        if len(records) < settings.total_runs():
            print(
                f"Only {len(records)} of the {settings.total_runs()} runs of these settings are "
                f"in {benchmark.results_path}: the report covers those. Run without "
                "--report-only to add the others, or give the flags the runs were made with "
                "(e.g. --large-epochs 4 --large-seeds 0 1 2 3 4 for the committed 4-epoch runs).",
                file=stream,
            )
    else:
        records = benchmark.run()
    table = report.write(records, pathlib.Path(args.output_dir), note(settings))
    print(table, file=stream)
    written = "results.json, table.md and differences.png"
    if not (pathlib.Path(args.output_dir) / "differences.png").exists():
        written = "results.json and table.md (no figure: no method to pair with finetune)"
    print(
        f"\n{len(records)} runs; {written} in {args.output_dir} ({time.time() - started:.0f} s)",
        file=stream,
    )
    return records


def _wanted(record, settings):
    from adafilter_keras.transfer.runs import run_key

    # The key holds no seed list: a run of seed 3 has the same key under settings with seeds
    # 0-2, so the seeds (and cells) the settings name are checked as well.
    cell = (record["task"], record["regime"], record["method"], record["optimizer"])
    if cell not in settings.cells() or record["seed"] not in settings.seeds_of(cell[1]):
        return False
    return record["key"] == run_key(
        settings,
        record["task"],
        record["regime"],
        record["method"],
        record["optimizer"],
        record["seed"],
    )
