"""`train(config)`: one run, from dataset name to a run directory with results.json."""

import contextlib
import csv
import hashlib
import json
import math
import platform
import time

import keras
import numpy as np

from adafilter_keras import console, data, validation
from adafilter_keras.inspection import controller_or_none, count_parameters
from adafilter_keras.training import callbacks as run_callbacks
from adafilter_keras.training import processes
from adafilter_keras.training.config import BACKEND_DISTRIBUTIONS, TrainConfig
from adafilter_keras.training.methods import HEAD, build_model
from adafilter_keras.training.optimizers import SGDWithMultipliers, WarmupDecay
from adafilter_keras.version import __version__

BEST_WEIGHTS = "best.weights.h5"
LAST_WEIGHTS = "last.weights.h5"
SPLIT_FILE = "split.json"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the last good checkpoint."""


def train(config, verbose="auto", callbacks=()):
    """Runs one training run and writes its run directory.

    The run directory holds `config.json` (the resolved config), `results.json` (dataset,
    method, seed, versions, backbone, parameter counts, best validation accuracy and its epoch,
    the test accuracy scored once at the end with the best-on-validation weights, gate
    statistics, wall time), `log.csv`, TensorBoard logs under `logs/`, `best.weights.h5`, and,
    while a run is unfinished, `backup/` from which the same command resumes.

    Args:
        config: A `TrainConfig` (or a dict of its fields).
        verbose: Passed to `model.fit`; `"auto"` shows a progress bar in a terminal or notebook
            and one line per epoch when the output goes to a file or a pipe.
        callbacks: Extra Keras callbacks, run after the harness's own.

    Returns:
        The results dict also written to `results.json`.

    Raises:
        ValueError: Bad configuration, unknown dataset or backbone, data or weights unavailable:
            all raised before training starts.
        TrainingDivergedError: The loss became NaN; the last good checkpoint is kept.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    started = time.time()
    strategy_scope = _distribution_scope(config)
    group = processes.current()
    run_dir = config.resolved_run_dir
    split_path = run_dir / SPLIT_FILE
    if not group.is_chief:
        # Every process keeps its own checkpoints (the same weights) so that each can resume
        # and restore the best epoch; only process 0 writes results.json and prints.
        run_dir = run_dir / "processes" / str(group.process_id)
        verbose = 0
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(config.mixed_precision)
    dataset = load_data(config, split=_read_split(split_path))
    say = print if verbose else lambda text: None
    for note in dataset.notes:
        say(f"note: {note}")
    if dataset.split is not None and group.is_chief:
        _write_split(split_path, dataset, say=say)
    train_data, validation_data, test_data = (
        _one_hot(ds, dataset.num_classes) if ds is not None else None
        for ds in (dataset.train, dataset.validation, dataset.test)
    )
    round_batches = math.ceil
    if group.num_processes > 1:
        train_data, validation_data, test_data = (
            _process_share(ds, dataset.sizes[kind], config.batch_size, kind, group)
            if ds is not None
            else None
            for ds, kind in zip(
                (train_data, validation_data, test_data),
                ("train", "validation", "test"),
                strict=True,
            )
        )
        round_batches = math.floor
        say(
            f"note: {group.num_processes} processes, {config.batch_size // group.num_processes} "
            "images of each batch per process; each epoch drops its last incomplete batch"
        )
    most_steps = round_batches(dataset.sizes["train"] / config.batch_size)
    steps_per_epoch = min(config.steps_per_epoch or most_steps, most_steps)
    with strategy_scope:
        model = build_model(config, dataset.num_classes)
        model.compile(
            optimizer=_optimizer(config, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=config.label_smoothing
            ),
            # Weighted: the padded evaluation batches of several processes carry weights.
            **{"weighted_metrics" if group.num_processes > 1 else "metrics": ["accuracy"]},
            jit_compile=config.jit_compile,
        )

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    history_so_far = _read_csv_log(run_dir / "log.csv")
    monitor = "val_accuracy" if validation_data is not None else "accuracy"
    best_so_far = max((row.get(monitor, -math.inf) for row in history_so_far), default=None)
    gates = None
    if controller_or_none(model) is not None:
        probe = tuple(np.asarray(part) for part in next(iter(train_data.take(1))))
        gates = run_callbacks.GateStatistics(run_dir / "logs" / "gates", probe=probe)
    nan_guard = run_callbacks.StopOnNaN(
        lambda epoch, batch: TrainingDivergedError(
            f"The loss became NaN or infinite at epoch {epoch + 1}, batch {batch}; training "
            f"stopped. The last good checkpoints are {run_dir / BEST_WEIGHTS} (best on "
            f"validation so far) and {run_dir / 'backup'} (the last completed epoch, from "
            "which the same command resumes). Lower learning_rate (now "
            f"{config.learning_rate}) or check the data."
        )
    )
    callback_list = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        nan_guard,
        *([gates] if gates else []),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / BEST_WEIGHTS),
            monitor=monitor,
            mode="max",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best_so_far,
        ),
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
        *callbacks,
    ]
    if verbose == "auto":
        verbose = 1 if console.is_terminal() else 0
        if not verbose:
            callback_list.append(console.epoch_line_callback())
    fit_started = time.time()
    history = model.fit(
        train_data.repeat() if config.steps_per_epoch else train_data,
        validation_data=validation_data,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch if config.steps_per_epoch else None,
        callbacks=callback_list,
        verbose=verbose,
        shuffle=False,  # the training pipeline shuffles itself
    )
    model.save_weights(str(run_dir / LAST_WEIGHTS))
    rows = _read_csv_log(run_dir / "log.csv")
    if (run_dir / BEST_WEIGHTS).exists():
        model.load_weights(str(run_dir / BEST_WEIGHTS))
    test_loss, test_accuracy = model.evaluate(test_data, verbose=0)
    results = _results(config, dataset, model, rows, monitor, gates, history, test_accuracy)
    results.update(
        test_loss=float(test_loss),
        wall_time_s=time.time() - started,
        fit_time_s=time.time() - fit_started,
        run_dir=str(run_dir),
        processes=group.num_processes,
    )
    if group.is_chief:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _results(config, dataset, model, rows, monitor, gates, history, test_accuracy):
    best = max(rows, key=lambda row: row.get(monitor, -math.inf)) if rows else {}
    gate_summary = None
    if gates is not None and gates.history:
        last = gates.history[-1]
        report = gates.reports[-1]["layers"]
        gate_summary = {
            "layers": gates.layer_names,
            "fraction_finetuned_last_epoch": last,
            "mean_fraction_finetuned_last_epoch": float(np.nanmean(last)),
            "mean_last_epoch": {
                key: float(np.nanmean([layer[key] for layer in report])) for key in report[0]
            },
            "per_epoch": gates.reports,
        }
    return {
        "dataset": dataset.name,
        "method": config.method,
        "seed": config.seed,
        "backbone": config.backbone,
        "weights": config.resolved_weights,
        "status": "completed",
        "epochs": config.epochs,
        "epochs_in_log": len(rows),
        "sizes": dataset.sizes,
        "num_classes": dataset.num_classes,
        "parameters": count_parameters(model),
        "best_epoch": int(best["epoch"]) + 1 if "epoch" in best else None,
        "best_validation_accuracy": best.get("val_accuracy"),
        "test_accuracy": float(test_accuracy),
        "gates": gate_summary,
        "split_digest": split_digest(dataset.split),
        "versions": versions(),
        "config": config.to_dict(),
    }


