"""The investigations in research/: each script's own pieces do what its README says.

Outside the default test run (`testpaths = tests`); `tox -e research` runs them. They load each
script as a module and check its parts on tiny inputs; none runs an investigation.
"""

import dataclasses
import importlib.util
import json
import pathlib

import keras
import numpy as np
import pytest

from adafilter_keras.transfer.runs import BenchmarkSettings, Cell, default_optimizer, run_key

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the benchmark resizes images with TensorFlow"
)

RESEARCH = pathlib.Path(__file__).resolve().parents[1]
# Each script, by the folder of the question it answers.
SCRIPTS = {
    "adafilter_probes": "losing_cell",
    "choose_defaults": "default_selection",
    "compare_variants": "controller_defaults",
    "finetuned_gradient": "finetuned_gradient",
    "gate_gradient": "gate_gradient",
    "gate_variants": "input_dependent_gates",
    "own_recipe": "optimizer_recipe",
    "sampled_inference": "inference_rule",
    "training_fit": "training_fit",
}


def _tests_support():
    """The default test suite's helpers (tests/support.py), shared rather than copied."""
    path = RESEARCH.parent / "tests" / "support.py"
    spec = importlib.util.spec_from_file_location("_tests_support", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = _tests_support().tiny_benchmark()


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    yield


def _record(method, seed, accuracy, task="digits", regime="few_shot", optimizer="sgd"):
    return dict(
        task=task, regime=regime, optimizer=optimizer, method=method, seed=seed,
        test_accuracy=accuracy, val_accuracy=accuracy,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_script_parses_its_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        _script(name).build_parser().parse_args(["--help"])
    assert exit_.value.code == 0 and "usage" in capsys.readouterr().out


def test_compare_variants_pairs_adafilter_under_two_settings_by_seed(tmp_path, capsys):
    script = _script("compare_variants")
    settings = dataclasses.replace(TINY, variant={"initial_rate": 0.7})
    lines = []
    for variant, seed, accuracy in ((TINY, 0, 0.5), (TINY, 1, 0.6), (settings, 0, 0.6),
                                    (settings, 1, 0.8), (settings, 2, 0.9)):  # fmt: skip
        key = run_key(variant, "digits", "few_shot", "adafilter", "sgd", seed)
        lines.append(json.dumps(dict(_record("adafilter", seed, accuracy), key=key)))
    # Runs of other methods or settings are not read.
    key = run_key(TINY, "digits", "few_shot", "finetune", "sgd", 0)
    lines.append(json.dumps(dict(_record("finetune", 0, 0.0), key=key)))
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    script.main(["--output-dir", str(tmp_path), "--wrap-settings", '{"initial_rate": 0.7}'])
    out = capsys.readouterr().out
    # Seeds 0 and 1 pair up: +10 and +20 points; seed 2 has no partner.
    assert "test_accuracy sgd: +15.00 ± 63.53" in out
    # The same with the default runs in another directory, one of them in both.
    variant_dir, baseline_dir = tmp_path / "variant", tmp_path / "baseline"
    variant_dir.mkdir(), baseline_dir.mkdir()
    (variant_dir / "runs.jsonl").write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    (baseline_dir / "runs.jsonl").write_text("\n".join(lines[:2]) + "\n")
    script.main(["--output-dir", str(variant_dir), "--baseline-runs", str(baseline_dir),
                 "--wrap-settings", '{"initial_rate": 0.7}'])  # fmt: skip
    assert "test_accuracy sgd: +15.00 ± 63.53" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="No runs.jsonl in"):
        script.main(["--output-dir", str(variant_dir), "--baseline-runs", str(tmp_path / "none"),
                     "--wrap-settings", '{"initial_rate": 0.7}'])  # fmt: skip
    with pytest.raises(SystemExit, match="No adafilter runs"):
        script.main(["--output-dir", str(tmp_path), "--wrap-settings", '{"initial_rate": 0.1}',
                     "--baseline", '{"initial_rate": 0.2}'])  # fmt: skip


def test_sampled_inference_draws_the_gates_at_inference_and_restores_the_rule():
    script = _script("sampled_inference")
    _, model, conv = _one_gated_conv_model()
    # Branches that differ, so that the gates change the output.
    conv.finetuned_kernel.assign(
        np.random.default_rng(1).normal(size=conv.finetuned_kernel.shape).astype("float32")
    )
    images = np.random.default_rng(2).normal(size=(16, 8, 8, 3)).astype("float32")

    def softmax(logits):
        return keras.ops.convert_to_numpy(keras.ops.softmax(logits))

    expected = softmax(model.predict(images, verbose=0))
    first = script.sampled_probabilities(model, images, 1)
    second = script.sampled_probabilities(model, images, 1)
    np.testing.assert_allclose(first.sum(-1), 1.0, rtol=1e-5)
    assert np.abs(first - second).max() > 1e-3  # fresh draws each pass
    assert np.abs(first - expected).max() > 1e-3
    # The expected rule is back afterwards: deterministic, as before.
    np.testing.assert_allclose(softmax(model.predict(images, verbose=0)), expected, rtol=1e-5)


def test_own_recipe_takes_away_one_ingredient_of_the_harness_recipe():
    script = _script("own_recipe")
    cell = Cell("domain", "large", "adafilter", "own", 200)
    recipe = default_optimizer(cell)
    variants = {name: script.recipe_without(name)(cell) for name in script.INGREDIENTS}

    def rate(optimizer, step):
        return float(keras.ops.convert_to_numpy(optimizer._learning_rate(step)))

    # The recipe decays to zero; without the decay the rate stays at its peak; the warm-up stays.
    assert rate(recipe, 199) < 1e-4 and rate(variants["constant_rate"], 199) == pytest.approx(0.01)
    assert rate(variants["constant_rate"], 0) == pytest.approx(rate(recipe, 0))
    assert recipe.weight_decay_l2 == 1e-4 and variants["no_weight_decay"].weight_decay_l2 == 0.0
    assert recipe.multipliers and not variants["no_head_multiplier"].multipliers
    # Everything else as in the recipe.
    assert variants["no_head_multiplier"].weight_decay_l2 == 1e-4
    assert rate(variants["no_weight_decay"], 150) == pytest.approx(rate(recipe, 150))


def test_training_fit_forces_every_gate_at_inference_and_restores_the_rule():
    script = _script("training_fit")
    plain, model, conv = _one_gated_conv_model()
    rng = np.random.default_rng(1)
    # The branches differ: the fine-tuned one is the pre-trained one plus noise.
    conv.finetuned_kernel.assign(
        keras.ops.convert_to_numpy(conv.pretrained_kernel)
        + rng.normal(size=conv.finetuned_kernel.shape) * 0.5
    )
    images = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    with script.forced_gates(model, 0.0):
        pretrained_only = model.predict(images, verbose=0)
    with script.forced_gates(model, 1.0):
        finetuned_only = model.predict(images, verbose=0)
    # All gates on the pre-trained filters: the model it wrapped (its BN statistics as wrapped).
    np.testing.assert_allclose(pretrained_only, plain.predict(images, verbose=0), atol=1e-4)
    assert np.abs(finetuned_only - pretrained_only).max() > 1e-2
    assert np.abs(finetuned_only - expected).max() > 1e-3
    # The controller's own rule is back afterwards.
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-6)
    # fit_of scores uint8 images as the benchmark feeds them ([0, 1]).
    pixels = rng.integers(0, 256, size=(16, 8, 8, 3)).astype("uint8")
    labels = np.argmax(model.predict(pixels.astype("float32") / 255.0, verbose=0), -1)
    assert script.fit_of(model, (pixels, labels))["accuracy"] == 1.0
    assert script.fit_of(model, (pixels, (labels + 1) % 4))["accuracy"] == 0.0
    with pytest.raises(ValueError, match="no gate controller"):
        with script.forced_gates(plain, 1.0):
            pass


