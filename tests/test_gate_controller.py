import keras
import numpy as np
import pytest
from support import to_numpy

from adafilter_keras import GateController
from adafilter_keras.layers.gate_sampling import sample_gates


def _controller(**kwargs):
    # The layer's neutral settings, not wrap()'s defaults: gradient and inputs as they are.
    kwargs = {
        "filters": [4, 6],
        "input_channels": [3, 4],
        "units": 8,
        "seed": 3,
        "gradient_scale": 1.0,
        "normalize_inputs": False,
        **kwargs,
    }
    return GateController(**kwargs)


def _run_chain(controller, xs, training, output=0):
    """Calls the controller for each gated layer; returns its gates (or, `output=1`, states)."""
    outputs, states = [], None
    for index, x in enumerate(xs):
        returned = controller(x, states=states, index=index, training=training)
        outputs.append(to_numpy(returned[output]))
        states = list(returned[1:])
    return outputs


def _inputs(rng, batch=5):
    return [rng.normal(size=(batch, 7, 7, 3)), rng.normal(size=(batch, 4, 4, 4))]


def test_training_gates_are_exactly_zero_or_one(rng):
    controller = _controller()
    for gate in _run_chain(controller, _inputs(rng), training=True):
        assert set(np.unique(gate)) <= {0.0, 1.0}
        assert gate.dtype == np.float32


def test_threshold_inference_gates_are_deterministic_and_threshold_the_logits(rng):
    controller = _controller(inference="threshold")
    xs = [x.astype("float32") for x in _inputs(rng)]
    first, second = _run_chain(controller, xs, False), _run_chain(controller, xs, False)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)

    # Recompute the logits by hand: pool -> projection -> shared LSTM cell -> head.
    states = [np.zeros((5, 8), "float32")] * 2
    for index, x in enumerate(xs):
        projected = controller.projections[index](x.mean(axis=(1, 2)))
        hidden, states = controller.cell(projected, states)
        logits = to_numpy(controller.heads[index](hidden))
        np.testing.assert_array_equal(first[index], (logits > 0).astype("float32"))


def test_state_is_threaded_between_layers(rng):
    controller = _controller()
    x0, x1 = [x.astype("float32") for x in _inputs(rng)]
    _, hidden, cell = controller(x0, index=0)
    with_state = controller.heads[1](controller(x1, states=[hidden, cell], index=1)[1])
    without_state = controller.heads[1](controller(x1, index=1)[1])
    assert not np.allclose(to_numpy(with_state), to_numpy(without_state))


def test_gumbel_gates_follow_the_sigmoid_of_the_logits():
    logits = np.tile(np.array([[-2.0, -0.5, 0.0, 1.0, 3.0]], "float32"), (20000, 1))
    seed = keras.random.SeedGenerator(7)
    gates = to_numpy(sample_gates(logits, temperature=0.5, seed=seed, training=True))
    assert set(np.unique(gates)) == {0.0, 1.0}
    expected = 1 / (1 + np.exp(-logits[0]))
    np.testing.assert_allclose(gates.mean(axis=0), expected, atol=0.015)
    again = to_numpy(sample_gates(logits, temperature=0.5, seed=seed, training=True))
    assert not np.array_equal(gates, again)  # the generator advances: fresh noise each step


def test_training_keeps_no_statistics_unless_started(rng):
    controller = _controller()
    xs = _inputs(rng, batch=4)
    _run_chain(controller, xs, training=True)
    # No statistics variables and no step count (that exists only for a gate warm-up).
    assert controller.non_trainable_weights == [] and controller.training_steps is None
    assert not controller.statistics_enabled and controller.statistics_variables == []
    with pytest.raises(ValueError, match=r"start_statistics\(\).*statistics_enabled=False"):
        controller.gate_report()
    with pytest.raises(ValueError, match="statistics_enabled=False"):
        controller.reset_gate_statistics()
    warm = _controller(warmup_steps=2)
    _run_chain(warm, xs, training=True)
    _run_chain(warm, xs, training=False)
    assert [w.name for w in warm.non_trainable_weights] == ["training_steps"]
    assert float(to_numpy(warm.training_steps)) == 1.0


