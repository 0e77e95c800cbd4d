"""`adafilter-keras benchmark` and `demo`: the presets, settings from flags, running, reporting.

The flags themselves are declared in `adafilter_keras.cli`.
"""

import dataclasses
import json
import pathlib
import time

from adafilter_keras.layers.settings import check_values as check_gate_settings
from adafilter_keras.transfer import backbones, report
from adafilter_keras.transfer.runs import MATCHED, Benchmark, BenchmarkSettings
from adafilter_keras.transfer.runs import VARIANT_SETTINGS as WRAP_DEFAULTS

# Everything: 3 tasks x 2 regimes x 6 methods x 2 optimizers, 5 seeds few-shot and 3 in the
# larger regime (288 runs). A larger-regime run is 2,000 steps on every task (4 epochs would be
# 312-752); 3 larger seeds keep the whole benchmark near 2 hours on CPU, 2 cores; 5 would not.
_FULL = BenchmarkSettings(large_steps=2000, large_seeds=(0, 1, 2))
# The suites of backbones, few-shot: each cell is task x backbone x optimizer, and every gated
# method is compared with fine-tuning, random gates at 0.5 and random gates at the learned rates.
_SUITE = dataclasses.replace(
    _FULL,
    backbone="resnet16",  # replaced by each of the suite's backbones (`SUITE_BACKBONES`)
    regimes=("few_shot",),
    methods=("finetune", "stochastic", "adafilter", MATCHED),
    optimizers=("sgd", "own", "adam"),
)
PRESETS = {
    # Where `wrap()`'s defaults are chosen (validation accuracy only): four backbones at 16 and
    # 32 px, on the class-disjoint and the domain-shift tasks, adafilter against fine-tuning under
    # the optimizers a user compiles with; each candidate is a `--wrap-settings` (96 runs, the
    # first with fine-tuning and the source models about 20 minutes on CPU, 2 cores, each other
    # about 11).
    "selection": dataclasses.replace(
        _SUITE,
        tasks=("classes", "domain"),
        methods=("finetune", "adafilter"),
        optimizers=("sgd", "adam"),
        seeds=(0, 1, 2),
    ),
    # Run once the defaults are fixed, and the numbers the documentation reports: other
    # backbones (among them a residual one like a user's, 32-64-128 filters at 32 px with
    # Keras's BN momentum) on another task, 5 seeds.
    "confirmation": dataclasses.replace(_SUITE, tasks=("digits",), seeds=(0, 1, 2, 3, 4)),
    # The 0.1 tables: SmallResNet (width 16, BN momentum set to 0.9) at 16 px, every method.
    "full": _FULL,
    # Checks that the suites run: two backbones, one task, 2 seeds, under SGD and Adam.
    "quick": dataclasses.replace(
        _SUITE, tasks=("digits",), optimizers=("sgd", "adam"), seeds=(0, 1)
    ),
    # The quick start (`adafilter-keras demo`): the digits task few-shot on the residual backbone
    # of width 16 (its own BN momentum), five methods (random gates too, for learned vs random)
    # under their own recipe, 3 seeds (15 runs and the source model, under 5 minutes on CPU, 2
    # cores).
    "demo": dataclasses.replace(
        _FULL,
        backbone="resnet16",
        tasks=("digits",),
        regimes=("few_shot",),
        methods=("finetune", "feature_extraction", "l2sp", "stochastic", "adafilter"),
        optimizers=("own",),
        seeds=(0, 1, 2),
    ),
}


# The backbones (`NAME@PIXELS`) of each suite; a preset not named here runs one backbone.
SUITE_BACKBONES = {
    "selection": ("resnet16@16", "resnet64@16", "vgg_bn@32", "plain@16"),
    "confirmation": ("resnet32@32", "vgg_bn32@16", "plain32@32"),
    "quick": ("resnet16@16", "plain@16"),
}
SUITES = ("selection", "confirmation", "full")


