"""The offline transfer benchmark: tasks, paired statistics, resume and reproducibility."""

import dataclasses
import io
import json
import math
import re

import keras
import numpy as np
import pytest
from support import tiny_benchmark

from adafilter_keras import cli
from adafilter_keras.transfer import command, report, tasks
from adafilter_keras.transfer.runs import VARIANT_SETTINGS as WRAP_DEFAULTS
from adafilter_keras.transfer.runs import (
    Benchmark,
    BenchmarkSettings,
    Cell,
    default_optimizer,
    own_recipe,
    run_key,
)

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
    assert "| sgd | test | +10.0 ± 0.0, worst +10.0 | +10.00 ± 0.00 |" in table
    # Validation differences +2 and +4: mean 3, half-width t(0.975, 1) * sqrt(2) / sqrt(2).
    assert "| sgd | validation | +3.0 ± 12.7, worst +2.0 | +3.00 ± 12.71 |" in table


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


TINY = tiny_benchmark()


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
    parser = cli.command_parser("benchmark")
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
    parser = cli.command_parser("benchmark")
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
    parser = cli.command_parser("benchmark")
    full = ["--suite", "full"]  # the preset with the larger regime (the 0.1 tables)
    default = command.settings_from(parser.parse_args(full))
    assert default.large_steps == 2000 and default.large_seeds == (0, 1, 2)
    assert default.total_runs() == 288  # 180 few-shot + 108 larger
    epochs = command.settings_from(parser.parse_args([*full, "--large-epochs", "4"]))
    longer = command.settings_from(parser.parse_args([*full, "--large-steps", "3000"]))
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


def test_adam_is_in_the_suites_and_outside_the_0_1_tables_pair():
    parser = cli.command_parser("benchmark")
    assert "adam" not in command.settings_from(parser.parse_args(["--suite", "full"])).optimizers
    for suite in ("selection", "confirmation"):
        assert "adam" in command.settings_from(parser.parse_args(["--suite", suite])).optimizers
    chosen = command.settings_from(parser.parse_args(["--optimizers", "adam", "sgd"]))
    assert chosen.optimizers == ("adam", "sgd")
    with pytest.raises(SystemExit):
        parser.parse_args(["--optimizers", "adamw"])
    optimizer = default_optimizer(Cell("digits", "few_shot", "adafilter", "adam", 150))
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(1e-3)
    assert type(default_optimizer(Cell("digits", "few_shot", "adafilter", "sgd", 150))) is (
        keras.optimizers.SGD
    )


def test_own_recipe_matches_extra_multipliers_before_the_heads():
    class Path:
        def __init__(self, path):
            self.path = path

    recipe = own_recipe(100, "adafilter", multipliers={r"bias$": 3.0, r"kernel$": 5.0})
    assert list(recipe.multipliers) == [r"bias$", r"kernel$", r"^head/"]  # the extra ones first
    assert recipe.multiplier_for(Path("head/bias")) == 3.0
    assert recipe.multiplier_for(Path("head/kernel")) == 5.0
    assert recipe.multiplier_for(Path("head/other")) == 10.0
    assert recipe.multiplier_for(Path("conv/gamma")) == 1.0
    assert own_recipe(100, "adafilter").multipliers == {"^head/": 10.0}


def test_hooks_give_the_optimizer_and_see_every_model_built(tmp_path):
    settings = dataclasses.replace(TINY, methods=("finetune",), seeds=(0, 1))
    cells, models = [], []

    def factory(cell):
        cells.append(cell)
        return keras.optimizers.SGD(learning_rate=0.0)  # nothing moves

    def hook(model, cell):
        models.append((model, cell))
        model.get_layer("head").trainable = False

    benchmark = Benchmark(
        settings, tmp_path, stream=io.StringIO(), optimizer_factory=factory, model_hook=hook
    )
    records = benchmark.run()
    assert cells == [Cell("digits", "few_shot", "finetune", "sgd", settings.few_shot_steps)]
    # The compiled model, then one fresh model per seed for its weights.
    assert len(models) == 3 and all(cell == cells[0] for _, cell in models)
    assert all(not model.get_layer("head").trainable for model, _ in models)
    assert [r["seed"] for r in records] == [0, 1]


def test_trained_yields_each_seeds_model_as_run_trains_it_without_recording(tmp_path):
    settings = dataclasses.replace(TINY, methods=("adafilter",), seeds=(0,))
    (record,) = Benchmark(settings, tmp_path / "a", stream=io.StringIO()).run()
    benchmark = Benchmark(settings, tmp_path / "b", stream=io.StringIO())
    ((again, model, task),) = list(benchmark.trained("digits", "few_shot", "adafilter", "sgd", [0]))
    assert again["test_accuracy"] == record["test_accuracy"]
    logits = model.predict(task.test[0].astype("float32") / 255.0, verbose=0)
    assert np.mean(np.argmax(logits, -1) == task.test[1]) == pytest.approx(again["test_accuracy"])
    assert not (tmp_path / "b" / "runs.jsonl").exists()


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


def test_report_only_keeps_to_the_seeds_and_cells_its_settings_name(tmp_path):
    settings = dataclasses.replace(TINY, seeds=(0,))
    # The key holds no seed list: a run of seed 1 has a key of its own, outside these settings.
    keys = {key for *_, key in Benchmark(settings, tmp_path).keys()}
    for seed, task, wanted in ((0, "digits", True), (1, "digits", False), (0, "classes", False)):
        key = run_key(settings, task, "few_shot", "adafilter", "sgd", seed)
        assert (key in keys) == wanted
