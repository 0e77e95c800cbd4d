import dataclasses
import json
import re

import keras
import numpy as np
import pytest
from support import run_main, run_python, tensorflow_only

from adafilter_keras.backbones.models import WeightsUnavailableError, build_backbone
from adafilter_keras.training import METHODS, TrainConfig, TrainingDivergedError, compare, train
from adafilter_keras.training.config import BACKEND_DISTRIBUTIONS, DISTRIBUTIONS
from adafilter_keras.training.optimizers import SGDWithMultipliers, WarmupDecay

TINY = dict(
    dataset="uci_digits",
    backbone="SmallResNet",
    weights="none",
    image_size=16,
    batch_size=32,
    epochs=2,
    steps_per_epoch=3,
    warmup_epochs=0,
    learning_rate=0.05,
    controller_units=8,
)


def _config(tmp_path, **overrides):
    return TrainConfig.from_dict({**TINY, "run_dir": str(tmp_path / "run"), **overrides})


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_writes_its_run_directory(tmp_path, method):
    config = _config(tmp_path, method=method, epochs=1)
    results = train(config, verbose=0)
    run = tmp_path / "run"
    for name in ("config.json", "results.json", "log.csv", "best.weights.h5"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()  # a finished run leaves no backup
    written = json.loads((run / "results.json").read_text())
    assert written["method"] == method and written["dataset"] == "uci_digits"
    assert written["seed"] == 0 and written["backbone"] == "SmallResNet"
    assert 0.0 <= written["test_accuracy"] <= 1.0
    assert written["test_accuracy"] == results["test_accuracy"]
    assert written["best_epoch"] == 1 and written["epochs_in_log"] == 1
    assert written["sizes"]["test"] == 359
    assert set(written["versions"]) >= {"adafilter_keras", "keras", "backend", "tensorflow"}
    assert written["parameters"]["trainable"] > 0 and written["wall_time_s"] > 0
    assert json.loads((run / "config.json").read_text())["method"] == method
    if method in ("adafilter", "stochastic", "block"):
        gates = written["gates"]
        fractions = gates["fraction_finetuned_last_epoch"]
        assert len(fractions) == len(gates["layers"]) and all(0 <= f <= 1 for f in fractions)
        assert any(p.name.startswith("events") for p in (run / "logs" / "gates").iterdir())
    else:
        assert written["gates"] is None
    if method == "feature_extraction":
        assert written["parameters"]["trainable"] == 64 * 10 + 10  # the head only
    if method == "stochastic":
        assert written["parameters"]["controller"] == 0


def test_lr_multipliers_scale_the_update_per_group():
    head = keras.Variable(np.ones((2, 2)), name="head_kernel")
    other = keras.Variable(np.ones((2, 2)), name="conv_kernel")
    optimizer = SGDWithMultipliers(0.1, momentum=0.0, multipliers={"^head": 10.0})
    assert optimizer.multiplier_for(head) == 10.0 and optimizer.multiplier_for(other) == 1.0
    gradient = np.full((2, 2), 0.5, "float32")
    optimizer.apply([gradient, gradient], [head, other])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head), 1 - 0.1 * 10 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(other), 1 - 0.1 * 0.5, rtol=1e-6)
    restored = SGDWithMultipliers.from_config(optimizer.get_config())
    assert restored.multipliers == {"^head": 10.0}


def test_l2_weight_decay_is_added_to_kernel_gradients_only():
    kernel = keras.Variable(np.full((2, 2), 2.0), name="k")
    bias = keras.Variable(np.full((2,), 2.0), name="b")
    optimizer = SGDWithMultipliers(0.1, momentum=0.0, weight_decay_l2=0.5)
    optimizer.apply([np.zeros((2, 2), "float32"), np.zeros((2,), "float32")], [kernel, bias])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), 2 - 0.1 * 0.5 * 2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), 2.0)


