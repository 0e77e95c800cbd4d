"""The `adafilter-keras` command: parsing and refusals in-process, one process smoke per command.

Parsing, help texts and refusals run in this process (`cli.main([...])`, capsys). Each command
also gets exactly one run as a separate process (`python -m adafilter_keras.cli ...`), which
checks what only a fresh process shows: the entry point, exit status and stream separation.
"""

import argparse
import json

import pytest
from support import run_cli, run_main, run_python, tensorflow_only

import adafilter_keras
from adafilter_keras import cli

pytestmark = tensorflow_only


def _main(capsys, *argv):
    result = run_main(capsys, *argv)
    return result.returncode, result.stdout, result.stderr


def test_version_prints_the_package_version(capsys):
    status, out, _ = _main(capsys, "--version")
    assert status == 0
    assert out.strip() == f"adafilter-keras {adafilter_keras.__version__}"


def test_help_explains_the_command(capsys):
    status, out, _ = _main(capsys, "--help")
    assert status == 0
    assert "usage: adafilter-keras" in out
    assert "AdaFilter" in out and "--version" in out
    for command in ("train", "compare", "tune", "demo", "benchmark", "datasets"):
        assert f"\n    {command}" in out
    assert _main(capsys)[:2] == (0, cli.build_parser().format_help())  # no command: the help


def test_unknown_option_fails_with_usage(capsys):
    status, _, err = _main(capsys, "--no-such-option")
    assert status == 2
    assert "unrecognized arguments: --no-such-option" in err


def test_tensorflow_start_up_lines_are_caught_and_its_errors_shown(capfd):
    import os

    from adafilter_keras import console

    with console._caught_stderr(console._ERROR_LINE):
        os.write(2, b"I0000 00:00:1.2 3 cudart_stub.cc:31] info line\n")
        os.write(2, b"E0000 00:00:1.2 3 cuda_platform.cc:52] an error line\n")
        os.write(2, b"ImportError: numpy.core.multiarray failed to import\n")
    err = capfd.readouterr().err
    assert "an error line" in err and "info line" not in err and "ImportError" in err
    # The command imports the library, and so TensorFlow, with the start-up lines caught.
    fresh = run_cli("--version")
    assert fresh.returncode == 0 and fresh.stdout.startswith("adafilter-keras ")
    assert "absl::InitializeLog" not in fresh.stderr
    assert not [
        line for line in fresh.stderr.splitlines() if line[:1] in "IW" and line[1:5] == "0000"
    ]