def load_data(config, split=None):
    """The dataset a run of `config` trains on: `data.load` with the config's settings.

    Args:
        config: A `TrainConfig`.
        split: A recorded split to reuse (a resumed run), or None.

    Returns:
        What `data.load` returns.
    """
    return data.load(
        config.dataset,
        image_size=config.image_size,
        batch_size=config.batch_size,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
        data_dir=config.data_dir,
        shots_per_class=config.shots_per_class,
        rest_as_test=config.rest_as_test,
        normalization=data.normalization_for(
            "resnet" if config.backbone == "SmallResNet" else config.backbone
        ),
        cache=config.cache,
        test_fraction=config.test_fraction,
        split=split,
    )


def split_digest(split):
    """A short fingerprint of a folder split's test files (None when the data has its own)."""
    if split is None:
        return None
    text = "\n".join(sorted(split["test"]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_split(path):
    if not path.exists():
        return None
    return validation.json_object_file(path, "Split file", hint=" written by an earlier run")


def _write_split(path, dataset, say):
    """Writes a folder's test split to the run directory (once) and says where images went."""
    fresh = not path.exists()
    if fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataset.split, indent=1) + "\n")
    sizes = dataset.sizes
    how = f"{100 * dataset.split['test_fraction']:.0f} % of each class"
    say(
        f"{dataset.origin} has no train/ and test/ sub-folders: {sizes['train']} images train, "
        f"{sizes['validation']} validate, {sizes['test']} test ({how}, fixed seed); "
        f"{'split written to' if fresh else 'the split of'} {path}"
        + ("" if fresh else " is used again")
    )


