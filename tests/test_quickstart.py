"""The quick start, reduced to tiny epochs and one seed: every artefact and every method."""

import io
import json

from support import run_cli, tensorflow_only

from adafilter_keras import quickstart

pytestmark = tensorflow_only  # orchestration only; the layers are tested on every backend


def test_reduced_quick_start_writes_every_artefact_and_reuses_them(tmp_path):
    output = tmp_path / "quickstart"
    options = dict(shots=(3,), seeds=(0,), epochs=2, source_epochs=1, steps_per_epoch=2)
    stream = io.StringIO()
    result = quickstart.run(output, stream=stream, **options)

    printed = stream.getvalue()
    assert "[1/5] source model, mnist5k: trained" in printed
    assert "[5/5] adafilter, 3 shots/class, seed 0:" in printed
    for method in quickstart.METHODS:
        assert f"| {method} | " in result.table
        run_dir = output / "3shots" / method / "seed0"
        record = json.loads((run_dir / "results.json").read_text())
        assert record["method"] == method and 0.0 <= record["test_accuracy"] <= 1.0
        assert record["sizes"]["train"] == 30 and record["config"]["rest_as_test"]
        assert record["config"]["weights"] == str(output / "source" / "backbone.weights.h5")
        assert any((run_dir / "logs").rglob("events.out.tfevents.*"))
    assert result.table in printed and (output / "table.md").read_text().strip() == result.table
    summary = json.loads((output / "results.json").read_text())
    assert {row["method"] for row in summary["rows"]} == set(quickstart.METHODS)
    assert len(summary["runs"]) == 4 and summary["target"]["epochs"] == 2
    assert result.plot == output / "gates_per_layer.png"
    assert result.plot.read_bytes().startswith(b"\x89PNG")

    again = io.StringIO()
    second = quickstart.run(output, stream=again, **options)
    assert "reusing the source model trained earlier" in again.getvalue()
    assert again.getvalue().count("done earlier") == 4
    assert second.rows == result.rows


def test_demo_command_refuses_bad_settings_in_one_line(tmp_path):
    result = run_cli("demo", "--methods", "adafilter", "--output-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("adafilter-keras demo: error:")
    assert "include it" in result.stderr and not (tmp_path / "source").exists()
    help_text = run_cli("demo", "--help").stdout
    assert "--shots" in help_text and "--fresh" in help_text and "offline" in help_text.lower()
