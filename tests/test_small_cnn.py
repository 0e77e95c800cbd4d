"""The three layers compose into a functional model that trains, saves and loads."""

import keras
import numpy as np
import pytest
from support import build_small_cnn, loss_gradients, run_python, to_numpy

from adafilter_keras import gate_model


def _data(rng, n=32):
    x = rng.normal(size=(n, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 3, size=(n,))
    return x, y


def _snapshot(model):
    return {v.path: to_numpy(v).copy() for v in model.weights}


def _compiled(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


@pytest.mark.parametrize("mode", ["frozen", "adapt"])
def test_fit_moves_only_the_finetuned_side(rng, mode):
    model = _compiled(build_small_cnn(pretrained_branch=mode))
    before = _snapshot(model)
    model.fit(*_data(rng), batch_size=8, epochs=1, verbose=0)
    after = _snapshot(model)
    moved = {path for path in before if not np.array_equal(before[path], after[path])}

    for variable in model.trainable_variables:
        assert variable.path in moved, f"trainable {variable.path} did not move"
    trainable_paths = {v.path for v in model.trainable_variables}
    assert any(path.startswith("controller/") for path in trainable_paths)
    assert any(path.startswith("head/") for path in trainable_paths)
    for path in before:
        name = path.split("/")[-1]
        if name.startswith("finetuned_moving"):
            assert path in moved, f"{path} was not updated"
        if name.startswith("pretrained_"):
            should_move = mode == "adapt" and not name.endswith(("kernel", "bias"))
            assert (path in moved) == should_move, f"{path}: moved={path in moved}"


def _trained_a_little(rng):
    # At initialisation F = S, so a layer without BN has identical branches and its gate gets a
    # zero gradient by construction; a few SGD steps make the branches differ.
    model = _compiled(build_small_cnn())
    model.fit(*_data(rng), batch_size=8, epochs=1, verbose=0)
    return model


def test_every_trainable_weight_gets_a_finite_nonzero_gradient_after_a_few_steps(rng):
    model = _trained_a_little(rng)
    x, y = _data(rng, n=8)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    gradients = loss_gradients(model, x, y, loss_fn)
    assert len(gradients) == len(model.trainable_variables)
    for variable, gradient in zip(model.trainable_variables, gradients, strict=True):
        assert gradient is not None and gradient.shape == tuple(variable.shape), variable.path
        assert np.isfinite(gradient).all(), variable.path
        assert np.abs(gradient).max() > 0, f"{variable.path} got a zero gradient"


def test_gradient_reaches_every_controller_head_through_the_gates(rng):
    model = _trained_a_little(rng)
    x, y = _data(rng, n=8)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    gradients = loss_gradients(model, x, y, loss_fn)
    by_path = dict(zip((v.path for v in model.trainable_variables), gradients, strict=True))
    for index in range(7):
        assert np.abs(by_path[f"controller/head_{index}/kernel"]).max() > 0


def test_at_initialisation_the_gates_do_not_change_the_inference_output(rng):
    model = build_small_cnn()
    x, _ = _data(rng, n=8)
    controller = model.get_layer("controller")
    outputs = []
    for bias in (-100.0, 100.0):  # every gate 0, then every gate 1
        for head in controller.heads:
            head.bias.assign(np.full(head.bias.shape, bias))
        outputs.append(to_numpy(model(x, training=False)))
    gates_all = _probe_gates(model, x)
    assert all(g.min() == 1.0 for g in gates_all)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


def _probe_gates(model, x):
    return [to_numpy(g) for g in gate_model(model).predict(x, verbose=0)]


def test_keras_file_round_trip_in_a_fresh_process(rng, tmp_path):
    model = _compiled(build_small_cnn())
    x, y = _data(rng)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "small.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)

    result = run_python(
        f"""
        import numpy as np, keras
        import adafilter_keras  # registers the layers for deserialization
        model = keras.models.load_model({str(path)!r}, safe_mode=True)
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "predicted.npy")!r}, model.predict(x, verbose=0))
        history = model.fit(x, np.load({str(tmp_path / "y.npy")!r}), batch_size=8, verbose=0)
        print("loss", history.history["loss"][0])
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "predicted.npy"), expected)
    assert np.isfinite(float(result.stdout.split("loss")[-1]))


def test_gate_model_gives_inference_gates_in_controller_order(rng):
    model = build_small_cnn()
    x, _ = _data(rng, n=4)
    gates = _probe_gates(model, x)
    controller = model.get_layer("controller")
    assert [g.shape for g in gates] == [(4, f) for f in controller.filters]
    # The default inference rule gives the expected gate, sigmoid(logit), in [0, 1].
    assert all(((g >= 0.0) & (g <= 1.0)).all() for g in gates)


def test_gate_model_refuses_a_model_without_controller():
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(ValueError, match="'plain' must contain exactly one GateController"):
        gate_model(plain)


def test_gate_model_of_an_outer_model_reads_the_nested_backbones_gates(rng):
    # The README's shape: a wrapped backbone under a new head, behind preprocessing.
    backbone = build_small_cnn()
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(2)(backbone(keras.layers.Rescaling(0.5)(inputs)))
    outer = keras.Model(inputs, outputs, name="outer")
    # Calls of the backbone in other models are not the outer model's.
    reused = keras.Input((16, 16, 3))
    keras.Model(reused, backbone(reused), name="other")
    x, _ = _data(rng, n=4)
    gates = _probe_gates(outer, x)
    expected = _probe_gates(backbone, 0.5 * x)  # the backbone sees the rescaled images
    assert len(gates) == len(expected) > 1
    for got, want in zip(gates, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(gates[0], _probe_gates(backbone, x)[0])
    # Two levels of nesting.
    top_inputs = keras.Input((16, 16, 3))
    top = keras.Model(top_inputs, outer(top_inputs), name="top")
    np.testing.assert_allclose(_probe_gates(top, x)[-1], gates[-1], rtol=1e-5, atol=1e-6)


def test_gate_model_refuses_a_nested_backbone_called_twice():
    backbone = build_small_cnn()
    inputs = keras.Input((16, 16, 3))
    twice = keras.Model(inputs, backbone(inputs) + backbone(inputs * 2.0), name="twice")
    with pytest.raises(ValueError, match="calls the nested model .* 2 times.*gate_model on"):
        gate_model(twice)
