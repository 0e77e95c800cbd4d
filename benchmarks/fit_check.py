"""Does `model.fit` train a wrapped ResNet50 on an accelerator? A check in one command.

Usage:
    KERAS_BACKEND=jax python benchmarks/fit_check.py [--steps 200] [--batch-size 32]
                                                     [--image-size 224] [--dtype float32]
                                                     [--output FILE]

Builds `keras.applications.ResNet50(weights=None)` with a new 10-class head, wraps it with
`adafilter_keras.wrap()` and trains it with `model.fit` (Adam) for `--steps` steps on
synthetic images that can be learned: each class is a smooth random colour pattern, and every
image is its class's pattern plus noise. Nothing is downloaded. It then checks, and records:

* the loss falls: the mean training loss of the last epoch is below 0.8 of the first's;
* the gates change: the inference gates of a fixed batch (from `adafilter_keras.gate_model`)
  move by a mean absolute difference above 0.01 between before and after training;
* saving works: a `.keras` save and a reload with `safe_mode=True` give the same predictions
  (largest absolute difference of the logits at most 1e-4 in float32, 5e-2 in a mixed policy).

It prints the step time of the last epoch (ms/step, img/s), the three checks and writes JSON. It
exits with status 1 if a check fails. TensorFlow is not needed.
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

NUM_CLASSES = 10
BATCHES_PER_EPOCH = 10  # the data set is this many batches; epochs repeat it


def synthetic_images(count, image_size, seed=0):
    """`count` images of `NUM_CLASSES` learnable classes and their labels (float32, int32)."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(NUM_CLASSES, 7, 7, 3)).astype("float32")
    repeat = -(-image_size // 7)
    patterns = coarse.repeat(repeat, axis=1).repeat(repeat, axis=2)[:, :image_size, :image_size]
    labels = rng.integers(0, NUM_CLASSES, count).astype("int32")
    noise = rng.normal(scale=1.0, size=(count, image_size, image_size, 3)).astype("float32")
    return patterns[labels] + noise, labels


def build_model(image_size, learning_rate):
    """`wrap()` of ResNet50 (random weights) with a new head, compiled with Adam."""
    import keras

    import adafilter_keras

    base = keras.applications.ResNet50(
        weights=None, include_top=False, pooling="avg", input_shape=(image_size, image_size, 3)
    )
    inputs = keras.Input((image_size, image_size, 3))
    outputs = keras.layers.Dense(NUM_CLASSES, dtype="float32")(base(inputs))
    model = adafilter_keras.wrap(keras.Model(inputs, outputs), seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def mean_gate_change(before, after):
    """Mean absolute difference of two lists of gate arrays (one per gated layer)."""
    return float(np.mean([np.mean(np.abs(a - b)) for a, b in zip(before, after, strict=True)]))


class _EpochTimer:
    """Seconds of each epoch (a Keras callback, made when Keras is imported)."""

    @staticmethod
    def make():
        import keras

        class EpochTimer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._start)

        return EpochTimer()


def run(args):
    """Trains, checks and returns the record (a dict)."""
    import keras

    import adafilter_keras

    keras.config.set_dtype_policy(args.dtype)
    keras.utils.set_random_seed(0)
    x, y = synthetic_images(BATCHES_PER_EPOCH * args.batch_size, args.image_size)
    model = build_model(args.image_size, args.learning_rate)
    probe = x[: args.batch_size]
    gates = adafilter_keras.gate_model(model)
    gates_before = [np.asarray(g) for g in gates.predict(probe, verbose=0)]
    epochs = max(1, -(-args.steps // BATCHES_PER_EPOCH))
    timer = _EpochTimer.make()
    history = model.fit(
        x, y, batch_size=args.batch_size, epochs=epochs, verbose=args.verbose, callbacks=[timer]
    )
    losses = history.history["loss"]
    gates_after = [np.asarray(g) for g in gates.predict(probe, verbose=0)]
    predictions = np.asarray(model.predict(probe, verbose=0), dtype="float32")
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "wrapped.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
        reloaded_predictions = np.asarray(reloaded.predict(probe, verbose=0), dtype="float32")
    change = mean_gate_change(gates_before, gates_after)
    reload_difference = float(np.max(np.abs(predictions - reloaded_predictions)))
    tolerance = 1e-4 if args.dtype == "float32" else 5e-2
    step_seconds = timer.seconds[-1] / BATCHES_PER_EPOCH
    checks = {
        "loss_falls": losses[-1] < 0.8 * losses[0],
        "gates_change": change > 0.01,
        "reload_same_predictions": reload_difference <= tolerance,
    }
    return {
        "machine": _machine_facts(),
        "settings": vars(args) | {"output": str(args.output), "epochs": epochs},
        "steps": epochs * BATCHES_PER_EPOCH,
        "loss_per_epoch": losses,
        "mean_gate_change": change,
        "reload_max_abs_difference": reload_difference,
        "last_epoch_ms_per_step": 1000 * step_seconds,
        "last_epoch_img_per_s": args.batch_size / step_seconds,
        "checks": checks,
    }


def _machine_facts():
    import keras

    facts = {"platform": platform.platform(), "python": platform.python_version()}
    facts |= {"keras": keras.__version__, "backend": keras.backend.backend()}
    if keras.backend.backend() == "jax":
        import jax

        facts["device"] = str(jax.devices()[0].device_kind)
    elif keras.backend.backend() == "torch":
        import torch

        facts["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return facts


def build_parser():
    """Returns the argument parser of this script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dtype", default="float32", help="Keras dtype policy")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="Adam's (default 1e-4)")
    parser.add_argument("--verbose", type=int, default=2, help="model.fit's verbosity")
    parser.add_argument(
        "--output",
        type=pathlib.Path,
        default=pathlib.Path(__file__).parent / "results" / "fit_check.json",
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("steps", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            raise SystemExit(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )
    if args.image_size < 32:
        raise SystemExit(f"--image-size must be at least 32 for ResNet50, got {args.image_size}")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    record = run(args)
    print(
        f"{record['steps']} steps, last epoch {record['last_epoch_ms_per_step']:.1f} ms/step "
        f"({record['last_epoch_img_per_s']:.0f} img/s); loss {record['loss_per_epoch'][0]:.3f} -> "
        f"{record['loss_per_epoch'][-1]:.3f}; mean gate change {record['mean_gate_change']:.4f}; "
        f"reload max |difference| {record['reload_max_abs_difference']:.2e}"
    )
    for check, passed in record["checks"].items():
        print(f"{check}: {'passed' if passed else 'FAILED'}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0 if all(record["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
