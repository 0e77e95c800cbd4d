"""GateSettings: one name, default and check per gate setting, read by wrap() and the layers."""

import dataclasses

import keras
import numpy as np
import pytest
from support import to_numpy

import adafilter_keras as ak
from adafilter_keras.layers import settings as gate_settings


def test_defaults_are_the_recommended_ones_and_values_are_canonical():
    defaults = ak.GateSettings()
    assert defaults.as_dict() == {
        "controller_units": 64,
        "temperature": 1.0,
        "pretrained_bn": "adapt",
        "policy": "learned",
        "random_rate": 0.5,
        "granularity": "filter",
        "initial_rate": 0.8,
        "gradient_scale": 300.0,
        "normalize_controller_gradient": False,
        "inference": "expected",
        "gate_warmup_steps": 0,
        "normalize_controller_inputs": True,
    }
    changed = defaults.replace(gradient_scale=100, random_rate=(0.2, 0.3))
    assert changed.gradient_scale == 100.0 and isinstance(changed.gradient_scale, float)
    assert changed.random_rate == [0.2, 0.3]
    assert hash(changed) == hash(ak.GateSettings(gradient_scale=100.0, random_rate=[0.2, 0.3]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.temperature = 2.0


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(controller_units=0), "Received: controller_units=0"),
        (dict(temperature=0.0), "Received: temperature=0.0"),
        (dict(pretrained_bn="train"), "Received: pretrained_bn='train'"),
        (dict(policy="greedy"), "Received: policy='greedy'"),
        (dict(random_rate=[0.5, 1.0]), r"Received: random_rate\[1\]=1.0"),
        (dict(granularity="layer"), "Received: granularity='layer'"),
        (dict(initial_rate=1), "Received: initial_rate=1"),
        (dict(gradient_scale=-1.0), "Received: gradient_scale=-1.0"),
        (dict(normalize_controller_gradient=1), "Received: normalize_controller_gradient=1"),
        (dict(inference="mode"), "Received: inference='mode'"),
        (dict(gate_warmup_steps=-1), "Received: gate_warmup_steps=-1"),
        (dict(normalize_controller_inputs="no"), "Received: normalize_controller_inputs='no'"),
    ],
)
def test_every_setting_is_checked_with_its_name_and_value(changes, message):
    with pytest.raises(ValueError, match=message):
        ak.GateSettings(**changes)
    with pytest.raises(ValueError, match=message):
        gate_settings.check_values(changes)


def test_unknown_settings_are_refused_with_the_known_names():
    with pytest.raises(TypeError, match=r"Unknown gate setting\(s\) gradient_scal\b.*initial_rate"):
        ak.GateSettings().replace(gradient_scal=3.0)
    with pytest.raises(TypeError, match="Unknown gate setting.*controller_units"):
        gate_settings.check_values({"units": 8})
    model = _plain_model()
    with pytest.raises(TypeError, match="Unknown gate setting.*gate_warmup_steps"):
        ak.wrap(model, warmup_steps=3)
    with pytest.raises(TypeError, match="must be an adafilter_keras.GateSettings"):
        ak.wrap(model, settings={"temperature": 2.0})


def test_wrap_takes_a_settings_object_and_keyword_changes_over_it():
    settings = ak.GateSettings(controller_units=8, gradient_scale=30.0)
    wrapped = ak.wrap(_plain_model(), settings=settings, temperature=0.5, seed=1)
    (controller,) = [layer for layer in wrapped.layers if isinstance(layer, ak.GateController)]
    assert (controller.units, controller.gradient_scale, controller.temperature) == (8, 30.0, 0.5)


def _plain_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c0")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="b0")(x))
    x = keras.layers.Conv2D(6, 3, padding="same", name="c1")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="b1")(x))
    outputs = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="plain")


def _hand_built():
    """The same model assembled from the three layers, every gate setting left at its default."""
    controller = ak.GateController(filters=[4, 6], input_channels=[3, 4], seed=0, name="ctrl")
    inputs = keras.Input((8, 8, 3))
    gate, hidden, cell = controller(inputs, index=0)
    branches = ak.AdaFilterConv2D(4, 3, padding="same", name="c0")(inputs)
    x = keras.layers.ReLU()(ak.GatedBatchNorm(name="b0")([*branches, gate]))
    gate, _, _ = controller(x, states=[hidden, cell], index=1)
    branches = ak.AdaFilterConv2D(6, 3, padding="same", name="c1")(x)
    x = keras.layers.ReLU()(ak.GatedBatchNorm(name="b1")([*branches, gate]))
    outputs = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="hand_built")


def _without_name(config):
    return {key: value for key, value in config.items() if key != "name"}


def test_layers_built_by_hand_with_their_defaults_behave_like_wraps():
    wrapped = ak.wrap(_plain_model(), seed=0)
    hand = _hand_built()
    wrapped_controller, hand_controller = (
        next(layer for layer in model.layers if isinstance(layer, ak.GateController))
        for model in (wrapped, hand)
    )
    wrapped_config = _without_name(wrapped_controller.get_config())
    hand_config = _without_name(hand_controller.get_config())
    assert wrapped_config.pop("layer_names") == ["c0", "c1"]
    assert hand_config.pop("layer_names") == ["gated_layer_0", "gated_layer_1"]
    assert wrapped_config == hand_config
    for name in ("b0", "b1"):
        wrapped_bn, hand_bn = wrapped.get_layer(name), hand.get_layer(name)
        assert hand_bn.pretrained_branch == wrapped_bn.pretrained_branch == "adapt"
        # Keras's BatchNormalization momentum and epsilon (what wrap() copies) are the layer's too.
        assert _without_name(hand_bn.get_config()) == _without_name(wrapped_bn.get_config())

    # The same weights in both, the fine-tuned kernels moved away from the pre-trained ones so
    # that the gates matter and the controller gets a gradient.
    rng = np.random.default_rng(0)
    for layer in wrapped.layers:
        if not layer.weights or isinstance(layer, ak.GateController):
            continue
        weights = [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()]
        layer.set_weights(weights)
        hand.get_layer(layer.name).set_weights(weights)
    hand_controller.set_weights(wrapped_controller.get_weights())

    x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    y = rng.normal(size=(4, 2)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(hand(x, training=False)), to_numpy(wrapped(x, training=False)), rtol=1e-5
    )
    for model in (wrapped, hand):
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        model.train_on_batch(x, y)
    # One SGD step from equal weights and equal gate noise (the same seed) leaves equal weights:
    # the gradients, the controller's scaled one included, were equal.
    for wrapped_weight, hand_weight in zip(
        wrapped_controller.weights, hand_controller.weights, strict=True
    ):
        np.testing.assert_allclose(to_numpy(hand_weight), to_numpy(wrapped_weight), rtol=1e-4)
    for name in ("c0", "c1", "b0", "b1", "head"):
        for wrapped_weight, hand_weight in zip(
            wrapped.get_layer(name).weights, hand.get_layer(name).weights, strict=True
        ):
            np.testing.assert_allclose(
                to_numpy(hand_weight), to_numpy(wrapped_weight), rtol=1e-4, atol=1e-6
            )
    start = np.log(ak.GateSettings().initial_rate / (1 - ak.GateSettings().initial_rate))
    moved = to_numpy(wrapped_controller.heads[0].bias)  # starts at logit(initial_rate)
    assert np.abs(moved - start).max() > 1e-6, (
        "the controller learned nothing: the check is vacuous"
    )
