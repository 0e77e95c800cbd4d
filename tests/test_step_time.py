"""benchmarks/step_time.py: its model flags, the `fit` rows' timing and their absence without
TensorFlow (the GPU machine has JAX and PyTorch only). Tiny settings: nothing here is a timing."""

import importlib.util

import keras
import numpy as np
import pytest
from support import load_benchmark

TINY = ["--backbone", "SmallResNet", "--image-size", "16", "--batch-size", "2"]
TINY += ["--repeats", "2", "--warmup", "1", "--no-memory"]

step_time = load_benchmark("step_time")


def parse(*argv):
    return step_time.build_parser().parse_args(list(argv))


def settings(*argv):
    return [
        (s.name, s.backbone, s.image_size, s.batch_size)
        for s in step_time.model_settings(parse(*argv))
    ]


# (a) the flags


def test_both_presets_by_default_with_twenty_repeats():
    args = parse()
    assert args.repeats == 20
    assert settings() == [("small", "SmallResNet", 32, 32), ("resnet50", "ResNet50", 64, 8)]


def test_models_picks_presets():
    assert settings("--models", "resnet50") == [("resnet50", "ResNet50", 64, 8)]
    assert settings("--models", "resnet50", "small")[0][0] == "resnet50"


def test_custom_flags_describe_one_model_with_the_old_defaults():
    assert settings("--image-size", "224") == [("custom", "ResNet50", 224, 8)]
    assert settings("--backbone", "SmallResNet") == [
        ("custom", "SmallResNet", 64, 8),
        ("custom", "SmallResNet", 224, 8),
    ]
    assert settings("--batch-size", "128", "--image-size", "32", "64") == [
        ("custom", "ResNet50", 32, 128),
        ("custom", "ResNet50", 64, 128),
    ]


@pytest.mark.parametrize("custom", [["--backbone", "ResNet50"], ["--batch-size", "4"]])
def test_models_with_a_custom_flag_is_refused(custom, capsys):
    with pytest.raises(SystemExit) as exit:
        parse("--models", "small", *custom)
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert "--models" in error and custom[0] in error and "not both" in error


def test_unknown_preset_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse("--models", "resnet18")
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [[], ["--models", "small"], TINY, ["--dtype", "mixed_bfloat16", "--profile"]]
)
def test_each_backend_process_gets_the_same_settings(argv):
    args = parse(*argv)
    again = parse(*step_time._flags(args))
    for name in ("models", "backbone", "image_size", "batch_size", "repeats", "warmup"):
        assert getattr(again, name) == getattr(args, name), name
    assert (again.dtype, again.no_memory, again.profile) == (
        args.dtype,
        args.no_memory,
        args.profile,
    )
    assert step_time.model_settings(again) == step_time.model_settings(args)


# (b) without TensorFlow


def test_find_spec_decides_whether_tensorflow_is_there(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorflow" else find_spec(name, *a),
    )
    assert not step_time.tensorflow_available()
    assert "TensorFlow is not installed" in step_time.fit_skip_reason("float32")


def test_without_tensorflow_the_fit_rows_are_skipped_and_train_on_batch_rows_come(
    monkeypatch, capsys
):
    monkeypatch.setattr(step_time, "tensorflow_available", lambda: False)
    monkeypatch.setattr(step_time, "time_fit", lambda *a: pytest.fail("fit was timed"))
    rows, skipped = step_time.measure(parse(*TINY))
    out = capsys.readouterr().out
    assert "TensorFlow is not installed" in skipped
    assert out.count("fit rows skipped: TensorFlow is not installed") == 1
    assert [(r["kind"], r["method"]) for r in rows] == [
        ("train_on_batch", m) for m in step_time.METHODS
    ]
    for row in rows:
        assert (row["model"], row["image_size"], row["batch_size"]) == (
            "SmallResNet 16 px, batch 2",
            16,
            2,
        )
        assert row["ms_per_step"] > 0 and row["steps_timed"] == 2
        assert row["img_per_s"] == pytest.approx(2000 / row["ms_per_step"])
    assert rows[0]["ratio_vs_finetune"] == 1.0


def test_a_dtype_the_harness_does_not_train_in_skips_the_fit_rows():
    if not step_time.tensorflow_available():
        pytest.skip("TensorFlow is not installed")
    assert step_time.fit_skip_reason("float32") is None
    assert step_time.fit_skip_reason("mixed_bfloat16") is None
    assert "not bfloat16" in step_time.fit_skip_reason("bfloat16")


