"""Gate statistics cost nothing unless asked: `gate_report` on demand, the `GateStatistics`
opt-in, and models saved when the statistics were weights."""

import pathlib

import keras
import numpy as np
import pytest
from support import to_numpy

import adafilter_keras as ak
from adafilter_keras.inspection import _LayerSums, find_controller
from adafilter_keras.training.callbacks import GateStatistics

DATA = pathlib.Path(__file__).parent / "data"


def _backbone():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv_1")(inputs)
    x = keras.layers.BatchNormalization(name="bn_1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv_2")(x)
    x = keras.layers.BatchNormalization(name="bn_2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name="tiny")


def _compiled(**kwargs):
    model = ak.wrap(_backbone(), seed=1, controller_units=8, **kwargs)
    model.compile(
        keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def _data(rng, count=16):
    return rng.normal(size=(count, 8, 8, 3)).astype("float32"), rng.integers(0, 3, size=count)


def _values(model):
    return [to_numpy(v).copy() for v in model.variables]


def test_fit_runs_no_instrument_and_leaves_no_statistics(rng):
    x, y = _data(rng)
    model = _compiled(gate_warmup_steps=0)
    controller = find_controller(model)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    # What is left are the input normalizations' moving statistics: no statistics variable,
    # and no step count without a gate warm-up.
    names = [w.name for w in controller.non_trainable_weights]
    assert set(names) <= {"moving_mean", "moving_variance"}, names
    assert controller.training_steps is None and not controller.statistics_enabled
    assert not any("gate_sums" in v.path or "report_sums" in v.path for v in model.variables)


def test_the_warm_up_step_count_still_counts_and_forces_the_gates(rng):
    x, y = _data(rng)
    model = _compiled(gate_warmup_steps=3)
    controller = find_controller(model)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert float(to_numpy(controller.training_steps)) == 4.0
    assert "training_steps" in [w.name for w in controller.non_trainable_weights]
    fresh = _compiled(gate_warmup_steps=3)
    assert ak.gate_report(fresh, x)[0]["fraction_finetuned"] == 1.0  # inside the warm-up


def test_layer_sums_by_hand():
    sums = _LayerSums(2)
    probability = np.array([[0.9, 0.3], [0.1, 0.4]])
    train = np.array([[1.0, 0.0], [1.0, 1.0]])
    sums.add(train, probability, probability)
    measures = sums.measures()
    # Decisions [[1, 0], [0, 0]]: filter 0 splits the two examples (2 * 0.5 * 0.5), filter 1
    # does not; the probabilities' standard deviations are 0.4 and 0.05.
    assert measures["disagreement"] == pytest.approx(0.25)
    assert measures["probability_spread"] == pytest.approx(0.225)
    assert measures["fraction_finetuned"] == pytest.approx(0.75)
    assert measures["fraction_finetuned_inference"] == pytest.approx(0.425)
    # |train - inference| = [[0.1, 0.3], [0.9, 0.6]]: mean 0.475.
    assert measures["train_inference_agreement"] == pytest.approx(0.525)


def test_random_policy_report_matches_the_rate(rng):
    rate = 0.25
    model = ak.wrap(_backbone(), seed=1, policy="random", random_rate=rate)
    x = rng.normal(size=(2000, 8, 8, 3)).astype("float32")
    report = ak.gate_report(model, x, batch_size=500)
    assert [row["layer"] for row in report] == ["conv_1", "conv_2"]
    for row in report:
        assert row["examples"] == 2000
        # Each gate is Bernoulli(rate); at inference it is the constant rate, never above 0.5.
        assert row["fraction_finetuned"] == pytest.approx(rate, abs=0.02)
        assert row["fraction_finetuned_inference"] == pytest.approx(rate)
        assert row["disagreement"] == 0.0 and row["probability_spread"] == pytest.approx(0.0)
        # E|g - rate| = rate (1 - rate) + (1 - rate) rate.
        expected = 1.0 - 2.0 * rate * (1.0 - rate)
        assert row["train_inference_agreement"] == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize("inference", ["expected", "threshold"])
def test_learned_policy_with_known_probabilities(rng, inference):
    model = ak.wrap(_backbone(), seed=1, controller_units=8, inference=inference)
    controller = find_controller(model)
    probabilities = [np.array([0.9, 0.2, 0.6, 0.4]), np.array([0.1, 0.3, 0.5, 0.7, 0.8, 0.95])]
    for head, p in zip(controller.heads, probabilities, strict=True):
        head.kernel.assign(np.zeros(head.kernel.shape, "float32"))
        head.bias.assign(np.log(p / (1 - p)).astype("float32"))
    x = rng.normal(size=(4000, 8, 8, 3)).astype("float32")
    report = ak.gate_report(model, x, batch_size=1000)
    for row, p in zip(report, probabilities, strict=True):
        # Inference gate: p ("expected") or the decision 1[p > 0.5] ("threshold"); a training
        # gate is 1 with probability p, so E|g - p| = 2 p (1 - p) and E|g - 1[p > 0.5]| is
        # min(p, 1 - p).
        inferred = p if inference == "expected" else (p > 0.5).astype(float)
        distance = 2.0 * p * (1.0 - p) if inference == "expected" else np.minimum(p, 1.0 - p)
        assert row["fraction_finetuned_inference"] == pytest.approx(inferred.mean(), abs=1e-5)
        assert row["fraction_finetuned"] == pytest.approx(p.mean(), abs=0.01)
        assert row["disagreement"] == 0.0  # each filter's decision is fixed
        assert row["probability_spread"] == pytest.approx(0.0, abs=1e-5)
        assert row["train_inference_agreement"] == pytest.approx(1 - distance.mean(), abs=0.01)


def test_gate_report_changes_nothing_and_reads_outer_models_and_datasets(rng):
    import tensorflow as tf

    x, y = _data(rng)
    model = _compiled(gate_warmup_steps=2)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    before = _values(model)
    report = ak.gate_report(model, x, batch_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(before, _values(model), strict=True))
    inputs = keras.Input((8, 8, 3))
    outer = keras.Model(inputs, keras.layers.Dense(2)(model(inputs)))
    nested = ak.gate_report(outer, tf.data.Dataset.from_tensor_slices((x, y)).batch(4))
    for a, b in zip(report, nested, strict=True):
        assert a["layer"] == b["layer"] and b["examples"] == 16
        # Deterministic: inference gates do not depend on the batching.
        assert a["fraction_finetuned_inference"] == pytest.approx(b["fraction_finetuned_inference"])
        assert a["disagreement"] == pytest.approx(b["disagreement"])
    limited = ak.gate_report(outer, tf.data.Dataset.from_tensor_slices(x).batch(4), steps=2)
    assert limited[0]["examples"] == 8
    text = str(report)
    assert text.splitlines()[0].startswith("| layer | filters | fine-tuned (train)")
    assert "| conv_2 | 6 |" in text and len(text.splitlines()) == 4


def test_gate_report_refuses_models_without_gates_and_bad_arguments(rng):
    x, _ = _data(rng)
    with pytest.raises(ValueError, match="exactly one GateController.*Received: 0"):
        ak.gate_report(_backbone(), x)
    model = ak.wrap(_backbone(), seed=1, controller_units=8)
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        ak.gate_report(model, x, batch_size=0)
    with pytest.raises(ValueError, match="at least one example"):
        ak.gate_report(model, x[:0])
    with pytest.raises(ValueError, match="Received: x of type list"):
        ak.gate_report(model, [x])


def test_gate_statistics_callback_opts_in_for_its_fit_only(rng):
    x, y = _data(rng)
    model = _compiled(gate_warmup_steps=0)
    controller = find_controller(model)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # made a train function without them
    callback = GateStatistics()
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[callback])
    # Each epoch's report counts that epoch's 16 training examples.
    assert len(callback.reports) == 2
    for epoch in callback.reports:
        for row in epoch["layers"]:
            assert 0.0 < row["fraction_finetuned"] < 1.0
            assert 0.0 <= row["disagreement"] <= 0.5
            assert 0.0 < row["train_inference_agreement"] <= 1.0
    assert all(0.0 < f < 1.0 for f in callback.history[-1])
    # Off again afterwards: no statistics variables, and the next fit runs none.
    assert not controller.statistics_enabled and controller.statistics_variables == []
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert not any("gate_sums" in v.path for v in model.variables)


def test_opted_in_statistics_count_every_training_example(rng):
    x, y = _data(rng)
    model = _compiled(gate_warmup_steps=0)
    controller = find_controller(model)
    controller.start_statistics()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    _, report_sums = (to_numpy(v) for v in controller.statistics_variables)
    assert report_sums[:, 0].tolist() == [16.0, 16.0]  # examples seen by each gated layer
    rates = controller.gate_statistics()
    assert [r.shape for r in rates] == [(4,), (6,)]
    assert all(((r >= 0) & (r <= 1)).all() and (r * 16 == np.round(r * 16)).all() for r in rates)


@pytest.mark.parametrize(
    "name, step_count",
    [("wrapped_before_instruments", None), ("wrapped_before_instruments_warmup", 2.0)],
)
def test_models_saved_with_statistics_inside_still_load(name, step_count, tmp_path):
    # Saved (with safe_mode) by the code that kept the statistics as weights, after 2 steps.
    model = keras.saving.load_model(DATA / f"{name}.keras", safe_mode=True)
    x = np.load(DATA / "wrapped_before_instruments_inputs.npy")
    expected = np.load(DATA / f"{name}.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    controller = find_controller(model)
    assert controller.statistics_variables == []
    # Saved before the gradient could be normalized: it is multiplied, as it was then.
    assert controller.normalize_gradient is False and controller.gradient_scale == 300.0
    if step_count is None:
        assert controller.training_steps is None
    else:
        assert float(to_numpy(controller.training_steps)) == step_count
    # Saved again, they hold no statistics and keep the step count.
    model.save(tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras", safe_mode=True)
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    if step_count is not None:
        assert float(to_numpy(find_controller(again).training_steps)) == step_count


def test_weights_saved_with_statistics_on_load_into_a_model_without(rng, tmp_path):
    x, y = _data(rng)
    model = _compiled(gate_warmup_steps=2)
    find_controller(model).start_statistics()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.save_weights(tmp_path / "model.weights.h5")
    other = _compiled(gate_warmup_steps=2)
    other.load_weights(tmp_path / "model.weights.h5")
    np.testing.assert_allclose(other.predict(x, verbose=0), model.predict(x, verbose=0))
    assert float(to_numpy(find_controller(other).training_steps)) == 4.0


def test_rate_matched_random_gates_draw_at_the_rates_the_learned_gates_reached(rng):
    x, y = _data(rng, count=64)
    learned = _compiled()
    learned.fit(x, y, batch_size=8, epochs=2, verbose=0)
    rates = [row["fraction_finetuned"] for row in ak.gate_report(learned, x)]
    matched = _compiled(policy="random", random_rate=rates)
    report = ak.gate_report(matched, np.concatenate([x] * 50))
    for row, rate in zip(report, rates, strict=True):
        np.testing.assert_allclose(row["fraction_finetuned"], rate, atol=0.02)
        assert row["fraction_finetuned_inference"] == pytest.approx(rate, abs=1e-6)
