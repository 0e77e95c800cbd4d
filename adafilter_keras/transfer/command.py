"""`adafilter-keras benchmark` and `demo`: the presets, settings from flags, running, reporting.

The flags themselves are declared in `adafilter_keras.cli`.
"""

import dataclasses
import json
import pathlib
import time

from adafilter_keras.layers.settings import check_values as check_gate_settings
from adafilter_keras.transfer import report
from adafilter_keras.transfer.runs import VARIANT_SETTINGS as WRAP_DEFAULTS
from adafilter_keras.transfer.runs import Benchmark, BenchmarkSettings

# Everything: 3 tasks x 2 regimes x 6 methods x 2 optimizers, 5 seeds few-shot and 3 in the
# larger regime (288 runs). A larger-regime run is 2,000 steps on every task (4 epochs would be
# 312-752); 3 larger seeds keep the whole benchmark near 2 hours on CPU, 2 cores; 5 would not.
_FULL = BenchmarkSettings(large_steps=2000, large_seeds=(0, 1, 2))
PRESETS = {
    "full": _FULL,
    # Checks that the benchmark's suites run: one task, few-shot, 3 seeds, every method under
    # both optimizers (36 runs, measured 3 min 54 s on CPU, 2 cores, source model included).
    "quick": dataclasses.replace(_FULL, tasks=("digits",), regimes=("few_shot",), seeds=(0, 1, 2)),
    # The quick start (`adafilter-keras demo`): the digits task few-shot, five methods (random
    # gates too, for learned vs random) under their own recipe, 3 seeds (15 runs and the source
    # model, under 5 minutes on CPU, 2 cores).
    "demo": dataclasses.replace(
        _FULL,
        tasks=("digits",),
        regimes=("few_shot",),
        methods=("finetune", "feature_extraction", "l2sp", "stochastic", "adafilter"),
        optimizers=("own",),
        seeds=(0, 1, 2),
    ),
}


def describe(settings):
    """What `settings` runs, in one sentence (for `--help` and the docs)."""
    regimes = []
    if "few_shot" in settings.regimes:
        regimes.append(
            f"few-shot ({settings.shots} images per class, {settings.few_shot_steps} steps, "
            f"seeds {' '.join(map(str, settings.seeds))})"
        )
    if "large" in settings.regimes:
        regimes.append(
            f"larger ({_large_length(settings)}, seeds {' '.join(map(str, settings.large_seeds))})"
        )
    return (
        f"task{'s' if len(settings.tasks) > 1 else ''} {', '.join(settings.tasks)}; "
        f"{' and '.join(regimes)}; methods {', '.join(settings.methods)}; optimizer"
        f"{'s' if len(settings.optimizers) > 1 else ''} {', '.join(settings.optimizers)}; "
        f"{settings.total_runs()} runs"
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


def settings_from(args, preset=None):
    """The `BenchmarkSettings` the flags ask for, starting from `preset` (a `PRESETS` name).

    Without `preset`: `quick` when `args.quick` is set, else `full`.
    """
    settings = PRESETS[preset or ("quick" if getattr(args, "quick", False) else "full")]
    overrides = {
        name: tuple(value) if isinstance(value, list) else value
        for name in _FLAG_SETTINGS
        if (value := getattr(args, name, None)) is not None
    }
    for name in ("seeds", "large_seeds"):
        if name in overrides and (not overrides[name] or any(seed < 0 for seed in overrides[name])):
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"`{flag}` must be one or more seeds >= 0. Received: {list(overrides[name])}"
            )
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
    regimes = []
    if "few_shot" in settings.regimes:
        regimes.append(
            f"few-shot: {settings.shots} images per class, {settings.few_shot_steps} steps, "
            f"seeds {list(settings.seeds)}"
        )
    if "large" in settings.regimes:
        regimes.append(
            f"larger: up to 300 images per class, {_large_length(settings)}, seeds "
            f"{list(settings.large_seeds)}"
        )
    return (
        f"Settings: SmallResNet (width {settings.width}) pre-trained on the source at "
        f"{settings.image_size} px for {settings.source_epochs} epochs; batch "
        f"{settings.batch_size}; {'; '.join(regimes)}; "
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