def _script(name):
    """research/<question>/NAME.py, imported as a module."""
    path = RESEARCH / SCRIPTS[name] / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_{name}", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _one_gated_conv_model():
    """(plain model, its wrap(), the one AdaFilterConv2D): Conv2D, BN, ReLU, pooling, Dense."""
    import adafilter_keras as ak

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    plain = keras.Model(inputs, keras.layers.Dense(4)(x))
    model = ak.wrap(plain, seed=0)
    (conv,) = [layer for layer in model.layers if isinstance(layer, ak.AdaFilterConv2D)]
    return plain, model, conv


def test_probe_estimators_change_the_training_gates_and_leave_inference_alone():
    script = _script("adafilter_probes")
    logits = keras.ops.convert_to_tensor(np.array([[-2.0, -0.5, 0.5, 3.0]], "float32"))
    probability = 1.0 / (1.0 + np.exp(-keras.ops.convert_to_numpy(logits)))
    seed = keras.random.SeedGenerator(0)

    def gates(name, training):
        sample = script.patched(script.ESTIMATORS[name])
        out = sample(logits, temperature=1.0, seed=seed, training=training)
        return keras.ops.convert_to_numpy(out)

    # `expected`: the gate's mean in training, the same function as the inference rule.
    np.testing.assert_allclose(gates("expected", True), probability, rtol=1e-6)
    # `deterministic`: the hard decision without noise, the same for every draw.
    np.testing.assert_array_equal(gates("deterministic", True), [[0.0, 0.0, 1.0, 1.0]])
    # `relaxed`: noisy and soft: strictly between 0 and 1, and different from the mean.
    relaxed = gates("relaxed", True)
    assert np.all((relaxed > 0) & (relaxed < 1)) and np.abs(relaxed - probability).max() > 1e-3
    # Inference is the library's rule whatever the estimator.
    for name in script.ESTIMATORS:
        np.testing.assert_allclose(gates(name, False), probability, rtol=1e-6)