def test_momentum_updates_follow_the_rule_with_multipliers_decay_and_schedule():
    # On PyTorch the update runs as one `torch._foreach` step for all variables; on every
    # backend it is SGD with momentum on the scaled, decayed gradients.
    start = {"head_kernel": np.ones((2, 2)), "conv_bias": np.full((3,), 2.0)}
    variables = [keras.Variable(v, name=name, dtype="float32") for name, v in start.items()]
    schedule = WarmupDecay(0.1, total_steps=10, warmup_steps=2)
    optimizer = SGDWithMultipliers(
        schedule, momentum=0.9, weight_decay_l2=0.01, multipliers={"head": 10.0}
    )
    rng = np.random.default_rng(0)
    expected = {name: v.astype("float64") for name, v in start.items()}
    momenta = {name: 0.0 for name in start}
    for step in range(4):
        grads = [rng.normal(size=v.shape).astype("float32") for v in start.values()]
        optimizer.apply(grads, variables)
        rate = float(keras.ops.convert_to_numpy(schedule(step)))
        for (name, value), grad in zip(expected.items(), grads, strict=True):
            scaled = grad + (0.01 * value if value.ndim >= 2 else 0.0)
            scaled = scaled * (10.0 if name == "head_kernel" else 1.0)
            momenta[name] = 0.9 * momenta[name] - rate * scaled
            expected[name] = value + momenta[name]
    for variable, value in zip(variables, expected.values(), strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), value, rtol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's one-for-all update")
def test_on_pytorch_the_update_is_one_step_for_all_variables(monkeypatch):
    # Not the generic update, which runs a handful of operations for each variable.
    monkeypatch.setattr(
        SGDWithMultipliers, "update_step", lambda *a: pytest.fail("per-variable update")
    )
    variables = [keras.Variable(np.ones((2, 2)), name="k"), keras.Variable(np.ones(3), name="b")]
    optimizer = SGDWithMultipliers(0.1, momentum=0.9)
    optimizer.apply([np.ones((2, 2), "float32"), np.ones(3, "float32")], variables)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variables[1]), 0.9, rtol=1e-6)


