"""The `adafilter-keras` command."""

import argparse
import json
import sys

from adafilter_keras import console
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
        help="list the registered datasets and whether their data is present locally",
        description="List every registered dataset: classes, split sizes, source, and whether "
        "it is present here, downloadable by TFDS, or needs a manual step (and which).",
    )
    datasets.add_argument(
        "--data-dir",
        help="where prepared TFDS data and dataset folders are looked for "
        "(default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    datasets.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_verbose(datasets)
    datasets.set_defaults(run=_datasets)
    _add_train(commands)
    _add_compare(commands)
    _add_tune(commands)
    _add_demo(commands)
    _add_benchmark(commands)
    return parser


def command_parser(name, prog=None):
    """The parser of one command (`benchmark`, ...), for a script that takes the same flags.

    Args:
        name: A command of `adafilter-keras`.
        prog: The program name its usage line shows (default: `adafilter-keras NAME`).
    """
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if name not in commands.choices:
        raise ValueError(f"No command {name!r}. Commands: {', '.join(commands.choices)}")
    sub = commands.choices[name]
    if prog:
        sub.prog = prog
    return sub


_INTEGERS = ("shots_per_class", "steps_per_epoch", "warmup_epochs")
# Commands that build models: they name the device before their own output.
_TRAINING_COMMANDS = ("train", "tune", "demo", "benchmark")


def _add_verbose(parser):
    parser.add_argument(
        console.VERBOSE_FLAG,
        action="store_true",
        help="show every TensorFlow log line (by default only errors, and the device found)",
    )


def _start(args):
    """Before a command's own output: quiet TensorFlow's Python logs, name the device."""
    console.quiet_python_logging()
    # `train` names the device itself, after joining a process group (JAX must not start first).
    if args.command in _TRAINING_COMMANDS and args.command != "train":
        print(console.device_line(), flush=True)


def _flag_value(text):
    lowered = text.lower()
    return {"true": True, "false": False, "none": None}.get(lowered, text)


def _add_train(commands):
    train = commands.add_parser(
        "train",
        help="train one method on one dataset; writes a run directory with results.json",
        description="Train one method on one dataset with model.fit and write a run directory "
        "(config.json, results.json, log.csv, TensorBoard logs under logs/, best.weights.h5). "
        "Re-running the same command after an interruption resumes from the last completed "
        "epoch. Every flag is a TrainConfig field; --config FILE reads a JSON object of fields "
        "and flags given on the command line override it.",
    )
    train.add_argument("--config", help="JSON file of TrainConfig fields (e.g. from `tune`)")
    train.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    _add_verbose(train)
    _add_config_flags(train)
    _add_process_flags(train)
    train.set_defaults(run=_train)


def _add_process_flags(parser):
    from adafilter_keras.training import processes

    group = parser.add_argument_group(
        "several processes (--distribution multi_process, JAX)",
        "Start the same command once per process, on one machine or many. Each flag falls back "
        "to its environment variable; with none of the three set, JAX reads the cluster "
        "manager's (SLURM, Open MPI). docs/distributed.md shows how to launch.",
    )
    group.add_argument(
        "--coordinator-address",
        metavar="HOST:PORT",
        help=f"address of process 0, the same for all (${processes.COORDINATOR_ENV})",
    )
    group.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help=f"how many processes take part (${processes.NUM_PROCESSES_ENV})",
    )
    group.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help=f"this process's index, 0 to N-1; 0 writes the run directory "
        f"(${processes.PROCESS_ID_ENV})",
    )
    group.add_argument(
        "--process-timeout",
        type=int,
        default=processes.DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="how long to wait for every process to join (default: %(default)s)",
    )