def test_statistics_start_and_stop_add_and_remove_their_variables(rng):
    controller = _controller()
    with pytest.raises(ValueError, match="must be built before its statistics start"):
        controller.start_statistics()
    xs = _inputs(rng, batch=4)
    _run_chain(controller, xs, training=False)
    controller.start_statistics()
    names = [w.name for w in controller.non_trainable_weights]
    # One variable for every layer's per-filter sums, one for every layer's report sums: two
    # assignments per training step whatever the depth.
    assert names == ["gate_sums", "report_sums"]
    assert [tuple(w.shape) for w in controller.non_trainable_weights] == [(10,), (2, 4)]
    assert controller.statistics_variables == controller.non_trainable_weights
    controller.stop_statistics()
    assert controller.non_trainable_weights == [] and not controller.statistics_enabled
    controller.stop_statistics()  # a no-op when off


def test_statistics_accumulate_in_training_only_and_reset(rng):
    controller = _controller()
    xs = _inputs(rng, batch=4)
    _run_chain(controller, xs, training=False)
    controller.start_statistics()
    gates = _run_chain(controller, xs, training=True)
    _run_chain(controller, xs, training=False)
    gates_2 = _run_chain(controller, xs, training=True)
    rates = controller.gate_statistics()
    assert [r.shape for r in rates] == [(4,), (6,)]
    for rate, a, b in zip(rates, gates, gates_2, strict=True):
        np.testing.assert_allclose(rate, np.concatenate([a, b]).mean(axis=0), rtol=1e-6)
    controller.reset_gate_statistics()
    assert all(np.isnan(r).all() for r in controller.gate_statistics())


def _report_by_hand(gate, probability, inference):
    """One layer's `gate_report` row from its training gates and probabilities (one batch)."""
    decided = (probability > 0.5).mean(axis=0)
    inferred = (probability > 0.5).astype("float32") if inference == "threshold" else probability
    return {
        "fraction_finetuned": gate.mean(),
        "disagreement": (2 * decided * (1 - decided)).mean(),
        "probability_spread": probability.std(axis=0).mean(),
        "train_inference_agreement": 1 - np.abs(gate - inferred).mean(),
    }


@pytest.mark.parametrize("inference", ["expected", "threshold"])
def test_statistics_of_all_layers_at_once_match_each_layer_by_hand(rng, inference):
    # Without input normalization the training logits are the inference ones, so the "expected"
    # inference gates are the probabilities the training gates were drawn with.
    controller = _controller(inference=inference)
    xs = [x.astype("float32") for x in _inputs(rng, batch=16)]
    _run_chain(controller, xs, training=False)
    reference = _controller(inference="expected")
    _run_chain(reference, xs, training=False)
    reference.set_weights(controller.get_weights())
    controller.start_statistics()
    probabilities = _run_chain(reference, xs, training=False)
    gates = _run_chain(controller, xs, training=True)
    for row, gate, probability in zip(controller.gate_report(), gates, probabilities, strict=True):
        expected = _report_by_hand(gate, probability, inference)
        assert row == pytest.approx(expected, abs=1e-5)


def test_statistics_count_only_the_layers_a_pass_called(rng):
    controller = _controller()
    x0, x1 = (x.astype("float32") for x in _inputs(rng, batch=4))
    _run_chain(controller, [x0, x1], training=False)
    controller.start_statistics()
    gate = to_numpy(controller(x1, index=1, training=True)[0])  # gated layer 0 skipped
    first, second = controller.gate_statistics()
    assert np.isnan(first).all() and first.shape == (4,)
    np.testing.assert_allclose(second, gate.mean(axis=0), rtol=1e-6)
    assert controller.gate_report()[1]["fraction_finetuned"] == pytest.approx(gate.mean())


