"""`tune()`: a keras-tuner search over the training harness, on validation accuracy only."""

import dataclasses
import json
import pathlib
import shutil
import sys
import time

import keras_tuner

from adafilter_keras.training.config import TrainConfig
from adafilter_keras.tuning import space as spaces
from adafilter_keras.tuning.hypermodel import TrainHyperModel

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVE = "val_accuracy"
BEST_CONFIG = "best_config.json"


class SearchFailedError(RuntimeError):
    """No trial of a search finished; the message has the last trial's error."""


@dataclasses.dataclass
class TuneResult:
    """What `tune()` produced.

    Attributes:
        best_config: The best trial's `TrainConfig` with the full epoch budget and the default
            run directory: `adafilter-keras train --config best_config_path` trains it.
        best_config_path: Where it was written.
        best_validation_accuracy: The best trial's validation accuracy.
        trials: One dict per finished trial: `trial_id`, `status`, `values`, `val_accuracy`,
            `run_dir`, in trial order.
        directory: The search directory.
    """

    best_config: TrainConfig
    best_config_path: pathlib.Path
    best_validation_accuracy: float
    trials: list
    directory: pathlib.Path


class _HarnessTrials:
    """Runs each trial through the harness, in its own run directory; logs HParams."""

    def __init__(self, *args, trials_dir, hparams_dir, stream, **kwargs):
        self._trials_dir = pathlib.Path(trials_dir)
        self._hparams_dir = pathlib.Path(hparams_dir)
        self._stream = stream
        super().__init__(*args, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        config = dataclasses.replace(
            self.hypermodel.build(hp), run_dir=str(self._trials_dir / _trial_name(trial.trial_id))
        )
        started = time.time()
        shown = ", ".join(
            f"{k}={_short(v)}" for k, v in hp.values.items() if not k.startswith("tuner/")
        )
        print(
            f"trial {trial.trial_id} ({config.epochs} epochs): {shown}",
            file=self._stream,
            flush=True,
        )
        metrics = self.hypermodel.fit(hp, config)
        print(
            f"trial {trial.trial_id}: validation accuracy {100 * metrics[OBJECTIVE]:.2f} % "
            f"({time.time() - started:.0f} s)",
            file=self._stream,
            flush=True,
        )
        _write_hparams(self._hparams_dir, trial.trial_id, hp.values, metrics[OBJECTIVE])
        return metrics


def _trial_name(trial_id):
    """The name of a trial's run directory and HParams session."""
    return f"trial_{trial_id}"


def _short(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def tune(
    base,
    *,
    tuner="random",
    max_trials=10,
    directory=None,
    space_file=None,
    overwrite=False,
    seed=None,
    stream=None,
):
    """Searches the hyper-parameters of `base.method` on `base.dataset`'s validation split.

    Every trial is one `train()` run in `directory/trials/trial_<id>` (with results.json and
    TensorBoard logs); trials are scored on validation accuracy only (the best epoch's), never on
    the test split. `directory/hparams` holds the TensorBoard HParams view of the trials. A search
    that was interrupted continues when called again with the same settings: finished trials are
    kept, the interrupted one resumes from its last completed epoch.

    Args:
        base: A `TrainConfig` (or dict of its fields): dataset, method, epochs and every setting
            the search does not change.
        tuner: `"random"`, `"bayesian"` or `"hyperband"` (trial budgets up to `base.epochs`,
            each trial trained from scratch at its budget).
        max_trials: Number of trials.
        directory: The search directory; default `runs/<dataset>/<method>/tune`.
        space_file: Optional JSON search-space file (see `adafilter_keras.tuning.space`).
        overwrite: Delete an earlier search in `directory` instead of continuing it.
        seed: Seed of the tuner's sampling (default `base.seed`).
        stream: Where progress is printed (default stdout).

    Returns:
        A `TuneResult`; the best configuration is also written to `directory/best_config.json`.

    Raises:
        ValueError: Bad arguments, an invalid search space, or a directory holding a search with
            other settings; all raised before the first trial.
        SearchFailedError: No trial finished.
    """
    stream = stream or sys.stdout
    if isinstance(base, dict):
        base = TrainConfig.from_dict(base)
    if tuner not in TUNERS:
        raise ValueError(f"`tuner` must be one of {TUNERS}. Received: tuner={tuner!r}")
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ValueError(f"`max_trials` must be an int >= 1. Received: max_trials={max_trials!r}")
    if not base.validation_fraction > 0:
        raise ValueError(
            "A search selects on validation accuracy, so `validation_fraction` must be > 0. "
            f"Received: validation_fraction={base.validation_fraction!r}"
        )
    space = spaces.load_space(base.method, space_file)
    spaces.check_against(base, space)
    directory = pathlib.Path(directory) if directory else _default_directory(base)
    settings = {"tuner": tuner, "base": base.to_dict(), "space": space}
    _claim(directory, settings, overwrite)

    hypermodel = TrainHyperModel(base, space)
    common = dict(
        hypermodel=hypermodel,
        objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
        directory=str(directory),
        project_name="keras_tuner",
        overwrite=False,
        seed=base.seed if seed is None else seed,
        trials_dir=directory / "trials",
        hparams_dir=directory / "hparams",
        stream=stream,
        max_consecutive_failed_trials=3,
    )
    if tuner == "hyperband":
        search = _tuner_class(keras_tuner.Hyperband)(max_epochs=base.epochs, factor=3, **common)
        search.oracle.max_trials = max_trials
    else:
        cls = keras_tuner.RandomSearch if tuner == "random" else keras_tuner.BayesianOptimization
        search = _tuner_class(cls)(max_trials=max_trials, **common)
    _write_hparams_config(directory / "hparams", space)
    done = sum(t.status == "COMPLETED" for t in search.oracle.trials.values())
    if done:
        print(
            f"Continuing the search in {directory}: {done} trials already done.",
            file=stream,
            flush=True,
        )
    search.search(verbose=0)

    trials = _trial_rows(search, directory)
    finished = [t for t in trials if t[OBJECTIVE] is not None]
    if not finished:
        failed = [t for t in search.oracle.trials.values() if t.message]
        reason = failed[-1].message.strip().splitlines()[-1] if failed else "no trial finished"
        raise SearchFailedError(f"No trial of the search in {directory} finished: {reason}")
    best_trial = search.oracle.get_best_trials(1)[0]
    values = {
        k: v for k, v in best_trial.hyperparameters.values.items() if not k.startswith("tuner/")
    }
    best_config = dataclasses.replace(base, **values, run_dir=None)
    best_path = directory / BEST_CONFIG
    best_path.write_text(json.dumps(best_config.to_dict(), indent=2) + "\n")
    best_value = best_trial.score
    print(_summary(trials, best_trial.trial_id, best_path), file=stream, flush=True)
    return TuneResult(best_config, best_path, best_value, trials, directory)


def _tuner_class(base_class):
    return type(f"Harness{base_class.__name__}", (_HarnessTrials, base_class), {})


def _default_directory(base):
    return base.resolved_run_dir.parent / "tune"


def _claim(directory, settings, overwrite):
    """Refuses to continue a search made with other settings; writes the settings file."""
    record = directory / "search.json"
    if overwrite and directory.exists():
        shutil.rmtree(directory)
    if record.is_file():
        previous = json.loads(record.read_text())
        current = json.loads(json.dumps(settings))  # as it reads back from the file
        if previous != current:
            changed = [key for key in ("tuner", "space") if previous.get(key) != current[key]]
            changed += sorted(
                key
                for key, value in current["base"].items()
                if previous.get("base", {}).get(key) != value
            )
            raise ValueError(
                f"{directory} holds a search with other settings (changed: "
                f"{', '.join(changed) or 'format'}). Continue it with the same settings, pass "
                "--overwrite to start over, or choose another --directory."
            )
    directory.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=2) + "\n")


