"""The quick start (`adafilter-keras demo`): the benchmark's `demo` preset, reduced to tiny runs."""

import dataclasses
import io
import json
import math

import pytest
from support import run_main, tensorflow_only, tiny_benchmark

from adafilter_keras import cli
from adafilter_keras.transfer import command, demo, tasks
from adafilter_keras.transfer.runs import run_key

pytestmark = tensorflow_only  # orchestration only; the layers are tested on every backend

TINY = tiny_benchmark(optimizers=("own",))


def test_demo_preset_is_a_benchmark_preset_whose_runs_are_the_benchmarks():
    preset, full = command.PRESETS["demo"], command.PRESETS["full"]
    assert preset.tasks == ("digits",) and preset.regimes == ("few_shot",)
    assert preset.optimizers == ("own",) and preset.seeds == (0, 1, 2)
    assert preset.methods == ("finetune", "feature_extraction", "l2sp", "stochastic", "adafilter")
    assert preset.total_runs() == 15 and set(preset.tasks) <= set(tasks.TASKS)
    # Its backbone keeps its own BN momentum; a demo run is the benchmark's run of that backbone,
    # cell and seed.
    assert preset.backbone == "resnet16" and preset.image_size == 16
    on_resnet16 = dataclasses.replace(full, backbone="resnet16")
    for method in preset.methods:
        assert run_key(preset, "digits", "few_shot", method, "own", 2) == run_key(
            on_resnet16, "digits", "few_shot", method, "own", 2
        )


def test_reduced_demo_prints_paired_intervals_writes_the_reports_and_reuses_its_runs(tmp_path):
    output = tmp_path / "quickstart"
    stream = io.StringIO()
    result = demo.run(output, settings=TINY, stream=stream)

    printed = stream.getvalue()
    assert printed.startswith(
        "Quick start: task digits; few-shot (2 images per class, 4 steps, seeds 0 1); methods "
        "finetune, adafilter; optimizer own; 4 runs.\n"
    )
    assert "source model mnist_8px_w4_e1: training accuracy" in printed
    assert "[4/4] digits/few_shot/adafilter/own/seed1: validation" in printed
    assert demo.CLOSING in printed and result.table in printed
    assert (output / "table.md").read_text().strip() == result.table.strip()
    # The comparison: adafilter's paired difference, its interval and worst seed, per cell.
    records = {(r["method"], r["seed"]): 100 * r["test_accuracy"] for r in result.records}
    differences = [records["adafilter", s] - records["finetune", s] for s in (0, 1)]
    (row,) = [r for r in result.rows if r["method"] == "adafilter"]
    assert math.isclose(row["difference"], sum(differences) / 2)
    assert math.isclose(row["worst"], min(differences))
    assert math.isclose(row["interval"], 12.706204736 * abs(differences[0] - differences[1]) / 2)
    assert f"({row['difference']:+.1f} ± {row['interval']:.1f}, worst {row['worst']:+.1f})" in (
        result.table
    )
    summary = json.loads((output / "results.json").read_text())
    assert len(summary["runs"]) == 4 and summary["comparisons"]
    assert result.plot == output / "differences.png"
    assert result.plot.read_bytes().startswith(b"\x89PNG")

    again = io.StringIO()
    second = demo.run(output, settings=TINY, stream=again)
    assert "resuming: 4 of 4 runs already in" in again.getvalue()
    assert "source model" not in again.getvalue()  # cached
    assert second.rows == result.rows


def _main(capsys, *argv):
    result = run_main(capsys, *argv)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--methods", "adafilter"], "compares every method against `finetune`; include it"),
        (["--seeds", "-1"], "`--seeds` must be one or more seeds >= 0. Received: [-1]"),
        (["--shots", "0"], "`--shots` must be >= 1. Received: 0"),
        (["--source-epochs", "0"], "`--source-epochs` must be >= 1. Received: 0"),
    ],
)
def test_demo_refuses_bad_settings_in_one_line_before_any_work(capsys, tmp_path, flags, message):
    status, out, err = _main(capsys, "demo", *flags, "--output-dir", str(tmp_path / "out"))
    assert status == 2
    assert err.strip().splitlines()[-1].startswith("adafilter-keras demo: error: ")
    assert message in err and not (tmp_path / "out").exists()
    assert "Quick start:" not in out


def test_demo_flags_change_the_preset_and_unknown_methods_are_refused_by_the_parser(capsys):
    args = cli.build_parser().parse_args(["demo", "--seeds", "4", "5", "--shots", "3"])
    settings = command.settings_from(args, preset="demo")
    assert settings == dataclasses.replace(command.PRESETS["demo"], seeds=(4, 5), shots=3)
    status, _, err = _main(capsys, "demo", "--methods", "magic")
    assert status == 2 and "argument --methods: invalid choice: 'magic'" in err
    with pytest.raises(ValueError, match="Methods must be a non-empty list of finetune, "):
        demo.check(dataclasses.replace(TINY, methods=("finetune", "magic")))
