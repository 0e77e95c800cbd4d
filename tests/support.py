"""Helpers shared by the tests: a hand-built AdaFilter CNN, NumPy references and gradients."""

import dataclasses
import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from adafilter_keras import AdaFilterConv2D, GateController, GatedBatchNorm

# (filters, input_channels, strides, kernel_size, followed by a GatedBatchNorm) per gated layer,
# in controller order.
SMALL_CNN_LAYERS = [
    (8, 3, 1, 3, True),  # stem
    (8, 8, 1, 3, True),  # block 1, conv 1
    (8, 8, 1, 3, True),  # block 1, conv 2
    (16, 8, 2, 1, True),  # block 2, projection shortcut
    (16, 8, 2, 3, True),  # block 2, conv 1
    (16, 16, 1, 3, True),  # block 2, conv 2
    (16, 16, 1, 3, False),  # a conv with no BN after it: it mixes the branches itself
]


def build_small_cnn(input_shape=(16, 16, 3), num_classes=3, seed=0, pretrained_branch="frozen"):
    """A functional residual CNN assembled by hand from the three AdaFilter layers."""
    controller = GateController(
        filters=[spec[0] for spec in SMALL_CNN_LAYERS],
        input_channels=[spec[1] for spec in SMALL_CNN_LAYERS],
        units=16,
        seed=seed,
        gradient_scale=1.0,
        normalize_inputs=False,
        name="controller",
    )
    state = None

    def gated(x, index, activation=None):
        nonlocal state
        filters, _, strides, kernel_size, has_bn = SMALL_CNN_LAYERS[index]
        gate, hidden, cell = controller(x, states=state, index=index)
        state = [hidden, cell]
        conv = AdaFilterConv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=not has_bn,
            activation=None if has_bn else activation,
            kernel_initializer=keras.initializers.HeNormal(seed=seed + index),
            name=f"conv_{index}",
        )
        if not has_bn:
            return conv(x, gate)
        y = GatedBatchNorm(pretrained_branch=pretrained_branch, name=f"bn_{index}")(
            [*conv(x), gate]
        )
        return keras.layers.Activation(activation)(y) if activation else y

    inputs = keras.Input(input_shape)
    x = gated(inputs, 0, "relu")
    y = gated(x, 1, "relu")
    y = gated(y, 2)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    shortcut = gated(x, 3)
    y = gated(x, 4, "relu")
    y = gated(y, 5)
    x = keras.layers.ReLU()(keras.layers.Add()([shortcut, y]))
    x = gated(x, 6, "relu")
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, outputs, name="small_adafilter_cnn")


def conv2d_reference(x, kernel, bias, strides, padding, dilation_rate=(1, 1)):
    """Plain NumPy 2D convolution (cross-correlation), channels_last, TensorFlow's padding rule."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    (kh, kw, _, filters), (sh, sw), (dh, dw) = kernel.shape, strides, dilation_rate
    extent_h, extent_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "same":
        pads = []
        for size, extent, stride in ((x.shape[1], extent_h, sh), (x.shape[2], extent_w, sw)):
            out = -(-size // stride)
            total = max((out - 1) * stride + extent - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    out_h = (x.shape[1] - extent_h) // sh + 1
    out_w = (x.shape[2] - extent_w) // sw + 1
    out = np.zeros((x.shape[0], out_h, out_w, filters))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i * dh : i * dh + sh * out_h : sh, j * dw : j * dw + sw * out_w : sw, :]
            out += patch[:, :out_h, :out_w, :] @ kernel[i, j]
    return out + (0 if bias is None else np.asarray(bias, np.float64))


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def loss_gradients(model, x, y, loss_fn):
    """Gradients of `loss_fn(y, model(x, training=True))` for `model.trainable_variables`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return [to_numpy(g) for g in tape.gradient(loss, model.trainable_variables)]
    if backend == "jax":
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss_of(trainable):
            outputs, _ = model.stateless_call(trainable, non_trainable, x, training=True)
            return loss_fn(y, outputs)

        return [
            to_numpy(g) for g in jax.grad(loss_of)([v.value for v in model.trainable_variables])
        ]
    if backend == "torch":
        for v in model.trainable_variables:
            v.value.grad = None
        loss_fn(y, model(x, training=True)).backward()
        return [to_numpy(v.value.grad) for v in model.trainable_variables]
    raise NotImplementedError(f"No gradient helper for the {backend} backend")