def test_config_round_trip():
    controller = _controller(temperature=0.3, name="ctrl", normalize_inputs=True)
    config = controller.get_config()
    clone = GateController.from_config(config)
    assert clone.get_config() == config
    assert clone.filters == [4, 6] and clone.temperature == 0.3 and clone.seed == 3
    assert clone.normalize_inputs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0), "Received: temperature=0"),
        (dict(temperature=-1.5), "Received: temperature=-1.5"),
        (dict(units=0), "Received: units=0"),
        (dict(filters=[4, 0]), r"Received: filters\[1\]=0"),
        (dict(filters=[]), r"Received: filters=\[\]"),
        (dict(filters=[4]), "one entry per gated layer"),
        (dict(seed="x"), "Received: seed='x'"),
        (dict(normalize_inputs="yes"), "`normalize_inputs` must be True or False"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _controller(**kwargs)


def test_bad_calls_are_refused(rng):
    controller = _controller(name="ctrl")
    x0, x1 = _inputs(rng)
    with pytest.raises(ValueError, match=r"index.*\[0, 2\).*Received: index=2"):
        controller(x0, index=2)
    with pytest.raises(
        ValueError, match="Gated layer 1 of controller 'ctrl' expects inputs with 4"
    ):
        controller(x0, index=1)
    with pytest.raises(ValueError, match="expects inputs with 3 channels"):
        controller(keras.Input((8, 8, 5)), index=0)


def _hidden_states(controller, xs, training):
    return _run_chain(controller, xs, training, output=1)


def test_normalized_inputs_see_only_how_an_example_differs_from_its_batch(rng):
    # In training each pooled channel is standardized over the batch: a shift shared by the
    # whole batch (what every example has in common) does not change the gates' logits.
    controller = _controller(normalize_inputs=True)
    xs = [x.astype("float32") for x in _inputs(rng, batch=8)]
    moved = [x + 5.0 for x in xs]
    for a, b in zip(
        _hidden_states(controller, xs, True), _hidden_states(controller, moved, True), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-4)
    # Without normalization the same shift changes them.
    plain = _controller()
    assert not np.allclose(
        _hidden_states(plain, xs, True)[0], _hidden_states(plain, moved, True)[0], atol=1e-2
    )


def test_normalized_inputs_use_moving_statistics_at_inference(rng):
    controller = _controller(normalize_inputs=True)
    xs = [x.astype("float32") + 4.0 for x in _inputs(rng, batch=8)]
    before = _hidden_states(controller, xs, False)
    for _ in range(30):
        _hidden_states(controller, xs, True)
    pooled_mean = xs[0].mean(axis=(0, 1, 2))
    moving_mean = to_numpy(controller.normalizations[0].moving_mean)
    np.testing.assert_allclose(moving_mean, pooled_mean, rtol=0.05)
    # Inference is deterministic and now uses those statistics (not the batch's).
    after = _hidden_states(controller, xs, False)
    np.testing.assert_array_equal(after[1], _hidden_states(controller, xs, False)[1])
    assert not np.allclose(before[0], after[0], atol=1e-3)
    single = _hidden_states(controller, [x[:1] for x in xs], False)
    np.testing.assert_allclose(single[0], after[0][:1], atol=1e-5)


def test_random_gates_can_have_one_rate_per_layer(rng):
    # The rate-matched stochastic baseline: random gates at the rates learned gates reached.
    controller = _controller(policy="random", random_rate=[0.2, 0.9])
    xs = [x.astype("float32") for x in _inputs(rng, batch=4000)]
    training = _run_chain(controller, xs, training=True)
    for gate, rate in zip(training, [0.2, 0.9], strict=True):
        assert set(np.unique(gate)) <= {0.0, 1.0}
        np.testing.assert_allclose(gate.mean(), rate, atol=0.02)
    inference = _run_chain(controller, xs, training=False)
    for gate, rate in zip(inference, [0.2, 0.9], strict=True):
        np.testing.assert_allclose(gate, rate)
    clone = GateController.from_config(controller.get_config())
    assert clone.random_rate == [0.2, 0.9]
    with pytest.raises(ValueError, match="one rate per gated layer. Received: 3 rates for 2"):
        _controller(policy="random", random_rate=[0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match=r"`random_rate\[1\]` must be in \(0, 1\)"):
        _controller(policy="random", random_rate=[0.2, 1.0])