def test_probe_scales_the_finetuned_kernels_gradient_and_nothing_else():
    script = _script("adafilter_probes")
    factory = script.scaled_finetuned_gradient(1.5)
    weights = {
        name: keras.Variable(np.zeros(3, "float32"), name=name)
        for name in ("finetuned_kernel", "pretrained_bias", "gate_controller_bias")
    }
    for optimizer_name in ("sgd", "own"):
        optimizer = factory(Cell("digits", "few_shot", "adafilter", optimizer_name, 100))
        plain = default_optimizer(Cell("digits", "few_shot", "adafilter", optimizer_name, 100))
        assert type(optimizer) is type(plain)  # the benchmark's optimizer, one change
        for variable in weights.values():
            variable.assign(np.zeros(3, "float32"))
        optimizer.build(list(weights.values()))
        rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        optimizer.apply([np.ones(3, "float32")] * 3, list(weights.values()))
        moved = {k: keras.ops.convert_to_numpy(v) for k, v in weights.items()}
        np.testing.assert_allclose(moved["finetuned_kernel"], -1.5 * rate, rtol=1e-5)
        np.testing.assert_allclose(moved["pretrained_bias"], -rate, rtol=1e-5)
        np.testing.assert_allclose(moved["gate_controller_bias"], -rate, rtol=1e-5)