def describe(settings):
    """What `settings` (one `BenchmarkSettings` or a suite of them) runs, in one sentence."""
    if isinstance(settings, (list, tuple)):
        suite = list(settings)
        models = ", ".join(each.model for each in suite)
        runs = sum(each.total_runs() for each in suite)
        return f"backbones {models}; {describe(suite[0]).rsplit(';', 1)[0]}; {runs} runs"
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


def _preset_name(args, preset=None):
    if preset:
        return preset
    if getattr(args, "quick", False):
        return "quick"
    return getattr(args, "suite", None) or "confirmation"


def suite_from(args, preset=None):
    """The suite the flags ask for: one `BenchmarkSettings` per backbone.

    `--backbones` (`NAME@PIXELS` specs) replaces the preset's backbones; a preset without
    backbones of its own (`full`, `demo`) runs its one backbone.
    """
    name = _preset_name(args, preset)
    settings = settings_from(args, name)
    specs = getattr(args, "backbones", None) or SUITE_BACKBONES.get(name)
    if not specs:
        return [settings]
    models = [backbones.parse(spec, settings.image_size) for spec in specs]
    if len(set(models)) < len(models):
        raise ValueError(f"`--backbones` names a backbone twice. Received: {list(specs)}")
    return [
        dataclasses.replace(settings, backbone=backbone, image_size=pixels)
        for backbone, pixels in models
    ]


def settings_from(args, preset=None):
    """The `BenchmarkSettings` the flags ask for, starting from `preset` (a `PRESETS` name).

    Without `preset`: `quick` when `args.quick` is set, else the `--suite` flag's, else
    `confirmation`.
    """
    settings = PRESETS[_preset_name(args, preset)]
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
    """What the table was run with, in words, for under the table.

    Args:
        settings: One `BenchmarkSettings`, or a suite of them (one per backbone).
    """
    suite = list(settings) if isinstance(settings, (list, tuple)) else [settings]
    settings = suite[0]
    if len(suite) == 1 and settings.backbone == backbones.LEGACY:
        model = (
            f"SmallResNet (width {settings.width}, BN momentum "
            f"{backbones.LEGACY_BN_MOMENTUM}) pre-trained on the source at "
            f"{settings.image_size} px"
        )
    elif len(suite) == 1:
        model = (
            f"Backbone {settings.model} ({backbones.BACKBONES[settings.backbone].description}), "
            f"with its own BN momentum, pre-trained on the source at {settings.image_size} px"
        )
    else:
        model = "Backbones " + "; ".join(
            f"{each.model} ({backbones.BACKBONES[each.backbone].description})" for each in suite
        )
        model += ", each with its own BN momentum, pre-trained on the source at its image size"
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
        f"Settings: {model} for {settings.source_epochs} epochs; batch "
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
    suite = suite_from(args)
    benchmark = Benchmark(suite, args.output_dir, stream=stream)
    started = time.time()
    if args.report_only:
        done = benchmark.done()
        records = [done[key] for *_, key in benchmark.keys() if key in done]
        if not records:
            raise ValueError(f"No runs of these settings in {benchmark.results_path} yet.")
        if len(records) < benchmark.total_runs():
            print(
                f"Only {len(records)} of the {benchmark.total_runs()} runs of these settings are "
                f"in {benchmark.results_path}: the report covers those. Run without "
                "--report-only to add the others, or give the flags the runs were made with "
                "(e.g. --large-epochs 4 --large-seeds 0 1 2 3 4 for the committed 4-epoch runs).",
                file=stream,
            )
    else:
        records = benchmark.run()
    table = report.write(records, pathlib.Path(args.output_dir), note(suite))
    print(table, file=stream)
    written = "results.json, table.md and differences.png"
    if not (pathlib.Path(args.output_dir) / "differences.png").exists():
        written = "results.json and table.md (no figure: no method to pair with finetune)"
    print(
        f"\n{len(records)} runs; {written} in {args.output_dir} ({time.time() - started:.0f} s)",
        file=stream,
    )
    return records