def build_plain_resnet(input_shape=(32, 32, 3), num_classes=4, name="plain_resnet"):
    """A small residual CNN of plain Keras layers, built the way keras.applications does."""
    layers = keras.layers

    def block(x, filters, stride, prefix):
        shortcut = x
        if stride != 1 or x.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=stride, name=f"{prefix}_0_conv")(x)
            shortcut = layers.BatchNormalization(name=f"{prefix}_0_bn")(shortcut)
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"{prefix}_1_conv")(x)
        y = layers.Activation("relu")(layers.BatchNormalization(name=f"{prefix}_1_bn")(y))
        y = layers.Conv2D(filters, 3, padding="same", name=f"{prefix}_2_conv")(y)
        y = layers.BatchNormalization(name=f"{prefix}_2_bn")(y)
        return layers.Activation("relu")(layers.Add(name=f"{prefix}_add")([shortcut, y]))

    inputs = keras.Input(input_shape)
    x = layers.ZeroPadding2D(1)(inputs)
    x = layers.Conv2D(8, 3, strides=2, name="stem_conv")(x)
    x = layers.Activation("relu")(layers.BatchNormalization(name="stem_bn")(x))
    x = layers.MaxPooling2D(2)(x)
    x = block(x, 8, 1, "block1")
    x = block(x, 16, 2, "block2")
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def randomize_batch_norms(model, seed=0):
    """Gives every BatchNormalization non-trivial statistics, gamma and beta."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.2, shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.2, shape))
    return model


def relative_difference(expected, actual):
    """max |expected - actual| / max |expected|."""
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    return float(np.max(np.abs(expected - actual)) / np.max(np.abs(expected)))


# Tests of code that does not depend on the Keras backend (tf.data pipelines, the command line,
# result tables) run once, in the TensorFlow env, to keep `tox` short.
tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent; runs in the TensorFlow env",
)


def run_python(script, *args, timeout=300):
    """Runs `script` (dedented) in a fresh Python process on the current Keras backend."""
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(*args, timeout=300):
    """Runs `adafilter-keras ARGS...` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "adafilter_keras.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def saved_weights(path):
    """Every array of a `.weights.h5` file, by its path inside the file."""
    import h5py

    values = {}
    with h5py.File(path) as handle:
        handle.visititems(
            lambda name, item: (
                values.__setitem__(name, np.asarray(item)) if hasattr(item, "shape") else None
            )
        )
    return values


def run_main(capsys, *args):
    """Runs `adafilter-keras ARGS...` in this process (`cli.main`), like `run_cli` without a
    process: a result with `returncode`, `stdout` and `stderr`."""
    import types

    from adafilter_keras import cli

    try:
        status = cli.main(list(args))
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return types.SimpleNamespace(returncode=status, stdout=out, stderr=err)


def tiny_benchmark(**changes):
    """Benchmark settings of a few seconds: digits, few-shot, 2 seeds, 8 px, 4 steps."""
    from adafilter_keras.transfer.runs import BenchmarkSettings

    settings = BenchmarkSettings(
        tasks=("digits",),
        regimes=("few_shot",),
        methods=("finetune", "adafilter"),
        optimizers=("sgd",),
        seeds=(0, 1),
        shots=2,
        image_size=8,
        width=4,
        batch_size=8,
        few_shot_steps=4,
        source_epochs=1,
    )
    return dataclasses.replace(settings, **changes)


BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name):
    """Imports `benchmarks/<name>.py` as a module (the scripts measure only as `__main__`)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # a script may import another beside it
    spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