def test_warmup_then_cosine_and_step_schedules():
    cosine = WarmupDecay(1.0, total_steps=110, warmup_steps=10, kind="cosine")
    value = lambda schedule, step: float(keras.ops.convert_to_numpy(schedule(step)))  # noqa: E731
    assert value(cosine, 0) == pytest.approx(0.1) and value(cosine, 9) == pytest.approx(1.0)
    assert value(cosine, 60) == pytest.approx(0.5, abs=1e-6)
    assert value(cosine, 110) == pytest.approx(0.0, abs=1e-6)
    step = WarmupDecay(1.0, total_steps=100, kind="step", boundaries=[50, 80], factor=0.1)
    assert [round(value(step, s), 6) for s in (0, 49, 50, 79, 80)] == [1, 1, 0.1, 0.1, 0.01]
    assert WarmupDecay(**step.get_config()).get_config() == step.get_config()


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(method="magic"), ValueError, "Received: method='magic'"),
        (dict(backbone="AlexNet"), ValueError, "Received: backbone='AlexNet'"),
        (dict(dataset="imagenette"), ValueError, "Unknown dataset 'imagenette'"),
        (dict(weights="/no/such/file.h5"), WeightsUnavailableError, "does not exist"),
        (dict(learning_rate=0), ValueError, "Received: learning_rate=0"),
        (dict(warmup_epochs=5), ValueError, "warmup_epochs"),
    ],
)
def test_bad_runs_fail_before_training(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        train(_config(tmp_path, **overrides), verbose=0)
    assert not (tmp_path / "run" / "log.csv").exists()


def test_weights_file_for_another_backbone_is_refused(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(WeightsUnavailableError, match="does not fit backbone SmallResNet"):
        build_backbone("SmallResNet", str(path), (16, 16, 3))


def test_imagenet_weights_without_network_say_where_to_put_the_file(monkeypatch):
    from keras.src.utils import file_utils

    def offline(fname, origin, *args, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name unknown")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("ResNet50", "imagenet", (32, 32, 3))
    message = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "KERAS_HOME" in message and "pass its path" in message


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    run_dir = tmp_path / "run"
    # Resuming is the harness's job, the same for every method: fine-tuning compiles fastest.
    config = {**TINY, "method": "finetune", "epochs": 3, "run_dir": str(run_dir)}
    script = f"""
        import os, signal, sys, keras
        from adafilter_keras.training import TrainConfig, train

        class KillAfterFirstEpoch(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                os.kill(os.getpid(), signal.SIGKILL)

        extra = [KillAfterFirstEpoch()] if sys.argv[1] == "kill" else []
        train(TrainConfig.from_dict({config!r}), verbose=0, callbacks=extra)
        """
    killed = run_python(script, "kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (run_dir / "backup").is_dir() and not (run_dir / "results.json").exists()
    first_log = (run_dir / "log.csv").read_text()
    assert len(first_log.strip().splitlines()) == 2  # header + epoch 1
    resumed = run_python(script, "go")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (run_dir / "log.csv").read_text().strip().splitlines()
    assert log[: len(first_log.strip().splitlines())] == first_log.strip().splitlines()
    epochs = [int(line.split(",")[0]) for line in log[1:]]
    assert epochs == [0, 1, 2]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs_in_log"] == 3 and not (run_dir / "backup").exists()


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    class PoisonSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                head = self.model.get_layer("head")
                head.kernel.assign(np.full(head.kernel.shape, np.nan))

    config = _config(tmp_path, method="finetune", epochs=3)
    with pytest.raises(TrainingDivergedError, match="NaN or infinite at epoch 2.*best.weights.h5"):
        train(config, verbose=0, callbacks=[PoisonSecondEpoch()])
    run = tmp_path / "run"
    assert (run / "best.weights.h5").is_file() and (run / "backup").is_dir()
    assert not (run / "results.json").exists()
    import h5py  # the checkpoint holds finite weights

    with h5py.File(run / "best.weights.h5") as weights:
        values = []
        weights.visititems(
            lambda name, item: values.append(np.asarray(item)) if hasattr(item, "shape") else None
        )
    assert values and all(np.isfinite(v).all() for v in values)


def _fake_results(root, dataset, method, seed, accuracy, shots=None):
    run = root / dataset / str(shots) / method / f"seed{seed}"
    run.mkdir(parents=True)
    record = {"dataset": dataset, "method": method, "seed": seed, "test_accuracy": accuracy}
    record["config"] = {"shots_per_class": shots}
    (run / "results.json").write_text(json.dumps(record))


@tensorflow_only
def test_compare_table_means_stds_and_paired_differences(tmp_path):
    for seed, (ft, ada) in enumerate([(0.80, 0.84), (0.82, 0.83)]):
        _fake_results(tmp_path, "dogs", "finetune", seed, ft)
        _fake_results(tmp_path, "dogs", "adafilter", seed, ada)
    _fake_results(tmp_path, "cars", "adafilter", 0, 0.5)
    rows = compare.summarize(compare.collect([tmp_path]))
    by_key = {(r["dataset"], r["method"]): r for r in rows}
    ada = by_key[("dogs", "adafilter")]
    assert ada["seeds"] == 2 and ada["test_accuracy_mean"] == pytest.approx(83.5)
    assert ada["test_accuracy_std"] == pytest.approx(np.std([84, 83], ddof=1))
    # Paired by seed: +4 and +1 points; mean 2.5, half-width t(0.975, 1) * 1.5 = 19.06.
    assert ada["difference"] == pytest.approx(2.5) and ada["interval"] == pytest.approx(19.059307)
    assert (ada["worst"], ada["worst_seed"]) == (pytest.approx(1.0), 1)
    assert np.isnan(by_key[("cars", "adafilter")]["difference"])
    table = compare.markdown(rows)
    assert "| dogs | adafilter | 2 | 83.50 ± 0.71 | +2.50 ± 19.06, worst +1.00 |" in table
    assert "| dogs | finetune | 2 | 81.00 ± 1.41 | — |" in table
    assert "| cars | adafilter | 1 | 50.00 ± 0.00 | — |" in table
    compare.write_csv(rows, tmp_path / "table.csv")
    assert (tmp_path / "table.csv").read_text().startswith("dataset,shots,method,seeds")


@tensorflow_only
def test_compare_keeps_shots_apart_and_refuses_two_runs_of_one_seed(tmp_path):
    _fake_results(tmp_path, "digits", "finetune", 0, 0.60, shots=5)
    _fake_results(tmp_path, "digits", "adafilter", 0, 0.70, shots=5)
    _fake_results(tmp_path, "digits", "finetune", 0, 0.90, shots=20)
    _fake_results(tmp_path, "digits", "adafilter", 0, 0.85, shots=20)
    rows = compare.summarize(compare.collect([tmp_path]))
    by_key = {(r["shots"], r["method"]): r for r in rows}
    assert by_key[(5, "adafilter")]["difference"] == pytest.approx(10.0)
    assert by_key[(20, "adafilter")]["difference"] == pytest.approx(-5.0)
    table = compare.markdown(rows)
    assert "| digits | 5 | adafilter | 1 | 70.00 ± 0.00 | +10.00 |" in table
    _fake_results(tmp_path / "again", "digits", "adafilter", 0, 0.71, shots=5)
    with pytest.raises(ValueError, match="Two runs of adafilter on digits share seed 0"):
        compare.summarize(compare.collect([tmp_path]))


def _main(capsys, *argv):
    result = run_main(capsys, *argv)
    return result.returncode, result.stdout, result.stderr


@tensorflow_only
def test_cli_train_and_compare(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "epochs": 1, "run_dir": str(tmp_path / "runs" / "a")}))
    status, out, err = _main(capsys, "train", "--config", str(config), "--method", "finetune",
                             "--quiet", "--learning-rate", "0.02")  # fmt: skip
    assert status == 0, err[-3000:]
    assert "test accuracy" in out and "(best validation epoch 1)" in out
    written = json.loads((tmp_path / "runs" / "a" / "config.json").read_text())
    assert written["method"] == "finetune" and written["learning_rate"] == 0.02  # flags win
    assert written["batch_size"] == TINY["batch_size"]  # the file's value where flags are silent
    status, out, _ = _main(capsys, "compare", str(tmp_path / "runs"), "--csv",
                           str(tmp_path / "t.csv"))  # fmt: skip
    assert status == 0 and "| uci_digits | finetune | 1 |" in out
    assert (tmp_path / "t.csv").is_file()


@tensorflow_only
def test_cli_train_errors_are_one_line(tmp_path, capsys):
    status, _, err = _main(capsys, "train", "--dataset", "uci_digits", "--method", "magic")
    assert status == 2
    assert err.strip().splitlines()[-1].startswith("adafilter-keras train: error:")
    assert "Received: method='magic'" in err and "Traceback" not in err
    status, _, err = _main(capsys, "train", "--method", "finetune")
    assert status == 2 and "--dataset is required (or a --config file that sets it)." in err
    status, help_text, _ = _main(capsys, "train", "--help")
    assert status == 0
    assert "--learning-rate" in help_text and "--controller-lr-multiplier" in help_text
    status, _, err = _main(capsys, "compare", str(tmp_path / "nothing"))
    assert status == 2 and "No such run directory" in err


def test_distribution_of_the_current_backend_trains_and_the_other_is_refused(tmp_path):
    backend = keras.backend.backend()
    offered = BACKEND_DISTRIBUTIONS[backend]
    others = [name for name in DISTRIBUTIONS if name is not None and name not in offered]
    assert others and set(offered) <= set(DISTRIBUTIONS)
    for theirs in others:
        with pytest.raises(ValueError, match=f"distribution='{theirs}' needs the") as info:
            train(_config(tmp_path, distribution=theirs, epochs=1), verbose=0)
        suggested = re.findall(r"'(\w+)'", str(info.value).split(";")[-1])
        assert set(suggested) <= set(offered), info.value  # never suggest what cannot run here
        if not offered:  # torch: nothing to suggest but one process
            assert "without a distribution" in str(info.value)
    if "mirrored" in offered or "data_parallel" in offered:
        ours = "mirrored" if "mirrored" in offered else "data_parallel"
        results = train(_config(tmp_path, distribution=ours, epochs=1), verbose=0)
        assert results["config"]["distribution"] == ours and 0 <= results["test_accuracy"] <= 1
        assert results["processes"] == 1


def test_defaults_that_depend_on_other_settings_adapt_and_say_so():
    one_epoch = TrainConfig(dataset="uci_digits", backbone="SmallResNet", epochs=1)
    assert one_epoch.resolved_weights is None and one_epoch.resolved_warmup_epochs == 0
    assert [note.split(":")[0] for note in one_epoch.notes] == ["weights", "warmup_epochs"]
    usual = TrainConfig(dataset="uci_digits", backbone="ResNet50", epochs=30)
    assert usual.resolved_weights == "imagenet" and usual.resolved_warmup_epochs == 1
    assert usual.notes == []
    # A config read back (config.json, tune's best_config.json) or copied resolves again.
    again = TrainConfig.from_dict({**usual.to_dict(), "epochs": 1, "backbone": "SmallResNet"})
    assert again.resolved_warmup_epochs == 0 and again.resolved_weights is None
    assert len(again.notes) == 2
    assert dataclasses.replace(usual, backbone="SmallResNet").resolved_weights is None
    assert usual.with_epochs(1).resolved_warmup_epochs == 0
    with pytest.raises(ValueError, match="warmup_epochs=1 with epochs=1"):  # chosen, not clamped
        TrainConfig(dataset="uci_digits", epochs=1, warmup_epochs=1)
    with pytest.raises(WeightsUnavailableError, match="no ImageNet weights"):
        build_backbone("SmallResNet", "imagenet", (16, 16, 3))  # asked for explicitly
    assert [TrainConfig("uci_digits", epochs=e).resolved_step_epochs() for e in (1, 2, 3, 30)] == [
        [],
        [1],
        [2],
        [20, 26],
    ]


# Slow: two training runs (about a minute).
@pytest.mark.slow
@tensorflow_only
def test_cli_on_a_class_folder_in_a_log_file_prints_one_line_per_epoch(tmp_path, capsys):
    from test_data import write_image_folder

    def _cli(*argv):
        return run_main(capsys, *argv)

    root = write_image_folder(tmp_path, {"photos": {"a": 9, "b": 8}}) / "photos"
    common = ["--dataset", f"folder:{root}", "--backbone", "SmallResNet", "--image-size", "16",
              "--batch-size", "4", "--epochs", "2", "--controller-units", "8"]  # fmt: skip
    first = _cli("train", *common, "--run-dir", str(tmp_path / "r0"))
    assert first.returncode == 0, first.stderr[-3000:]
    lines = first.stdout.splitlines()
    assert lines[0].startswith("device: ") and "backend" in lines[0]
    assert "note: weights: none (SmallResNet has no ImageNet weights" in first.stdout
    split_line = "has no train/ and test/ sub-folders: 11 images train, 2 validate, 4 test"
    assert split_line in first.stdout
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert all("val_accuracy" in line and line.endswith(" s") for line in epochs)
    assert "\x1b" not in first.stdout and "\r" not in first.stdout  # no progress-bar codes
    assert "ran out of data" not in first.stdout + first.stderr
    assert "I0000" not in first.stderr and "absl::InitializeLog" not in first.stderr
    split = json.loads((tmp_path / "r0" / "split.json").read_text())
    assert len(split["test"]) == 4

    second = _cli(
        "train",
        *common,
        "--seed",
        "1",
        "--epochs",
        "1",
        "--quiet",
        "--run-dir",
        str(tmp_path / "r1"),
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert not [line for line in second.stdout.splitlines() if line.startswith("epoch ")]
    digests = {
        json.loads((tmp_path / run / "results.json").read_text())["split_digest"]
        for run in ("r0", "r1")
    }
    assert len(digests) == 1 and None not in digests
    assert _cli("compare", str(tmp_path / "r0"), str(tmp_path / "r1")).returncode == 0

    changed = json.loads((tmp_path / "r1" / "results.json").read_text())
    changed["split_digest"] = "0" * 16
    (tmp_path / "r1" / "results.json").write_text(json.dumps(changed))
    refused = _cli("compare", str(tmp_path / "r0"), str(tmp_path / "r1"))
    assert refused.returncode == 2 and "different splits" in refused.stderr