def test_importing_the_library_leaves_stderr_alone():
    # Only the command line quiets TensorFlow: a program that imports the library keeps file
    # descriptor 2 and sys.stderr as they were (TensorFlow's own lines pass unfiltered), and
    # sees what it writes there afterwards.
    result = run_python(
        """
        import os, sys

        redirections = []
        dup2 = os.dup2
        os.dup2 = lambda fd, fd2, *args: (redirections.append(fd2), dup2(fd, fd2, *args))[1]
        before, stream = os.fstat(2), sys.stderr
        assert "keras" not in sys.modules
        import adafilter_keras
        assert "keras" in sys.modules
        after = os.fstat(2)
        assert 2 not in redirections, redirections
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
        assert sys.stderr is stream
        os.write(2, b"written to fd 2 after the import\\n")
        print("written to sys.stderr after the import", file=sys.stderr)
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "written to fd 2 after the import" in result.stderr
    assert "written to sys.stderr after the import" in result.stderr
    from adafilter_keras import console

    assert not console.started_as_command(["python", "-c", "import adafilter_keras"])
    assert console.started_as_command(["/venv/bin/python", "/venv/bin/adafilter-keras", "train"])
    assert console.started_as_command(["python", "-m", "adafilter_keras.cli", "--version"])


def test_every_command_takes_verbose():
    for command in (["train", "--dataset", "uci_digits"], ["tune", "--dataset", "uci_digits"],
                    ["demo"], ["benchmark"], ["compare", "runs"], ["datasets"]):  # fmt: skip
        assert cli.build_parser().parse_args([*command, "--verbose"]).verbose is True


def _command_helps():
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: " ".join(sub.format_help().split()) for name, sub in commands.choices.items()}


def test_every_command_help_shows_percent_signs_once():
    texts = _command_helps()
    assert "95% interval" in texts["benchmark"]  # wherever argparse wraps
    assert not [name for name, text in texts.items() if "%%" in text]


def test_presets_say_what_they_run_and_that_the_reported_numbers_are_the_benchmarks():
    texts = _command_helps()
    demo, benchmark = texts["demo"], texts["benchmark"]
    assert (
        "It runs: task digits; few-shot (10 images per class, 150 steps, seeds 0 1 2); methods "
        "finetune, feature_extraction, l2sp, stochastic, adafilter; optimizer own; 15 runs." in demo
    )
    assert "under 5 minutes on CPU, 2 cores, source model included" in demo
    assert "Reported accuracy numbers come from the full benchmark" in demo
    assert (
        "--quick checks that the suites run (backbones resnet16@16, plain@16; task digits; "
        "few-shot (10 images per class, 150 steps, seeds 0 1); methods finetune, stochastic, "
        "adafilter, stochastic_matched; optimizers sgd, adam; 32 runs; under 10 minutes); its "
        "numbers are not reported." in benchmark
    )
    assert "'confirmation' (run once the defaults are fixed" in benchmark


def test_a_script_gets_a_commands_flags_under_its_own_name():
    parser = cli.command_parser("benchmark", prog="benchmarks/transfer.py")
    assert parser.format_usage().startswith("usage: benchmarks/transfer.py [-h] [--suite")
    assert parser.parse_args(["--quick", "--seeds", "3"]).seeds == [3]
    with pytest.raises(ValueError, match="No command 'bench'. Commands: datasets, train"):
        cli.command_parser("bench")


# --- one process per command -------------------------------------------------------------


TINY_TRAIN = dict(
    dataset="uci_digits",
    backbone="SmallResNet",
    weights="none",
    image_size=16,
    batch_size=32,
    epochs=1,
    steps_per_epoch=3,
    warmup_epochs=0,
    controller_units=8,
)


def test_train_in_a_process_writes_its_run_directory(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY_TRAIN, "run_dir": str(tmp_path / "runs" / "a")}))
    result = run_cli("train", "--config", str(config), "--method", "finetune", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("device: ") and lines[-1].startswith("test accuracy ")
    assert lines[-1].endswith(f"run directory {tmp_path / 'runs' / 'a'}")
    assert json.loads((tmp_path / "runs" / "a" / "config.json").read_text())["method"] == "finetune"


def _fake_run(root, method, seed, accuracy):
    run = root / method / f"seed{seed}"
    run.mkdir(parents=True)
    record = {"dataset": "uci_digits", "method": method, "seed": seed, "test_accuracy": accuracy}
    (run / "results.json").write_text(json.dumps(record | {"config": {}}))


def test_compare_in_a_process_prints_the_paired_table(tmp_path):
    for seed, (fine, ada) in enumerate([(0.80, 0.83), (0.82, 0.83)]):
        _fake_run(tmp_path, "finetune", seed, fine)
        _fake_run(tmp_path, "adafilter", seed, ada)
    result = run_cli("compare", str(tmp_path), "--csv", str(tmp_path / "t.csv"))
    assert result.returncode == 0, result.stderr[-2000:]
    # Differences +3 and +1: mean +2, half-width t(0.975, 1) * sd / sqrt(2) = 12.706 * 1 = 12.71.
    assert "| uci_digits | adafilter | 2 | 83.00 ± 0.00 | +2.00 ± 12.71, worst +1.00 |" in (
        result.stdout
    )
    assert "| uci_digits | finetune | 2 | 81.00 ± 1.41 | — |" in result.stdout
    assert result.stderr == "" and (tmp_path / "t.csv").is_file()


def test_tune_in_a_process_refuses_a_bad_space_in_one_line(tmp_path):
    space_file = tmp_path / "space.json"
    space_file.write_text('{"epochs": {"type": "fixed", "value": 3}}')
    result = run_cli("tune", "--dataset", "uci_digits", "--space", str(space_file),
                     "--directory", str(tmp_path / "tune"))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("adafilter-keras tune: error:")
    assert "'epochs' cannot be searched" in result.stderr
    assert not (tmp_path / "tune").exists()


def test_demo_in_a_process_refuses_settings_before_any_work(tmp_path):
    result = run_cli("demo", "--methods", "adafilter", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "adafilter-keras demo: error: The quick start compares every method against "
        "`finetune`; include it. Received: methods=['adafilter']"
    )
    assert result.stdout.startswith("device: ") and not (tmp_path / "out").exists()


def test_benchmark_in_a_process_reports_recorded_runs(tmp_path):
    from adafilter_keras.transfer import command
    from adafilter_keras.transfer.runs import RESULTS, run_key

    settings = command.suite_from(None, "quick")[0]
    lines = []
    for method, accuracies in (("finetune", (0.5, 0.6)), ("adafilter", (0.55, 0.62))):
        for seed, accuracy in enumerate(accuracies):
            key = run_key(settings, "digits", "few_shot", method, "own", seed)
            lines.append(json.dumps(dict(task="digits", regime="few_shot", optimizer="own",
                method=method, seed=seed, test_accuracy=accuracy, val_accuracy=accuracy,
                key=key)))  # fmt: skip
    (tmp_path / RESULTS).write_text("\n".join(lines) + "\n")
    result = run_cli("benchmark", "--quick", "--backbones", settings.model, "--methods",
                     "finetune", "adafilter", "--optimizers", "own", "--seeds", "0", "1",
                     "--report-only", "--output-dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    # Differences +5 and +2 points: mean +3.5, half-width 12.706 * 2.121 / sqrt(2) = 19.06.
    assert "| adafilter | 58.5 (+3.5 ± 19.1, worst +2.0) | +3.50 ± 19.06 |" in result.stdout
    assert "4 runs; results.json, table.md and differences.png" in result.stdout
    assert (tmp_path / "table.md").is_file()


def test_datasets_in_a_process_lists_status(tmp_path):
    result = run_cli("datasets", "--data-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["uci_digits"]["status"].startswith("present (bundled")
    assert rows["stanford_dogs"]["status"] == f"downloadable (TFDS, into {tmp_path})"
