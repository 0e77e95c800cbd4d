"""keras-tuner search over the harness: best config, resume, search-space errors."""

import json
import shutil

import pytest
from support import run_main, tensorflow_only

from adafilter_keras import cli
from adafilter_keras.training import METHODS, TrainConfig, runner
from adafilter_keras.tuning import SearchSpaceError, load_space, tune

pytestmark = tensorflow_only  # orchestration only; training itself is tested on every backend

BASE = dict(
    dataset="uci_digits",
    method="adafilter",
    backbone="SmallResNet",
    weights="none",
    image_size=8,
    batch_size=32,
    epochs=2,
    steps_per_epoch=2,
    warmup_epochs=0,
    controller_units=8,
)
SPACE = {  # small and fast: the default space with narrow ranges
    "controller_units": {"type": "choice", "values": [4, 8]},
    "learning_rate": {"type": "float", "min": 0.01, "max": 0.1, "sampling": "log"},
}


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    space_file = root / "space.json"
    space_file.write_text(json.dumps(SPACE))
    result = tune(
        TrainConfig.from_dict(BASE),
        max_trials=2,
        directory=root / "tune",
        space_file=space_file,
        stream=open(root / "log.txt", "w"),
    )
    return result, root, space_file


def test_two_trial_search_writes_a_best_config_that_train_accepts(search, tmp_path):
    result, root, _ = search
    assert [t["status"] for t in result.trials] == ["COMPLETED", "COMPLETED"]
    scores = []
    for trial in result.trials:
        run = json.loads(
            (root / "tune" / "trials" / f"trial_{trial['trial_id']}" / "results.json").read_text()
        )
        assert run["config"]["controller_units"] in (4, 8)
        assert run["best_validation_accuracy"] == pytest.approx(trial["val_accuracy"])
        scores.append(trial["val_accuracy"])
    assert result.best_validation_accuracy == max(scores)
    assert any((root / "tune" / "hparams").rglob("events.out.tfevents.*"))
    best = TrainConfig.from_file(result.best_config_path)
    assert best.run_dir is None and best.epochs == BASE["epochs"]
    assert best.learning_rate == result.best_config.learning_rate
    assert 0.01 <= best.learning_rate <= 0.1
    status = cli.main(
        [
            "train",
            "--config",
            str(result.best_config_path),
            "--run-dir",
            str(tmp_path / "final"),
            "--quiet",
        ]  # fmt: skip
    )
    assert status == 0
    final = json.loads((tmp_path / "final" / "results.json").read_text())
    assert final["config"]["learning_rate"] == best.learning_rate


def test_resumed_search_does_not_redo_finished_trials(search, tmp_path, monkeypatch):
    result, root, space_file = search
    directory = tmp_path / "tune"
    shutil.copytree(root / "tune", directory)
    calls = []
    real_train = runner.train
    monkeypatch.setattr(
        runner, "train", lambda config, **kw: calls.append(config) or real_train(config, **kw)
    )
    base = TrainConfig.from_dict(BASE)
    again = tune(
        base,
        max_trials=3,
        directory=directory,
        space_file=space_file,
        stream=open(tmp_path / "log", "w"),
    )
    assert len(calls) == 1 and calls[0].run_dir.endswith("trial_2")
    assert [t["val_accuracy"] for t in again.trials[:2]] == [
        t["val_accuracy"] for t in result.trials
    ]
    with pytest.raises(ValueError, match=r"holds a search with other settings \(changed: epochs\)"):
        tune(TrainConfig.from_dict({**BASE, "epochs": 3}), max_trials=3, directory=directory,
             space_file=space_file)  # fmt: skip
    assert len(calls) == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        (
            '{"learning_rat": {"type": "float", "min": 0.1, "max": 1}}',
            "'learning_rat' is not a TrainConfig field",
        ),
        ('{"epochs": {"type": "int", "min": 1, "max": 5}}', "'epochs' cannot be searched"),
        (
            '{"learning_rate": {"type": "float", "min": 0.1, "max": 0.01}}',
            "needs numbers min < max",
        ),
        (
            '{"learning_rate": {"type": "float", "min": 0, "max": 1, "sampling": "log"}}',
            "min must be > 0",
        ),
        (
            '{"momentum": {"type": "float", "min": 0.5, "max": 1.5}}',
            "allows 1.5, which the training config refuses",
        ),
        ('{"pretrained_bn": {"type": "choice", "values": []}}', "non-empty list of values"),
        ('{"temperature": {"kind": "float"}}', "must be an object with a 'type'"),
    ],
)
def test_invalid_search_space_file_is_refused_before_any_trial(tmp_path, content, message):
    space_file = tmp_path / "space.json"
    space_file.write_text(content)
    with pytest.raises(SearchSpaceError, match=message):
        tune(
            TrainConfig.from_dict(BASE),
            max_trials=1,
            directory=tmp_path / "tune",
            space_file=space_file,
        )
    assert not (tmp_path / "tune").exists()


def test_tune_command_errors_are_one_line(tmp_path, capsys):
    space_file = tmp_path / "space.json"
    space_file.write_text('{"epochs": {"type": "fixed", "value": 3}}')
    result = run_main(capsys, "tune", "--dataset", "uci_digits", "--space", str(space_file),
                      "--directory", str(tmp_path / "tune"))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("adafilter-keras tune: error:")
    assert "'epochs' cannot be searched" in result.stderr


def test_every_method_has_a_valid_default_space():
    for method in METHODS:
        space = load_space(method)
        assert "learning_rate" in space
        assert ("temperature" in space) == (method in ("adafilter", "block"))