def _add_config_flags(parser):
    """One flag per TrainConfig field, named after it; unset flags are absent from the args."""
    import dataclasses

    from adafilter_keras.training.config import TrainConfig

    docs = _field_docs(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else None
        kwargs = {"dest": field.name, "default": argparse.SUPPRESS}
        if field.name == "step_epochs":
            kwargs.update(nargs="+", type=int, metavar="EPOCH")
        elif field.name in _INTEGERS:
            kwargs.update(type=int)
        elif field.name == "distribution":
            kwargs.update(type=_flag_value, choices=_backend_distributions())
        elif field.name in ("jit_compile", "cache"):
            kwargs.update(type=_flag_value, metavar="{auto,true,false}")
        elif isinstance(default, bool):
            kwargs.update(type=_flag_value, metavar="{true,false}")
        elif isinstance(default, int):
            kwargs.update(type=int)
        elif isinstance(default, float):
            kwargs.update(type=float)
        else:
            kwargs.update(type=_flag_value)
        shown = "required" if field.default is dataclasses.MISSING else f"default: {default}"
        parser.add_argument(flag, help=f"{docs.get(field.name, '')} ({shown})", **kwargs)


def _backend_distributions():
    """`--distribution` offers what the running backend can do (PyTorch: nothing)."""
    import keras

    from adafilter_keras.training.config import BACKEND_DISTRIBUTIONS

    return (None, *BACKEND_DISTRIBUTIONS.get(keras.backend.backend(), ()))


def _field_docs(cls):
    """Field descriptions from the Attributes section of a dataclass docstring."""
    docs, current = {}, None
    for line in (cls.__doc__ or "").splitlines():
        stripped = line.strip()
        head, _, rest = stripped.partition(": ")
        if line.startswith(" " * 8) and not line.startswith(" " * 12) and head.isidentifier():
            current = head
            docs[current] = rest
        elif current and line.startswith(" " * 12):
            docs[current] += " " + stripped
    return {k: v.replace("%", "%%") for k, v in docs.items()}


def train_main(argv=None, **defaults):
    """Runs `adafilter-keras train` with `defaults` as the base settings (for example scripts).

    Command-line flags override `defaults`, and a `--config` file overrides both only where the
    flags are silent.
    """
    parser = build_parser()
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    _start(args)
    return _train(args, defaults)


def _train(args, defaults=None):
    from adafilter_keras.training import processes, train

    try:
        config = _config_from_args(args, defaults)
        process_flags = [
            flag
            for flag in ("coordinator_address", "num_processes", "process_id")
            if getattr(args, flag, None) is not None
        ]
        if process_flags and config.distribution != "multi_process":
            raise ValueError(
                f"--{process_flags[0].replace('_', '-')} is for --distribution multi_process; "
                f"this run's distribution is {config.distribution!r}."
            )
        if config.distribution == "multi_process":
            processes.join(
                getattr(args, "coordinator_address", None),
                getattr(args, "num_processes", None),
                getattr(args, "process_id", None),
                getattr(args, "process_timeout", None),
            )
        print(console.device_line(), flush=True)
        for note in config.notes:
            print(f"note: {note}")
        results = train(config, verbose=0 if args.quiet else "auto")
    except ValueError as error:
        print(f"adafilter-keras train: error: {error}", file=sys.stderr)
        return 2
    print(
        f"test accuracy {100 * results['test_accuracy']:.2f} % "
        f"(best validation epoch {results['best_epoch']}); run directory {results['run_dir']}"
    )
    return 0


def _config_from_args(args, defaults=None):
    """The TrainConfig of `--config` (if given) and the TrainConfig flags (which win)."""
    import dataclasses

    from adafilter_keras.training import TrainConfig

    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    flags = {key: value for key, value in vars(args).items() if key in fields}
    overrides = {**(defaults or {}), **flags}
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    if "dataset" not in overrides:
        raise ValueError("--dataset is required (or a --config file that sets it).")
    return TrainConfig.from_dict(overrides)


def _add_tune(commands):
    from adafilter_keras.tuning import TUNERS

    tune = commands.add_parser(
        "tune",
        help="search one method's hyper-parameters with keras-tuner, on validation accuracy",
        description="Search the hyper-parameters of one method on one dataset with keras-tuner. "
        "Each trial is one `train` run (its own run directory); trials are scored on the best "
        "epoch's validation accuracy, never on the test split. Writes DIRECTORY/best_config.json "
        "for `adafilter-keras train --config`, and DIRECTORY/hparams for TensorBoard's HParams "
        "view. Running the same command again continues an interrupted search. The search space "
        "per method is built in (docs/tuning.md); --space FILE overrides entries of it. Every "
        "TrainConfig flag sets what the search does not change (dataset, method, epochs, ...).",
    )
    tune.add_argument("--tuner", choices=TUNERS, default="random", help="(default: %(default)s)")
    tune.add_argument(
        "--max-trials", type=int, default=10, help="number of trials (default: %(default)s)"
    )
    tune.add_argument(
        "--directory", help="search directory (default: runs/<dataset>/<method>/tune)"
    )
    tune.add_argument("--space", help="JSON search-space file overriding the built-in entries")
    tune.add_argument(
        "--overwrite", action="store_true", help="delete an earlier search in the directory"
    )
    tune.add_argument("--config", help="JSON file of TrainConfig fields the search starts from")
    _add_verbose(tune)
    _add_config_flags(tune)
    tune.set_defaults(run=_tune)


def _tune(args):
    from adafilter_keras.tuning import SearchFailedError, tune

    try:
        config = _config_from_args(args)
        for note in config.notes:
            print(f"note: {note}")
        tune(
            config,
            tuner=args.tuner,
            max_trials=args.max_trials,
            directory=args.directory,
            space_file=args.space,
            overwrite=args.overwrite,
        )
    except (ValueError, SearchFailedError) as error:
        print(f"adafilter-keras tune: error: {error}", file=sys.stderr)
        return 2
    return 0


def _add_compare(commands):
    compare = commands.add_parser(
        "compare",
        help="table of test accuracy per dataset and method over seeds, from run directories",
        description="Read every results.json under the given run directories and print a "
        "Markdown table: dataset x method, mean +- std of test accuracy over seeds, and the "
        "reduction in top-1 error against the baseline method (percentage points).",
    )
    compare.add_argument("runs", nargs="+", help="run directories or results.json files")
    compare.add_argument("--baseline", default="finetune", help="method to compare against")
    compare.add_argument("--csv", help="also write the table to this CSV file")
    _add_verbose(compare)
    compare.set_defaults(run=_compare)


def _compare(args):
    from adafilter_keras.training import compare

    try:
        rows = compare.summarize(compare.collect(args.runs), baseline=args.baseline)
    except ValueError as error:
        print(f"adafilter-keras compare: error: {error}", file=sys.stderr)
        return 2
    print(compare.markdown(rows, baseline=args.baseline))
    if args.csv:
        compare.write_csv(rows, args.csv)
    return 0


_NOT_REPORTED = (
    "Reported accuracy numbers come from the full benchmark (`adafilter-keras benchmark`, "
    "docs/benchmark.md), not from this preset."
)


def _add_demo(commands):
    from adafilter_keras.training.config import METHODS
    from adafilter_keras.transfer import command

    preset = command.PRESETS["demo"]
    demo = commands.add_parser(
        "demo",
        help="the offline quick start: the benchmark's demo preset (under 5 min on a CPU)",
        description="The offline quick start, a preset of the transfer benchmark: pre-train a "
        "SmallResNet on MNIST (cached after the first run), then transfer it to the UCI digits "
        f"of scikit-learn. It runs: {command.describe(preset)}. Prints the benchmark's report: "
        "test accuracy per method and its paired difference against finetune with a 95% "
        "interval and the worst seed; writes runs.jsonl, results.json, table.md and "
        "differences.png. Offline; under 5 minutes on CPU, 2 cores, source model included. "
        "Completed runs are reused when run again. " + _NOT_REPORTED,
    )
    demo.add_argument(
        "--output-dir",
        default="runs/quickstart",
        help="where everything is written (default: %(default)s)",
    )
    demo.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        metavar="METHOD",
        help=f"methods to compare, of {', '.join(METHODS)}; finetune is the baseline "
        f"(default: {' '.join(preset.methods)})",
    )
    demo.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help=f"seeds of every method (default: {' '.join(map(str, preset.seeds))})",
    )
    demo.add_argument(
        "--shots",
        type=int,
        help=f"labelled training images per class (default: {preset.shots})",
    )
    demo.add_argument(
        "--source-epochs",
        type=int,
        help=f"epochs of source pre-training on MNIST (default: {preset.source_epochs})",
    )
    demo.add_argument(
        "--fresh", action="store_true", help="retrain the source model and redo every run"
    )
    _add_verbose(demo)
    demo.set_defaults(run=_demo)