def test_fit_rows_follow_the_train_on_batch_rows_timed_against_their_own_finetune(
    monkeypatch, capsys
):
    monkeypatch.setattr(step_time, "fit_skip_reason", lambda dtype: None)
    step = {"finetune": 0.1, "adafilter": 0.2, "feature_extraction": 0.05}
    monkeypatch.setattr(step_time, "time_methods", lambda args, setting: (step, {}, {}))
    fit_step = {m: 2 * seconds for m, seconds in step.items()}
    first = {m: 3 * seconds for m, seconds in fit_step.items()}
    monkeypatch.setattr(
        step_time, "time_fit", lambda args, setting: (fit_step, dict.fromkeys(step, 7), first)
    )
    rows, skipped = step_time.measure(parse("--no-memory"))
    assert skipped is None
    assert [(r["preset"], r["kind"]) for r in rows[::3]] == [
        ("small", "train_on_batch"),
        ("small", "fit"),
        ("resnet50", "train_on_batch"),
        ("resnet50", "fit"),
    ]
    fit = {r["method"]: r for r in rows if r["kind"] == "fit" and r["preset"] == "small"}
    assert fit["adafilter"]["ms_per_step"] == pytest.approx(400)
    assert fit["adafilter"]["ratio_vs_finetune"] == pytest.approx(2.0)
    assert fit["finetune"]["img_per_s"] == pytest.approx(32 / 0.2)
    assert fit["finetune"]["steps_timed"] == 7
    step_time.print_table(rows)
    table = capsys.readouterr().out
    assert "| model | kind | method | ms/step | img/s | time vs finetune |" in table
    assert "| ResNet50 64 px, batch 8 | fit | adafilter | 400 | 20.0 | 2.00 | - | - | - |" in table
    # The first epoch of each fit model, against its own steady state; none for train_on_batch.
    assert fit["adafilter"]["first_epoch_ms_per_step"] == pytest.approx(1200)
    assert fit["adafilter"]["first_epoch_vs_steady"] == pytest.approx(3.0)
    assert rows[0]["first_epoch_vs_steady"] is None
    assert "| ResNet50 64 px, batch 8 | adafilter | 1200 | 400 | 3.00 |" in table


# (c) the fit timing callback


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_timer_gives_one_duration_per_step_after_the_warmup():
    clock = FakeClock()
    timer = step_time.fit_step_timer(warmup=2, clock=clock)
    for _ in range(2):  # two fit calls of one epoch and 5 steps
        timer.on_train_begin()
        timer.on_epoch_begin(0)
        clock.now += 100  # between fit calls: not a step
        for step in range(5):
            clock.now += 0.5  # fetching the batch (before the step begins)
            timer.on_train_batch_begin(step)
            clock.now += step + 1  # the step itself
            timer.on_train_batch_end(step)
    # Steps 2, 3 and 4 of each call, each from the end of the previous step to its end.
    assert timer.durations == [3.5, 4.5, 5.5] * 2


def test_the_timer_times_the_first_step_of_an_epoch_from_its_start():
    clock = FakeClock()
    timer = step_time.fit_step_timer(warmup=0, clock=clock)
    timer.on_train_begin()
    for epoch in range(2):
        timer.on_epoch_begin(epoch)
        clock.now += 10  # epoch-end and epoch-begin work: not a step
        timer.on_train_batch_begin(0)
        clock.now += 1
        timer.on_train_batch_end(0)
    assert timer.durations == [1, 1]


def test_the_timer_counts_the_steps_of_a_real_fit():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((12, 3), "float32"), np.zeros((12, 2), "float32")
    timer = step_time.fit_step_timer(warmup=1)
    for _ in range(2):
        model.fit(x, y, batch_size=2, epochs=1, steps_per_epoch=4, callbacks=[timer], verbose=0)
    assert len(timer.durations) == 2 * (4 - 1)
    assert all(duration > 0 for duration in timer.durations)


def test_time_fit_times_the_harness_steps_of_every_method():
    if not step_time.tensorflow_available():
        pytest.skip("the harness's input pipeline needs TensorFlow")
    args = parse(*TINY)
    setting = step_time.model_settings(args)[0]
    medians, steps, first_epoch = step_time.time_fit(args, setting)
    assert set(medians) == set(step_time.METHODS) == set(first_epoch)
    assert steps == dict.fromkeys(step_time.METHODS, 2)
    assert all(seconds > 0 for seconds in medians.values())
    assert all(seconds > 0 for seconds in first_epoch.values())
    if keras.backend.backend() != "torch":  # PyTorch compiles nothing
        # There the first epoch holds the compilation: slower per step than the steady state.
        assert all(first_epoch[m] > medians[m] for m in step_time.METHODS)
