"""The gates learn what they should: a task whose right policy is known by construction, and the
mechanisms the default settings rely on (gradient scale, starting rate, inference rule, warm-up,
no controller gradient into the backbone)."""

import keras
import numpy as np
import pytest
from support import loss_gradients, to_numpy

import adafilter_keras
from adafilter_keras import GateController

FILTERS = 4


def _two_kinds(rng, count):
    """Inputs of two kinds, told apart by the mean of channel 1 (+1 or -1): kind 0 and kind 1."""
    kinds = rng.integers(0, 2, size=count)
    x = rng.normal(size=(count, 6, 6, 2)).astype("float32")
    x[..., 1] = 0.3 * x[..., 1] + np.where(kinds == 0, 1.0, -1.0)[:, None, None]
    return x, kinds


def test_learned_gates_separate_inputs_that_need_different_filters(rng):
    # One 1x1 conv with pre-trained kernel S. Kind 0's target is S * x (the pre-trained filter is
    # right), kind 1's is T * x for another kernel T (only a fine-tuned filter can be right).
    # The right policy is known: pre-trained for kind 0, fine-tuned for kind 1.
    inputs = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(FILTERS, 1, use_bias=False, name="conv")
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(conv(inputs)))
    source = rng.normal(size=(1, 1, 2, FILTERS)).astype("float32")
    target = source + rng.normal(size=source.shape).astype("float32")
    conv.set_weights([source])
    wrapped = adafilter_keras.wrap(model, seed=0)  # every gate setting at its default

    def labels(x, kinds):
        pooled = x.mean(axis=(1, 2))
        return np.where(kinds[:, None] == 0, pooled @ source[0, 0], pooled @ target[0, 0])

    wrapped.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    x, kinds = _two_kinds(rng, 512)
    wrapped.fit(x, labels(x, kinds), batch_size=32, epochs=12, verbose=0, shuffle=False)

    x_test, kinds_test = _two_kinds(np.random.default_rng(1), 256)
    (gates,) = [to_numpy(g) for g in [adafilter_keras.gate_model(wrapped)(x_test)]]
    assert gates[kinds_test == 0].mean() < 0.2, gates[kinds_test == 0].mean(axis=0)
    assert gates[kinds_test == 1].mean() > 0.8, gates[kinds_test == 1].mean(axis=0)
    # And the model is right for both kinds with those gates.
    error = np.abs(to_numpy(wrapped(x_test)) - labels(x_test, kinds_test)).mean()
    spread = np.abs(labels(x_test, kinds_test)).mean()
    assert error < 0.1 * spread


def _controller(**kwargs):
    # The layer's neutral settings, not wrap()'s defaults: gradient and inputs as they are.
    kwargs = {"gradient_scale": 1.0, "normalize_inputs": False, **kwargs}
    return GateController(filters=[FILTERS], input_channels=[2], units=8, seed=0, **kwargs)


def _logit_gradient(controller, x):
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradient taken with tf.GradientTape")
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        gate, _, _ = controller(x, index=0, training=True)
        loss = tf.reduce_sum(gate * tf.range(1.0, FILTERS + 1.0))
    weights = tape.gradient(loss, controller.heads[0].kernel)
    inputs = tape.gradient(loss, x)
    return to_numpy(weights), inputs


def test_gradient_scale_multiplies_the_controller_gradient_and_nothing_reaches_the_input(rng):
    x = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    plain, scaled = _controller(), _controller(gradient_scale=7.0)
    x_probe = keras.ops.convert_to_tensor(x)
    plain(x_probe, index=0)
    scaled(x_probe, index=0)
    scaled.set_weights(plain.get_weights())
    g_plain, to_input = _logit_gradient(plain, x)
    g_scaled, _ = _logit_gradient(scaled, x)
    assert np.abs(g_plain).max() > 0
    np.testing.assert_allclose(g_scaled, 7.0 * g_plain, rtol=1e-4, atol=1e-7)
    assert to_input is None or not np.any(to_numpy(to_input))


def test_initial_rate_sets_the_starting_probability_of_the_fine_tuned_filter(rng):
    controller = _controller(initial_rate=0.8)
    x = keras.ops.convert_to_tensor(rng.normal(size=(4000, 6, 6, 2)).astype("float32") * 0.01)
    gates, _, _ = controller(x, index=0, training=True)
    assert abs(to_numpy(gates).mean() - 0.8) < 0.03
    expected, _, _ = controller(x, index=0)
    np.testing.assert_allclose(to_numpy(expected).mean(), 0.8, atol=0.02)


@pytest.mark.parametrize("rule", ["expected", "threshold"])
def test_inference_rules(rng, rule):
    controller = _controller(inference=rule)
    x = keras.ops.convert_to_tensor(rng.normal(size=(16, 6, 6, 2)).astype("float32"))
    gates = to_numpy(controller(x, index=0)[0])
    hidden, _ = controller.cell(controller.projections[0](keras.ops.mean(x, axis=(1, 2))), [
        keras.ops.zeros((16, 8)), keras.ops.zeros((16, 8))
    ])  # fmt: skip
    logits = to_numpy(controller.heads[0](hidden))
    reference = 1 / (1 + np.exp(-logits)) if rule == "expected" else (logits > 0).astype("float32")
    np.testing.assert_allclose(gates, reference, rtol=1e-5, atol=1e-6)