def versions():
    """Versions of the libraries a result depends on."""
    import tensorflow as tf

    return {
        "adafilter_keras": __version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }


def _optimizer(config, steps_per_epoch):
    schedule = WarmupDecay(
        peak=config.learning_rate,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=config.resolved_warmup_epochs * steps_per_epoch,
        kind=config.schedule,
        boundaries=[e * steps_per_epoch for e in config.resolved_step_epochs()],
        factor=config.step_factor,
    )
    return SGDWithMultipliers(
        learning_rate=schedule,
        momentum=config.momentum,
        weight_decay_l2=0.0 if config.method == "l2sp" else config.weight_decay,
        multipliers={
            f"^{HEAD}/": config.head_lr_multiplier,
            "gate_controller": config.controller_lr_multiplier,
        },
    )


def _one_hot(dataset, num_classes):
    import tensorflow as tf

    return dataset.map(lambda x, y: (x, tf.one_hot(y, num_classes)))


def _distribution_scope(config):
    """Sets up `config.distribution` (joining the process group first for `multi_process`)."""
    backend = keras.backend.backend()
    if config.distribution is None:
        return contextlib.nullcontext()
    offered = BACKEND_DISTRIBUTIONS.get(backend, ())
    if config.distribution not in offered:
        needs = next(
            name
            for name, choices in BACKEND_DISTRIBUTIONS.items()
            if config.distribution in choices
        )
        other = (
            f"use {' or '.join(repr(choice) for choice in offered)}"
            if offered
            else "train without a distribution (one process)"
        )
        raise ValueError(
            f"distribution={config.distribution!r} needs the {_BACKEND_NAMES[needs]} backend; on "
            f"{backend}, {other}."
        )
    if config.distribution in ("mirrored", "multi_worker"):
        import tensorflow as tf

        strategy = (
            tf.distribute.MirroredStrategy()
            if config.distribution == "mirrored"
            else tf.distribute.MultiWorkerMirroredStrategy()
        )
        return strategy.scope()
    if config.distribution == "multi_process":
        group = processes.join()
        if config.batch_size % group.num_processes:
            raise ValueError(
                f"batch_size ({config.batch_size}) is the batch of all {group.num_processes} "
                "processes together and must divide evenly among them; choose a multiple of "
                f"{group.num_processes}."
            )
    # Several processes: the harness gives each its share of every batch (`_process_share`).
    keras.distribution.set_distribution(keras.distribution.DataParallel(auto_shard_dataset=False))
    return contextlib.nullcontext()


_BACKEND_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}


def _process_share(dataset, size, batch_size, kind, group):
    """This process's share of every batch, when several processes train one model.

    Every batch must split evenly, so training drops its last incomplete batch, and evaluation
    pads it with weight-0 zeros and weighs the real images by padded/real count (accuracy, a
    weighted mean, and loss, a sum over the padded batch size, then equal the unpadded ones).
    Process `i` keeps the `i`-th slice of each batch: the processes together see the batches one
    process would.
    """
    import tensorflow as tf

    if kind == "train":
        dataset = dataset.take(size // batch_size)
    else:
        padded = math.ceil(size / batch_size) * batch_size
        weight = padded / size
        zeros = tuple(tf.zeros(part.shape[1:], part.dtype) for part in dataset.element_spec)
        real = dataset.unbatch().map(lambda x, y: (x, y, tf.constant(weight, tf.float32)))
        pad = tf.data.Dataset.from_tensors((*zeros, tf.constant(0.0))).repeat(padded - size)
        dataset = (
            real.concatenate(pad)
            .batch(batch_size)
            .apply(tf.data.experimental.assert_cardinality(padded // batch_size))
        )
    share = batch_size // group.num_processes
    first = group.process_id * share
    return dataset.map(lambda *parts: tuple(part[first : first + share] for part in parts))


def _read_csv_log(path):
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = []
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value)
                except (TypeError, ValueError):
                    parsed[key] = value
            rows.append(parsed)
        return rows