@pytest.mark.parametrize(
    "probe, ungated",
    [
        ("ungated_shortcuts", lambda name: name.endswith("_0_conv")),
        ("ungated_stem", lambda name: name == "conv1_conv"),
    ],
)
def test_ungated_probes_leave_exactly_their_convolutions_ungated(probe, ungated):
    import adafilter_keras as ak
    from adafilter_keras.backbones.models import small_resnet

    script = _script("adafilter_probes")
    backbone = small_resnet((16, 16, 3), width=4)
    convs = [layer.name for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    wrapped = ak.wrap(backbone, **script.apply_probe(probe).variant)
    gated = [layer.name for layer in wrapped.layers if isinstance(layer, ak.AdaFilterConv2D)]
    left = [name for name in convs if ungated(name)]
    assert left and sorted(gated) == sorted(set(convs) - set(left))


def test_gate_gradient_is_zero_while_the_branches_are_equal_and_per_example_after():
    script = _script("gate_gradient")
    _, model, conv = _one_gated_conv_model()
    rng = np.random.default_rng(3)
    images = rng.normal(size=(12, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 4, size=12)
    original = script.gate_controller.sample_gates
    ((gates, gradient, logits),) = script.gate_gradients(model, images, labels, batch_size=4)
    assert gates.shape == gradient.shape == logits.shape == (12, 8)
    assert set(np.unique(gates)) <= {0.0, 1.0}  # training-mode draws
    np.testing.assert_array_equal(gradient, 0.0)  # F = S: the gate changes nothing
    conv.finetuned_kernel.assign(rng.normal(size=conv.finetuned_kernel.shape).astype("float32"))
    ((_, gradient, _),) = script.gate_gradients(model, images, labels, batch_size=4)
    assert (np.abs(gradient) > 1e-6).mean() > 0.5
    assert script.gate_controller.sample_gates is original  # restored
    (inference,) = script.inference_gates(model, images)
    assert inference.shape == (12, 8) and np.all((inference > 0) & (inference < 1))
    summary = script.summarize((gates, gradient, logits), bias=np.zeros(8))
    assert summary["mean_gradient"] == pytest.approx(float(gradient.mean()))
    assert 0.0 <= summary["filters_t_below_minus2"] + summary["filters_t_above_2"] <= 1.0
    np.testing.assert_allclose(summary["filter_fraction_finetuned"], gates.mean(0), rtol=1e-6)
    np.testing.assert_allclose(summary["filter_mean_gradient"], gradient.mean(0), rtol=1e-5)


def test_agreement_between_seeds_is_one_for_the_same_rates_and_minus_one_for_opposite():
    script = _script("gate_gradient")
    rates = [0.1, 0.5, 0.7, 0.9]

    def seed(*layers):
        return {"layers": [{"filter_fraction_finetuned": layer} for layer in layers]}

    same, reversed_ = seed(rates, rates), seed(rates, [1.0 - r for r in rates])
    agreement = script.agreement_between_seeds([same, reversed_])
    assert agreement == pytest.approx([1.0, -1.0])
    assert script.agreement_between_seeds([same]) == []
    assert np.isnan(script.agreement_between_seeds([same, seed([0.5] * 4, rates)])[0])


def test_controller_constant_rate_probe_keeps_only_the_controller_at_the_peak_rate():
    script = _script("adafilter_probes")
    # The recipe over 100 steps: 5 of warm-up, then cosine decay from 0.01.
    cell = Cell("domain", "large", "adafilter", "own", 100)
    optimizer = script.controller_at_peak_rate(0.01)(cell)
    controller = keras.Variable(np.zeros(3, "float32"), name="gate_controller_bias")
    other = keras.Variable(np.zeros(3, "float32"), name="conv_bias")
    optimizer.build([controller, other])
    optimizer.iterations.assign(80)
    rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    assert 0.0 < rate < 0.005
    optimizer.apply([np.ones(3, "float32")] * 2, [controller, other])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(controller), -0.01, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(other), -rate, rtol=1e-5)


def test_head_bias_probe_speeds_up_only_the_controller_heads_biases():
    script = _script("adafilter_probes")
    optimizer_for = script.faster_head_biases(10.0)

    class Path:
        def __init__(self, path):
            self.path = path

    for name in ("own", "sgd"):
        optimizer = optimizer_for(Cell("domain", "large", "adafilter", name, 100))
        assert optimizer.multiplier_for(Path("gate_controller/head_3/bias")) == 10.0
        assert optimizer.multiplier_for(Path("gate_controller/head_3/kernel")) == 1.0
        assert optimizer.multiplier_for(Path("conv1_conv/finetuned_kernel")) == 1.0
    assert optimizer.get_config()["momentum"] == 0.9
    with pytest.raises(SystemExit, match="own and sgd"):
        optimizer_for(Cell("domain", "large", "adafilter", "adam", 100))


def test_full_gradient_mix_trains_the_finetuned_branch_on_every_example_only():
    import tensorflow as tf

    from adafilter_keras.layers import branches

    script = _script("finetuned_gradient")
    rng = np.random.default_rng(0)
    pretrained, finetuned = (
        tf.Variable(rng.normal(size=(4, 3, 3, 5)).astype("float32")) for _ in range(2)
    )
    gate = tf.Variable(np.tile([[0.0, 1.0, 0.0, 1.0, 0.3]], (4, 1)).astype("float32"))
    affines = ((tf.fill([5], 2.0), tf.zeros([5])), (tf.fill([5], 3.0), tf.ones([5])))
    pairs = (
        (branches.mix_branches, script.mix_with_full_finetuned_gradient, ()),
        (branches.mix_normalized, script.mix_normalized_with_full_finetuned_gradient, affines),
    )
    for library_mix, probe_mix, extra in pairs:

        def run(mix, extra=extra):
            with tf.GradientTape() as tape:
                out = mix(pretrained, finetuned, *extra, gate)
                loss = tf.reduce_sum(out**2)
            return out, tape.gradient(loss, [pretrained, finetuned, gate])

        out, (d_pretrained, d_finetuned, d_gate) = run(library_mix)
        probe_out, (p_pretrained, p_finetuned, p_gate) = run(probe_mix)
        np.testing.assert_allclose(probe_out.numpy(), out.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(p_gate.numpy(), d_gate.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(p_pretrained.numpy(), d_pretrained.numpy(), rtol=1e-4, atol=1e-4)
        # Where the gate picked the pre-trained branch, the fine-tuned one learns anyway: its
        # gradient is that of a gate of 1 (the output's gradient times its affine scale).
        scale = 3.0 if extra else 1.0
        np.testing.assert_array_equal(d_finetuned.numpy()[..., 0], 0.0)
        np.testing.assert_allclose(
            p_finetuned.numpy(), 2.0 * out.numpy() * scale, rtol=1e-4, atol=1e-4
        )


def test_layer_shared_bias_probe_gives_every_filter_the_mean_of_its_heads_biases():
    from adafilter_keras.inspection import controller_or_none

    script = _script("adafilter_probes")
    probe = script.apply_probe("layer_shared_bias")
    assert probe.model_hook is script.share_head_biases and not probe.variant
    _, model, _ = _one_gated_conv_model()
    probe.model_hook(model, Cell("digits", "few_shot", "adafilter", "sgd", 4))
    (head,) = controller_or_none(model).heads
    head.bias.assign(np.arange(8, dtype="float32"))
    hidden = np.random.default_rng(0).normal(size=(2, head.kernel.shape[0])).astype("float32")
    logits = keras.ops.convert_to_numpy(head.call(hidden))
    kernel = keras.ops.convert_to_numpy(head.kernel)
    np.testing.assert_allclose(logits, hidden @ kernel + 3.5, rtol=1e-5, atol=1e-5)
    # Only the model given to the hook: another model's heads are the library's.
    _, other, _ = _one_gated_conv_model()
    assert "call" not in vars(controller_or_none(other).heads[0])


@pytest.mark.parametrize("probe, multiplier", [("layer_rate", 1.0), ("layer_rate_x10", 10.0)])
def test_layer_rate_probe_adds_one_offset_per_layer_with_the_filters_summed_gradient(
    probe, multiplier
):
    import tensorflow as tf

    from adafilter_keras.layers import gate_controller

    script = _script("adafilter_probes")
    controller_class = gate_controller.GateController
    original = controller_class.build
    try:
        script.apply_probe(probe)
        controller = controller_class(
            filters=[3, 5], input_channels=[4, 6], units=8, seed=0, gradient_scale=300.0
        )
        controller.build(None)
    finally:
        controller_class.build = original
    rates = [w for w in controller.trainable_weights if "layer_rate" in w.path]
    assert [w.path.split("/")[-1] for w in rates] == ["layer_rate_0", "layer_rate_1"]
    head = controller.heads[1]
    rates[1].assign(0.5)
    hidden = np.random.default_rng(0).normal(size=(2, 8)).astype("float32")
    kernel = keras.ops.convert_to_numpy(head.kernel)
    bias = keras.ops.convert_to_numpy(head.bias)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(head.call(hidden)), hidden @ kernel + bias + 0.5, rtol=1e-5
    )
    # Through the controller's call (inference gates: sigmoid of the scaled logits): the offset
    # is one weight for the layer, moved by the sum of its filters' gradients times the multiplier.
    inputs = tf.constant(np.random.default_rng(1).normal(size=(2, 3, 3, 6)).astype("float32"))
    states = [tf.zeros((2, 8)), tf.zeros((2, 8))]
    weights = np.random.default_rng(2).normal(size=(2, 5)).astype("float32")
    with tf.GradientTape() as tape:
        gate, _, _ = controller(inputs, states=states, index=1, training=False)
        loss = tf.reduce_sum(gate * weights)
    rate_gradient, bias_gradient = tape.gradient(loss, [rates[1], head.bias])
    assert np.abs(bias_gradient.numpy()).max() > 1.0  # the controller's x300 reaches the bias
    np.testing.assert_allclose(
        rate_gradient.numpy(), multiplier * bias_gradient.numpy().sum(), rtol=1e-4
    )


def test_input_dependence_between_seeds_ignores_the_filters_rates():
    script = _script("gate_gradient")
    rng = np.random.default_rng(0)
    pattern = rng.uniform(size=(20, 6))  # per (example, filter)
    shifted = np.clip(pattern + np.linspace(-0.3, 0.3, 6), -1, 2)  # other rates, same pattern
    other = rng.uniform(size=(20, 6))
    agreement = script.input_dependence_between_seeds([[pattern, pattern], [shifted, other]])
    assert agreement[0] == pytest.approx(1.0)
    assert abs(agreement[1]) < 0.3
    assert script.input_dependence_between_seeds([[pattern]]) == []


def test_probe_refuses_a_baseline_without_runs(tmp_path):
    script = _script("adafilter_probes")
    with pytest.raises(SystemExit, match="No runs.jsonl in --baseline-runs"):
        script.main(
            [
                "--probe",
                "expected",
                "--output-dir",
                str(tmp_path / "out"),
                "--baseline-runs",
                str(tmp_path / "baseline"),
            ]
        )
    assert not (tmp_path / "out").exists()


def test_probes_pair_only_with_baseline_runs_of_their_budget():
    script = _script("adafilter_probes")
    settings = BenchmarkSettings(methods=("adafilter",))  # the probes' 4-epoch budget
    stepped = dataclasses.replace(settings, large_steps=2000)
    for regime, matches in (("few_shot", True), ("large", False)):
        record = {"key": run_key(stepped, "domain", regime, "finetune", "own", 3)}
        assert script._same_budget(record, settings) == matches
    same = {"key": run_key(settings, "domain", "large", "finetune", "own", 3)}
    assert script._same_budget(same, settings)


def test_compare_variants_refuses_larger_runs_of_two_lengths(tmp_path):
    script = _script("compare_variants")
    stepped = BenchmarkSettings(large_steps=2000)
    record = _record("adafilter", 0, 0.5, "domain", "large")
    lines = [
        dict(record, key=run_key(s, "domain", "large", "adafilter", "sgd", 0))
        for s in (BenchmarkSettings(), stepped)
    ]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(SystemExit, match="different lengths"):
        script.main(["--output-dir", str(tmp_path), "--wrap-settings", '{"initial_rate": 0.7}'])


def test_choose_defaults_ranks_candidates_by_their_seeds_below_fine_tuning():
    choose = _script("choose_defaults")
    records = []
    for seed, (base, before, after) in enumerate([(0.90, 0.85, 0.89), (0.80, 0.82, 0.81)]):
        for method, accuracy, variant in (
            ("finetune", base, {}),
            ("adafilter", before, {"initial_rate": 0.5}),
            ("adafilter", after, {"initial_rate": 0.8}),
        ):
            key = {"variant": {**choose.BEFORE, **variant} if method == "adafilter" else {}}
            records.append(
                dict(task="classes", backbone="plain@16", regime="few_shot", optimizer="sgd",
                     method=method, seed=seed, val_accuracy=accuracy, test_accuracy=0.0,
                     key=json.dumps(key))
            )  # fmt: skip
    rows = {r["candidate"]: r for r in choose.rank(records) if r["optimizer"] == "all"}
    assert set(rows) == {"0.1 defaults", "initial_rate=0.8"}
    # 0.1 defaults: -5 and +2 points (one seed below -3); the candidate: -1 and +1.
    assert (
        rows["0.1 defaults"]["seeds_below_3"] == 1
        and rows["initial_rate=0.8"]["seeds_below_3"] == 0
    )
    assert rows["0.1 defaults"]["worst"] == pytest.approx(-5.0)
    assert rows["initial_rate=0.8"]["mean"] == pytest.approx(0.0)


def test_full_gradient_patch_reaches_the_training_normalization(monkeypatch):
    import tensorflow as tf

    from adafilter_keras import GatedBatchNorm
    from adafilter_keras.layers import adafilter_conv2d, gated_batch_norm

    for module, name in (
        (adafilter_conv2d, "mix_branches"),
        (gated_batch_norm, "mix_normalized"),
        (gated_batch_norm, "mix_batch_normalized"),
    ):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    rng = np.random.default_rng(0)
    pretrained, finetuned = (
        tf.Variable(rng.normal(size=(4, 3, 3, 2)).astype("float32")) for _ in range(2)
    )
    gate = tf.constant(np.tile([[0.0, 1.0]], (4, 1)).astype("float32"))

    def finetuned_gradient():
        layer = GatedBatchNorm(pretrained_branch="adapt")
        with tf.GradientTape() as tape:
            out = layer([pretrained, finetuned, gate], training=True)
            loss = tf.reduce_sum(out**2 * tf.constant([1.0, 2.0]))
        return tape.gradient(loss, finetuned).numpy()

    np.testing.assert_array_equal(finetuned_gradient()[..., 0], 0.0)  # gated off
    _script("finetuned_gradient").use_full_finetuned_gradient()
    assert np.abs(finetuned_gradient()[..., 0]).max() > 1e-3