def test_warmup_forces_fine_tuned_gates_then_samples(rng):
    controller = _controller(warmup_steps=3, initial_rate=0.2)
    x = keras.ops.convert_to_tensor(rng.normal(size=(64, 6, 6, 2)).astype("float32"))
    means = [float(to_numpy(controller(x, index=0, training=True)[0]).mean()) for _ in range(5)]
    assert means[:3] == [1.0, 1.0, 1.0]
    assert max(means[3:]) < 0.5


def test_gate_report_measures_input_dependence_and_agreement(rng):
    controller = _controller(inference="threshold")
    x = keras.ops.convert_to_tensor(rng.normal(size=(64, 6, 6, 2)).astype("float32"))
    controller(x, index=0)  # builds it
    controller.start_statistics()
    controller(x, index=0, training=True)
    (report,) = controller.gate_report()
    gates = to_numpy(controller(x, index=0, training=False)[0])
    decided = gates.mean(axis=0)
    np.testing.assert_allclose(
        report["disagreement"], np.mean(2 * decided * (1 - decided)), atol=1e-5
    )
    assert 0.0 <= report["train_inference_agreement"] <= 1.0
    assert 0.0 < report["fraction_finetuned"] < 1.0
    controller.reset_gate_statistics()
    assert np.isnan(controller.gate_report()[0]["fraction_finetuned"])


def test_probability_spread_is_the_mean_over_filters_of_the_batch_standard_deviation(rng):
    # Without input normalization, the inference gate under "expected" is the training
    # probability sigmoid(logit) of the same batch.
    controller = _controller(inference="expected")
    x = keras.ops.convert_to_tensor(rng.normal(size=(64, 6, 6, 2)).astype("float32"))
    controller(x, index=0)  # builds it
    controller.start_statistics()
    controller(x, index=0, training=True)
    probability = to_numpy(controller(x, index=0, training=False)[0])
    assert probability.std(axis=0).mean() > 1e-3
    np.testing.assert_allclose(
        controller.gate_report()[0]["probability_spread"],
        probability.std(axis=0).mean(),
        rtol=1e-4,
    )


def _head_bias_gradients(model, x, y):
    """Per gated layer, the gradient of the controller head's bias, after one SGD step."""
    from adafilter_keras.inspection import find_controller

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.SGD(0.1), loss)
    model.train_on_batch(x, y)  # moves the fine-tuned filters away from the pre-trained ones
    grads = loss_gradients(model, x, y, loss)
    lookup = {id(v): g for v, g in zip(model.trainable_variables, grads, strict=True)}
    return [lookup[id(head.bias)] for head in find_controller(model).heads]


def _wrapped_small_resnet(width, **settings):
    from adafilter_keras.backbones.models import small_resnet

    keras.utils.set_random_seed(0)
    backbone = small_resnet((16, 16, 3), width=width)
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(backbone(inputs)))
    return adafilter_keras.wrap(model, seed=0, **settings)


def _median_rms(gradients):
    return float(np.median([np.sqrt(np.mean(np.square(g))) for g in gradients]))


def test_normalized_controller_gradient_does_not_depend_on_the_backbone_width(rng):
    x = rng.uniform(size=(8, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 3, 8)
    rms = {}
    for normalize in (True, False):
        settings = {"normalize_controller_gradient": normalize, "gradient_scale": 0.3}
        for width in (4, 16):
            gradients = _head_bias_gradients(_wrapped_small_resnet(width, **settings), x, y)
            rms[normalize, width] = _median_rms(gradients)
    # Normalized: every head's bias gets a gradient of RMS `gradient_scale` whatever the width,
    # so the controller's first SGD update is the same size on both backbones.
    assert rms[True, 4] == pytest.approx(0.3, rel=1e-3)
    assert rms[True, 16] == pytest.approx(0.3, rel=1e-3)
    # Only multiplied, it is the loss gradient's size times 0.3: far smaller on these backbones.
    assert max(rms[False, 4], rms[False, 16]) < 0.01


def test_normalized_gradient_keeps_the_direction_and_sets_the_bias_gradient_size(rng):
    from adafilter_keras.layers.gate_sampling import normalize_gradient

    weights = rng.normal(size=(6, 5)).astype("float32")

    def gradient(normalize, loss_scale):
        logits = keras.Variable(weights)

        def loss_fn():
            output = normalize_gradient(logits, 2.0) if normalize else logits
            return loss_scale * keras.ops.sum(keras.ops.sin(output))

        return to_numpy(_gradient_of(loss_fn, logits))

    plain = gradient(False, 1.0)
    for loss_scale in (1e-4, 1e3):
        normalized = gradient(True, loss_scale)
        np.testing.assert_allclose(np.sqrt(np.mean(normalized.sum(axis=0) ** 2)), 2.0, rtol=1e-4)
        factor = normalized.ravel() @ plain.ravel() / (plain.ravel() @ plain.ravel())
        np.testing.assert_allclose(normalized, factor * plain, rtol=1e-4, atol=1e-6)
    zero = gradient(True, 0.0)
    assert not np.any(zero) and np.all(np.isfinite(zero))


def _gradient_of(loss_fn, variable):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        return tape.gradient(loss, variable.value)
    if backend == "jax":
        import jax

        def stateless(value):
            with keras.StatelessScope(state_mapping=[(variable, value)]):
                return loss_fn()

        return jax.grad(stateless)(variable.value)
    import torch

    value = variable.value
    loss = loss_fn()
    return torch.autograd.grad(loss, value)[0]