def _trial_rows(search, directory):
    rows = []
    for trial_id, trial in sorted(search.oracle.trials.items()):
        rows.append(
            {
                "trial_id": trial_id,
                "status": str(trial.status),
                "values": dict(trial.hyperparameters.values),
                OBJECTIVE: trial.score,
                "run_dir": str(directory / "trials" / _trial_name(trial_id)),
            }
        )
    return rows


def _summary(trials, best_id, best_path):
    lines = ["", "| trial | validation accuracy % | settings |", "|---|---|---|"]
    for row in sorted(trials, key=lambda r: -(r[OBJECTIVE] or -1.0)):
        shown = ", ".join(
            f"{k}={_short(v)}" for k, v in row["values"].items() if not k.startswith("tuner/")
        )
        score = "failed" if row[OBJECTIVE] is None else f"{100 * row[OBJECTIVE]:.2f}"
        marker = " (best)" if row["trial_id"] == best_id else ""
        lines.append(f"| {row['trial_id']}{marker} | {score} | {shown} |")
    lines.append(
        f"\nBest configuration written to {best_path}; train it with the full budget and score "
        f"the test split once:\n  adafilter-keras train --config {best_path}"
    )
    return "\n".join(lines)


def _hparam(name, spec):
    from tensorboard.plugins.hparams import api as hp_api

    if spec["type"] in ("float", "int"):
        return hp_api.HParam(name, hp_api.RealInterval(float(spec["min"]), float(spec["max"])))
    values = spec["values"] if spec["type"] == "choice" else [spec["value"]]
    return hp_api.HParam(name, hp_api.Discrete([_loggable(v) for v in values]))


def _loggable(value):
    return "none" if value is None else value


def _write_hparams_config(log_dir, space):
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    with tf.summary.create_file_writer(str(log_dir)).as_default():
        hp_api.hparams_config(
            hparams=[_hparam(name, spec) for name, spec in space.items()],
            metrics=[hp_api.Metric(OBJECTIVE, display_name="validation accuracy")],
        )


def _write_hparams(log_dir, trial_id, values, objective):
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    shown = {k: _loggable(v) for k, v in values.items() if not k.startswith("tuner/")}
    name = _trial_name(trial_id)
    with tf.summary.create_file_writer(str(log_dir / name)).as_default():
        hp_api.hparams(shown, trial_id=name)
        tf.summary.scalar(OBJECTIVE, objective, step=0)