def _demo(args):
    from adafilter_keras.transfer import command, demo

    try:
        settings = command.settings_from(args, preset="demo")
        demo.run(args.output_dir, settings=settings, fresh=args.fresh)
    except ValueError as error:
        print(f"adafilter-keras demo: error: {error}", file=sys.stderr)
        return 2
    return 0


def demo_main(argv=None):
    """Runs `adafilter-keras demo` (the quick start) with `argv` or the command line's flags."""
    return main(["demo", *(sys.argv[1:] if argv is None else argv)])


def _add_benchmark(commands):
    from adafilter_keras.training.config import METHODS
    from adafilter_keras.transfer import command
    from adafilter_keras.transfer.backbones import BACKBONES, LEGACY
    from adafilter_keras.transfer.runs import (
        BENCHMARK_METHODS,
        EXTRA_OPTIMIZERS,
        MATCHED,
        OPTIMIZERS,
    )
    from adafilter_keras.transfer.runs import VARIANT_SETTINGS as WRAP_DEFAULTS
    from adafilter_keras.transfer.tasks import EXTRA_TASKS, REGIMES, TASKS

    benchmark = commands.add_parser(
        "benchmark",
        help="the offline transfer benchmark: every method vs fine-tuning, paired over seeds",
        description="Pre-train backbones on each source (cached), then transfer them to targets "
        "built from data shipped in packages: digits (MNIST -> UCI digits), classes (MNIST 0-4 "
        "-> 5-9) and domain (MNIST -> MNIST blended with photographs). Prints and writes every "
        "method's mean paired difference against finetune with its 95% interval and worst "
        "seed, and whether AdaFilter meets the benchmark's targets. Three suites: 'selection' "
        "(where wrap()'s defaults are chosen, on validation accuracy: "
        + command.describe(command.suite_from(None, "selection"))
        + "; about 1 hour on CPU, 2 cores), 'confirmation' (run once the defaults are fixed; "
        "the numbers the documentation reports: "
        + command.describe(command.suite_from(None, "confirmation"))
        + "; about 1 hour), and 'full' (the 0.1 tables: SmallResNet with BN momentum 0.9 at 16 "
        "px, every method, few-shot and larger regimes; about 2 hours). --quick checks that the "
        "suites run ("
        + command.describe(command.suite_from(None, "quick"))
        + "; under 10 minutes); its numbers are not reported. Offline; runs are appended to "
        "runs.jsonl as they finish, and the same command resumes.",
    )
    benchmark.add_argument(
        "--suite",
        choices=command.SUITES,
        help="the suite to run (default: confirmation, the numbers the documentation reports)",
    )
    benchmark.add_argument(
        "--quick",
        action="store_true",
        help="the quick suite, to check that the suites run (under 10 min on CPU, 2 cores); its "
        "numbers are not the reported ones",
    )
    benchmark.add_argument(
        "--backbones",
        nargs="+",
        metavar="NAME@PIXELS",
        help="backbones instead of the suite's, each with its image size, e.g. resnet32@32 "
        f"(names: {', '.join(name for name in BACKBONES if name != LEGACY)}; {LEGACY} is the "
        "0.1 tables' backbone)",
    )
    benchmark.add_argument(
        "--output-dir",
        default="runs/benchmark",
        help="where runs.jsonl, the cached source models, results.json, table.md and "
        "differences.png go; a second run with the same settings resumes (default: %(default)s)",
    )
    benchmark.add_argument(
        "--tasks",
        nargs="+",
        choices=TASKS + EXTRA_TASKS,
        help=f"default: {' '.join(TASKS)}; also mixed (half the target images in the source's "
        "domain, half shifted: for investigating per-example gates)",
    )
    benchmark.add_argument(
        "--regimes", nargs="+", choices=REGIMES, help=f"default: {' '.join(REGIMES)}"
    )
    benchmark.add_argument(
        "--methods",
        nargs="+",
        choices=BENCHMARK_METHODS,
        help=f"default: {' '.join(METHODS)}; the suites add {MATCHED} (random gates at the "
        "rates the paired adafilter run's gates reached, layer by layer; needs adafilter)",
    )
    benchmark.add_argument(
        "--optimizers",
        nargs="+",
        choices=OPTIMIZERS + EXTRA_OPTIMIZERS,
        help="own: each method's harness recipe; sgd: one plain SGD(0.01, momentum 0.9) for all "
        f"(default: {' '.join(OPTIMIZERS)}); also adam: keras.optimizers.Adam() with its "
        "defaults, for investigations",
    )
    benchmark.add_argument(
        "--seeds", nargs="+", type=int, help="few-shot seeds (default: 0 1 2 3 4)"
    )
    benchmark.add_argument(
        "--large-seeds",
        nargs="+",
        type=int,
        help="seeds of the larger regime (default: 0 1 2; the investigations' directories of "
        "4-epoch runs have 0 1 2 3 4)",
    )
    benchmark.add_argument("--shots", type=int, help="few-shot images per class (default: 10)")
    benchmark.add_argument(
        "--image-size",
        type=int,
        help="image side in pixels, for the source models (pre-trained anew at that size) and "
        "the targets (default: 16; at 32 a run costs about 2-3 times as much)",
    )
    benchmark.add_argument(
        "--source-epochs",
        type=int,
        help="epochs of source pre-training (default: 6); the source models are pre-trained "
        "anew for another value, and it is part of every run's identity",
    )
    benchmark.add_argument(
        "--large-epochs",
        type=int,
        help="epochs of a larger-regime run instead of --large-steps (4 epochs are 312-752 "
        "steps on the three tasks; `--large-epochs 4 --large-seeds 0 1 2 3 4` names the "
        "committed 4-epoch runs); part of every larger run's identity",
    )
    benchmark.add_argument(
        "--large-steps",
        type=int,
        help="training steps of a larger-regime run, the same for every task (default: 2000); "
        "part of every larger run's identity",
    )
    benchmark.add_argument(
        "--wrap-settings",
        metavar="JSON",
        help="wrap() settings for the gated methods instead of its defaults, as a JSON object, "
        "e.g. '{\"initial_rate\": 0.85}'; part of each gated run's identity, so runs under other "
        f"settings are kept apart (keys: {', '.join(WRAP_DEFAULTS)})",
    )
    benchmark.add_argument(
        "--report-only",
        action="store_true",
        help="write the table and figure from the runs done so far, run nothing",
    )
    _add_verbose(benchmark)
    benchmark.set_defaults(run=_benchmark)


def _benchmark(args):
    from adafilter_keras.transfer import command

    try:
        command.run(args)
    except ValueError as error:
        print(f"adafilter-keras benchmark: error: {error}", file=sys.stderr)
        return 2
    return 0


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
    _start(args)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
