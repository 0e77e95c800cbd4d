"""The offline transfer benchmark: tasks, paired statistics, resume and reproducibility."""

import argparse
import dataclasses
import importlib.util
import io
import json
import math
import pathlib
import re

import keras
import numpy as np
import pytest

from adafilter_keras.transfer import command, report, tasks
from adafilter_keras.transfer.runs import Benchmark, BenchmarkSettings, _Cell, run_key
from adafilter_keras.wrapping.wrap import DEFAULTS as WRAP_DEFAULTS

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the benchmark resizes images with TensorFlow"
)


@pytest.mark.parametrize("name", tasks.TASKS + tasks.EXTRA_TASKS)
def test_tasks_have_disjoint_fixed_splits(name):
    task = tasks.load_task(name, 8)
    assert task.source[0].shape[1:] == (8, 8, 3) and task.source[0].dtype == np.uint8
    assert task.num_classes == (5 if name == "classes" else 10)
    train, validation = task.sample("few_shot", 3, shots=4)
    assert np.bincount(train[1]).tolist() == [4] * task.num_classes
    assert np.bincount(validation[1]).tolist() == [tasks.VALIDATION_PER_CLASS] * task.num_classes
    again, _ = task.sample("few_shot", 3, shots=4)
    np.testing.assert_array_equal(train[0], again[0])
    other, _ = task.sample("few_shot", 4, shots=4)
    assert not np.array_equal(train[0], other[0])
    # No training image is a validation image.
    flat = {bytes(image) for image in train[0]}
    assert not flat & {bytes(image) for image in validation[0]}
    large, _ = task.sample("large", 0, shots=4)
    assert len(large[1]) > 50 * task.num_classes


def test_classes_task_shares_no_class_and_domain_task_changes_the_images():
    classes = tasks.load_task("classes", 8)
    assert classes.source_name != "mnist"
    assert set(np.unique(classes.source[1])) == set(range(5))
    domain, digits = tasks.load_task("domain", 8), tasks.load_task("digits", 8)
    assert domain.source_name == digits.source_name == "mnist"
    # Same digits as the source, blended with colour photographs: not grey any more.
    channels = domain.pool[0].astype(int)
    assert np.abs(channels[..., 0] - channels[..., 1]).mean() > 5


def test_mixed_task_is_half_source_domain_half_shifted_per_image():
    mixed, domain = tasks.load_task("mixed", 8), tasks.load_task("domain", 8)
    assert mixed.source_name == "mnist" and "mixed" not in tasks.TASKS
    np.testing.assert_array_equal(mixed.pool[1], domain.pool[1])  # the same digits
    for images, shifted in ((mixed.pool[0], domain.pool[0]), (mixed.test[0], domain.test[0])):
        grey = (images[..., 0] == images[..., 1]).all(axis=(1, 2))
        assert 0.4 < grey.mean() < 0.6  # about half kept the source's grey digits
        np.testing.assert_array_equal(images[~grey], shifted[~grey])  # the rest: MNIST-M
    # True marks the plain test images: grey, and not the shifted ones.
    plain = mixed.test_groups
    assert grey[plain].all() and 0.4 < plain.mean() < 0.6
    np.testing.assert_array_equal(mixed.test[0][~plain], domain.test[0][~plain])
    assert domain.test_groups is None


def test_paired_interval_is_student_t():
    mean, half = report.paired([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert math.isclose(half, 4.302652729911275 * 1.0 / math.sqrt(3), rel_tol=1e-9)
    assert math.isnan(report.paired([1.0])[1])


def _record(method, seed, accuracy, task="digits", regime="few_shot", optimizer="sgd"):
    return dict(
        task=task, regime=regime, optimizer=optimizer, method=method, seed=seed,
        test_accuracy=accuracy, val_accuracy=accuracy,
    )  # fmt: skip


def test_compare_pairs_runs_by_seed():
    records = [
        _record("finetune", 0, 0.50),
        _record("finetune", 1, 0.70),
        _record("adafilter", 0, 0.55),
        _record("adafilter", 1, 0.72),
        _record("adafilter", 2, 0.99),  # no finetune partner: not in the difference
    ]
    (row,) = [r for r in report.compare(records) if r["method"] == "adafilter"]
    assert row["seeds"] == 3
    assert math.isclose(row["difference"], 3.5)
    versus = report.pair_methods(
        records + [_record("stochastic", 0, 0.45), _record("stochastic", 1, 0.72)],
        "adafilter",
        "stochastic",
    )
    assert math.isclose(versus[0]["difference"], 5.0)


def test_learned_vs_random_is_reported_on_validation_as_well_as_test():
    records = [
        dict(_record(method, seed, test), val_accuracy=val)
        for method, seed, test, val in (
            ("finetune", 0, 0.5, 0.5),
            ("finetune", 1, 0.5, 0.5),
            ("adafilter", 0, 0.60, 0.52),
            ("adafilter", 1, 0.60, 0.54),
            ("stochastic", 0, 0.50, 0.50),
            ("stochastic", 1, 0.50, 0.50),
        )
    ]
    table = report.markdown(records)
    assert "| sgd | test | +10.0 ± 0.0 | +10.00 ± 0.00 |" in table
    assert "| sgd | validation | +3.0 ± 12.7 | +3.00 ± 12.71 |" in table


def test_targets_fail_on_one_cell_worse_than_its_interval_though_the_mean_is_level():
    # Two cells, three seeds: adafilter ties in one (+1, -1, 0 points) and, in the other, is
    # 2 points behind with almost no spread (-2.0, -2.1, -1.9): worse by more than its interval.
    gains = {("digits", "large"): (1.0, -1.0, 0.0), ("domain", "large"): (-2.0, -2.1, -1.9)}
    records = []
    for (task, regime), points in gains.items():
        for seed, point in enumerate(points):
            base = 0.5 + 0.01 * seed
            records += [
                _record("finetune", seed, base, task, regime),
                _record("adafilter", seed, base + point / 100, task, regime),
                _record("stochastic", seed, base - 0.05 - point / 100, task, regime),
            ]
    verdicts = {(v["target"], v["split"]): v for v in report.targets(records)}
    versus = verdicts["versus_finetune", "test"]
    assert math.isclose(versus["mean"], -1.0) and versus["cells"] == 2
    assert versus["level"] and not versus["ahead"]  # the mean's interval reaches zero ...
    assert versus["worse_cells"] == ["domain large"] and not versus["met"]  # ... one cell not
    random = verdicts["versus_random", "validation"]
    assert random["met"] and math.isclose(random["mean"], 5.0 + 2 * -1.0)
    table = report.markdown(records)
    assert "| adafilter not worse than finetune | sgd | test | -1.00 ± " in table
    assert "| no | domain large | — | no |" in table
    # Without the method there is nothing to judge.
    assert report.targets([r for r in records if r["method"] != "adafilter"]) == []
    # With fine-tuning ahead by a hair in every cell and a wide spread, the target holds.
    tied = [dict(r, test_accuracy=r["test_accuracy"] + (0.03 if r["seed"] == 0 else 0))
            for r in records if r["method"] == "finetune"]  # fmt: skip
    tied += [
        dict(r, method="adafilter", test_accuracy=r["test_accuracy"] - 0.001)
        for r in records
        if r["method"] == "finetune"
    ]
    (held,) = [v for v in report.targets(tied) if v["split"] == "test"]
    assert held["met"] and held["level"] and not held["ahead"] and held["worse_cells"] == []
    # One seed in a cell: no interval, so no verdict rather than a wrong "no".
    single = [r for r in records if r["task"] == "digits" or r["seed"] == 0]
    (alone,) = [
        v
        for v in report.targets(single)
        if v["split"] == "test" and v["target"] == "versus_finetune"
    ]
    assert alone["met"] is None and alone["level"] is None and alone["worse_cells"] == []
    assert "undetermined" in report.markdown(single)


TINY = BenchmarkSettings(
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


def test_benchmark_repeats_exactly_in_a_fresh_directory(tmp_path):
    settings = dataclasses.replace(TINY, seeds=(1,))
    first = Benchmark(settings, tmp_path / "a", stream=io.StringIO()).run()
    # The same settings in a fresh directory (fresh source model too) give the same numbers.
    again = Benchmark(settings, tmp_path / "b", stream=io.StringIO()).run()
    assert len(first) == len(again) == 2
    for a, b in zip(first, again, strict=True):
        assert (a["method"], a["seed"]) == (b["method"], b["seed"])
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["val_accuracy"] == b["val_accuracy"]
    gated = [r for r in again if r["method"] == "adafilter"]
    assert all(len(r["gates"]) == 9 for r in gated)  # one report per gated conv of SmallResNet
    table = report.write(again, tmp_path / "b")
    assert "adafilter" in table and (tmp_path / "b" / "differences.png").exists()
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert len(saved["runs"]) == 2 and saved["comparisons"]


# Slow (a third benchmark in one test); the default suite repeats a benchmark exactly above.
@pytest.mark.slow
def test_benchmark_resumes_where_it_stopped_with_the_same_numbers(tmp_path):
    out = io.StringIO()
    first = Benchmark(dataclasses.replace(TINY, seeds=(0,)), tmp_path / "a", stream=out).run()
    assert len(first) == 2
    resumed = Benchmark(TINY, tmp_path / "a", stream=out).run()
    assert "resuming: 2 of 4 runs" in out.getvalue()
    assert len((tmp_path / "a" / "runs.jsonl").read_text().splitlines()) == 4
    assert [r["test_accuracy"] for r in resumed[:1]] == [first[0]["test_accuracy"]]
    # A seed run after another in one process equals that seed run first.
    alone = Benchmark(dataclasses.replace(TINY, seeds=(1,)), tmp_path / "b", stream=out).run()
    by_key = {(r["method"], r["seed"]): r["test_accuracy"] for r in resumed}
    assert all(by_key[r["method"], 1] == r["test_accuracy"] for r in alone)


def test_mixed_task_records_how_differently_the_gates_treat_its_two_kinds(tmp_path):
    settings = dataclasses.replace(
        TINY, tasks=("mixed",), methods=("stochastic", "adafilter"), seeds=(0,)
    )
    runs = {r["method"]: r for r in Benchmark(settings, tmp_path, stream=io.StringIO()).run()}
    gaps = runs["adafilter"]["gate_group_gap"]
    assert len(gaps) == 9 and all(0.0 <= gap <= 1.0 for gap in gaps)
    assert max(gaps) > 0.0  # learned gates depend on the input, if only through initial weights
    # Random gates are a constant at inference: they cannot tell the two kinds apart.
    np.testing.assert_allclose(runs["stochastic"]["gate_group_gap"], 0.0, atol=1e-6)


def test_wrap_settings_flag_names_the_gated_runs_and_rejects_what_wrap_does_not_take():
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    varied = command.settings_from(parser.parse_args(["--wrap-settings", '{"initial_rate": 0.7}']))
    default = command.settings_from(parser.parse_args([]))
    explicit = command.settings_from(
        parser.parse_args(["--wrap-settings", json.dumps(WRAP_DEFAULTS)])
    )
    assert varied.variant == {"initial_rate": 0.7}
    # A value is keyed as wrap() holds it: 300 and 300.0 are one run.
    whole, decimal = (
        command.settings_from(parser.parse_args(["--wrap-settings", text]))
        for text in ('{"gradient_scale": 300}', '{"gradient_scale": 300.0}')
    )
    assert whole.variant == {"gradient_scale": 300.0}
    assert run_key(whole, "digits", "few_shot", "adafilter", "sgd", 0) == run_key(
        decimal, "digits", "few_shot", "adafilter", "sgd", 0
    )
    for method, changes in (("adafilter", True), ("stochastic", True), ("finetune", False)):
        key = run_key(varied, "digits", "few_shot", method, "sgd", 0)
        assert (key != run_key(default, "digits", "few_shot", method, "sgd", 0)) == changes
        # Naming the defaults is the same run as leaving them out: a run made under settings
        # that later become the defaults is reused.
        assert run_key(explicit, "digits", "few_shot", method, "sgd", 0) == run_key(
            default, "digits", "few_shot", method, "sgd", 0
        )
    assert "initial_rate" in command.note(varied) and "wrap()" not in command.note(default)
    for text, message in (
        ("initial_rate=0.5", "must be a JSON object"),
        ("[0.5]", "must be a JSON object"),
        ('{"rate": 0.5}', "unknown keys ['rate']"),
        ('{"initial_rate": 1.5}', "initial_rate"),
        ('{"pretrained_bn": "thaw"}', "pretrained_bn"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            command.settings_from(parser.parse_args(["--wrap-settings", text]))


@pytest.mark.parametrize(
    "flag, attribute, default_value, value, note, refused, message",
    [
        ("--image-size", "image_size", 16, 32, "at 32 px", "4", "`--image-size` must be >= 8"),
        (
            "--source-epochs",
            "source_epochs",
            6,
            24,
            "for 24 epochs",
            "0",
            "`--source-epochs` must be >= 1",
        ),
    ],
)
def test_source_model_flag_is_part_of_every_run_and_refuses_bad_values(
    flag, attribute, default_value, value, note, refused, message
):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    default = command.settings_from(parser.parse_args([]))
    changed = command.settings_from(parser.parse_args([flag, str(value)]))
    assert getattr(default, attribute) == default_value and getattr(changed, attribute) == value
    for method in ("finetune", "adafilter"):
        assert run_key(changed, "digits", "few_shot", method, "sgd", 0) != run_key(
            default, "digits", "few_shot", method, "sgd", 0
        )
    assert note in command.note(changed)
    with pytest.raises(ValueError, match=re.escape(message)):
        command.settings_from(parser.parse_args([flag, refused]))


def test_larger_regime_is_2000_steps_and_3_seeds_and_epoch_runs_keep_their_keys():
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    default = command.settings_from(parser.parse_args([]))
    assert default.large_steps == 2000 and default.large_seeds == (0, 1, 2)
    assert default.total_runs() == 288  # 180 few-shot + 108 larger
    epochs = command.settings_from(parser.parse_args(["--large-epochs", "4"]))
    longer = command.settings_from(parser.parse_args(["--large-steps", "3000"]))
    assert epochs.large_steps is None and longer.large_steps == 3000
    # `--large-epochs 4` names the committed 4-epoch larger runs, as they were keyed.
    legacy = BenchmarkSettings()
    for method in ("finetune", "adafilter"):
        assert run_key(epochs, "domain", "large", method, "own", 0) == run_key(
            legacy, "domain", "large", method, "own", 0
        )
        large = [run_key(s, "domain", "large", method, "own", 0) for s in (default, epochs, longer)]
        assert len(set(large)) == 3
        few = [run_key(s, "domain", "few_shot", method, "own", 0) for s in (default, legacy)]
        assert few[0] == few[1]  # the few-shot runs are shared
    key = json.loads(run_key(epochs, "domain", "large", "finetune", "own", 0))
    assert key["epochs"] == 4 and key["steps"] is None
    assert "2000 steps" in command.note(default) and "4 epochs" in command.note(epochs)
    for flags, message in (
        (["--large-steps", "0"], "`--large-steps` must be >= 1"),
        (["--large-epochs", "0"], "`--large-epochs` must be >= 1"),
        (["--large-epochs", "4", "--large-steps", "2000"], "not both"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            command.settings_from(parser.parse_args(flags))


def test_larger_run_trains_for_large_steps_whatever_the_task_size(tmp_path):
    settings = dataclasses.replace(
        TINY, regimes=("large",), methods=("finetune",), large_seeds=(0,), large_steps=3
    )
    records = Benchmark(settings, tmp_path, stream=io.StringIO()).run()
    assert [r["steps"] for r in records] == [3]
    assert records[0]["train_size"] > 3 * settings.batch_size  # fewer steps than one epoch


def test_adam_is_an_investigation_optimizer_outside_the_default_pair():
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert "adam" not in command.settings_from(parser.parse_args([])).optimizers
    chosen = command.settings_from(parser.parse_args(["--optimizers", "adam", "sgd"]))
    assert chosen.optimizers == ("adam", "sgd")
    with pytest.raises(SystemExit):
        parser.parse_args(["--optimizers", "adamw"])
    cell = object.__new__(_Cell)  # the optimizer choice only, without building a model
    cell.optimizer_name, cell.method, cell.steps = "adam", "adafilter", 150
    optimizer = cell._optimizer()
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(1e-3)
    cell.optimizer_name = "sgd"
    assert type(cell._optimizer()) is keras.optimizers.SGD


def test_compare_variants_pairs_adafilter_under_two_settings_by_seed(tmp_path, capsys):
    script = _benchmark_script("compare_variants")
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
    script = _benchmark_script("sampled_inference")
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
    script = _benchmark_script("own_recipe")
    cell = object.__new__(_Cell)
    cell.optimizer_name, cell.method, cell.steps = "own", "adafilter", 200
    recipe = cell._optimizer()
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
    script = _benchmark_script("training_fit")
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


def test_report_of_finetune_alone_writes_the_table_without_a_figure(tmp_path):
    (tmp_path / "differences.png").write_bytes(b"stale")
    records = [_record("finetune", seed, 0.9) for seed in (0, 1)]
    table = report.write(records, tmp_path)
    assert "finetune" in table and (tmp_path / "table.md").exists()
    assert json.loads((tmp_path / "results.json").read_text())["runs"]
    assert not (tmp_path / "differences.png").exists()  # no stale figure of another run
    report.write(records + [_record("adafilter", seed, 0.8) for seed in (0, 1)], tmp_path)
    assert (tmp_path / "differences.png").exists()


def test_learned_vs_random_table_only_where_both_were_run():
    records = [_record(m, s, a) for m, a in (("finetune", 0.9), ("adafilter", 0.8)) for s in (0, 1)]
    assert "Learned gates vs random gates" not in report.markdown(records)
    both = records + [_record("stochastic", seed, 0.7) for seed in (0, 1)]
    table = report.markdown(both)
    assert "Learned gates vs random gates" in table and "nan" not in table


def _benchmark_script(name):
    """benchmarks/NAME.py, imported as a module."""
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
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
    script = _benchmark_script("adafilter_probes")
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
    import tensorflow as tf

    from adafilter_keras.layers import adafilter_conv2d

    script = _benchmark_script("adafilter_probes")
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(2, 5, 5, 3)), "float32")
    kernels = [tf.Variable(rng.normal(size=(3, 3, 3, 4)).astype("float32")) for _ in range(2)]
    options = dict(
        strides=(1, 1), padding="same", data_format="channels_last", dilation_rate=(1, 1)
    )

    def run(convolve):
        with tf.GradientTape() as tape:
            pretrained, finetuned = convolve(images, kernels, **options)
            loss = tf.reduce_sum(pretrained**2) + tf.reduce_sum(finetuned**2)
        return [pretrained, finetuned], tape.gradient(loss, kernels)

    outputs, gradients = run(adafilter_conv2d._convolve)
    scaled_outputs, scaled_gradients = run(script.scaled_finetuned_gradient(1.5))
    for plain, scaled in zip(outputs, scaled_outputs, strict=True):
        np.testing.assert_array_equal(plain.numpy(), scaled.numpy())  # forward unchanged
    np.testing.assert_allclose(scaled_gradients[0].numpy(), gradients[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(scaled_gradients[1].numpy(), 1.5 * gradients[1].numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    "probe, ungated",
    [
        ("ungated_shortcuts", lambda name: name.endswith("_0_conv")),
        ("ungated_stem", lambda name: name == "conv1_conv"),
    ],
)
def test_ungated_probes_leave_exactly_their_convolutions_ungated(probe, ungated):
    import adafilter_keras as ak
    from adafilter_keras.training.backbones import small_resnet

    script = _benchmark_script("adafilter_probes")
    backbone = small_resnet((16, 16, 3), width=4)
    convs = [layer.name for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    wrapped = ak.wrap(backbone, **script.apply_probe(probe))
    gated = [layer.name for layer in wrapped.layers if isinstance(layer, ak.AdaFilterConv2D)]
    left = [name for name in convs if ungated(name)]
    assert left and sorted(gated) == sorted(set(convs) - set(left))


def test_gate_gradient_is_zero_while_the_branches_are_equal_and_per_example_after():
    script = _benchmark_script("gate_gradient")
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
    script = _benchmark_script("gate_gradient")
    rates = [0.1, 0.5, 0.7, 0.9]

    def seed(*layers):
        return {"layers": [{"filter_fraction_finetuned": layer} for layer in layers]}

    same, reversed_ = seed(rates, rates), seed(rates, [1.0 - r for r in rates])
    agreement = script.agreement_between_seeds([same, reversed_])
    assert agreement == pytest.approx([1.0, -1.0])
    assert script.agreement_between_seeds([same]) == []
    assert np.isnan(script.agreement_between_seeds([same, seed([0.5] * 4, rates)])[0])


def test_controller_constant_rate_probe_keeps_only_the_controller_at_the_peak_rate():
    from adafilter_keras.training.optimizers import SGDWithMultipliers, WarmupDecay

    script = _benchmark_script("adafilter_probes")
    schedule = WarmupDecay(peak=0.01, total_steps=100, warmup_steps=5, kind="cosine")
    optimizer = SGDWithMultipliers(learning_rate=schedule, momentum=0.0)
    controller = keras.Variable(np.zeros(3, "float32"), name="gate_controller_bias")
    other = keras.Variable(np.zeros(3, "float32"), name="conv_bias")
    optimizer.build([controller, other])
    optimizer.iterations.assign(80)
    rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    assert 0.0 < rate < 0.005
    apply = script.controller_at_peak_rate(0.01)
    apply(optimizer, [np.ones(3, "float32")] * 2, [controller, other])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(controller), -0.01, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(other), -rate, rtol=1e-5)


def test_head_bias_probe_speeds_up_only_the_controller_heads_biases():
    script = _benchmark_script("adafilter_probes")
    optimizer_for = script.faster_head_biases(10.0)
    cell = object.__new__(_Cell)
    cell.method, cell.steps = "adafilter", 100

    class Path:
        def __init__(self, path):
            self.path = path

    for name in ("own", "sgd"):
        cell.optimizer_name = name
        optimizer = optimizer_for(cell)
        assert optimizer.multiplier_for(Path("gate_controller/head_3/bias")) == 10.0
        assert optimizer.multiplier_for(Path("gate_controller/head_3/kernel")) == 1.0
        assert optimizer.multiplier_for(Path("conv1_conv/finetuned_kernel")) == 1.0
    assert optimizer.get_config()["momentum"] == 0.9
    cell.optimizer_name = "adam"
    with pytest.raises(SystemExit, match="own and sgd"):
        optimizer_for(cell)


def test_full_gradient_mix_trains_the_finetuned_branch_on_every_example_only():
    import tensorflow as tf

    from adafilter_keras.layers import branches

    script = _benchmark_script("finetuned_gradient")
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
    from adafilter_keras.layers import gate_controller

    script = _benchmark_script("adafilter_probes")
    controller_class = gate_controller.GateController
    original = controller_class.__init__
    try:
        controller_class.__init__ = script.share_head_biases(original)
        controller = controller_class(filters=[3, 5], input_channels=[4, 6], units=8, seed=0)
    finally:
        controller_class.__init__ = original
    controller.build(None)
    head = controller.heads[1]
    head.bias.assign(np.arange(5, dtype="float32"))
    hidden = np.random.default_rng(0).normal(size=(2, 8)).astype("float32")
    logits = keras.ops.convert_to_numpy(head.call(hidden))
    kernel = keras.ops.convert_to_numpy(head.kernel)
    np.testing.assert_allclose(logits, hidden @ kernel + 2.0, rtol=1e-5, atol=1e-5)
    assert "call" not in vars(controller_class(filters=[3], input_channels=[4]).heads[0])


@pytest.mark.parametrize("probe, multiplier", [("layer_rate", 1.0), ("layer_rate_x10", 10.0)])
def test_layer_rate_probe_adds_one_offset_per_layer_with_the_filters_summed_gradient(
    probe, multiplier
):
    import tensorflow as tf

    from adafilter_keras.layers import gate_controller

    script = _benchmark_script("adafilter_probes")
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
    script = _benchmark_script("gate_gradient")
    rng = np.random.default_rng(0)
    pattern = rng.uniform(size=(20, 6))  # per (example, filter)
    shifted = np.clip(pattern + np.linspace(-0.3, 0.3, 6), -1, 2)  # other rates, same pattern
    other = rng.uniform(size=(20, 6))
    agreement = script.input_dependence_between_seeds([[pattern, pattern], [shifted, other]])
    assert agreement[0] == pytest.approx(1.0)
    assert abs(agreement[1]) < 0.3
    assert script.input_dependence_between_seeds([[pattern]]) == []


def test_probe_refuses_a_baseline_without_its_source_models(tmp_path):
    script = _benchmark_script("adafilter_probes")
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    (baseline / "runs.jsonl").write_text("")
    with pytest.raises(SystemExit, match="No sources/ in --baseline-runs"):
        script.main(
            [
                "--probe",
                "expected",
                "--output-dir",
                str(tmp_path / "out"),
                "--baseline-runs",
                str(baseline),
            ]
        )
    assert not (tmp_path / "out" / "sources").exists()


def test_probes_pair_only_with_baseline_runs_of_their_budget():
    script = _benchmark_script("adafilter_probes")
    settings = BenchmarkSettings(methods=("adafilter",))  # the probes' 4-epoch budget
    stepped = dataclasses.replace(settings, large_steps=2000)
    for regime, matches in (("few_shot", True), ("large", False)):
        record = {"key": run_key(stepped, "domain", regime, "finetune", "own", 3)}
        assert script._same_budget(record, settings) == matches
    same = {"key": run_key(settings, "domain", "large", "finetune", "own", 3)}
    assert script._same_budget(same, settings)


def test_compare_variants_refuses_larger_runs_of_two_lengths(tmp_path):
    script = _benchmark_script("compare_variants")
    stepped = BenchmarkSettings(large_steps=2000)
    record = _record("adafilter", 0, 0.5, "domain", "large")
    lines = [
        dict(record, key=run_key(s, "domain", "large", "adafilter", "sgd", 0))
        for s in (BenchmarkSettings(), stepped)
    ]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(SystemExit, match="different lengths"):
        script.main(["--output-dir", str(tmp_path), "--wrap-settings", '{"initial_rate": 0.7}'])


def test_report_only_keeps_to_the_seeds_and_cells_its_settings_name():
    settings = dataclasses.replace(TINY, seeds=(0,))
    for seed, task, wanted in ((0, "digits", True), (1, "digits", False), (0, "classes", False)):
        key = run_key(settings, task, "few_shot", "adafilter", "sgd", seed)
        record = dict(_record("adafilter", seed, 0.5, task), key=key)
        assert command._wanted(record, settings) == wanted
