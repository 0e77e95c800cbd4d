"""benchmarks/conv_time.py: each timed part computes what it is named after, on every backend,
and the script writes one row per feature-map size. Nothing here is a timing."""

import json

import numpy as np
import pytest
from keras import backend, ops
from support import load_benchmark

conv_time = load_benchmark("conv_time")


def test_each_part_is_the_convolution_or_its_gradient():
    x, w, dy = conv_time.tensors(batch_size=2, size=3, channels=2, kernel_size=3)
    functions = conv_time.parts(backend.backend())
    conv = lambda a, k: ops.convert_to_numpy(ops.conv(a, k, padding="same"))  # noqa: E731
    forward = ops.convert_to_numpy(functions["forward"](x, w, dy))
    np.testing.assert_allclose(forward, conv(x, w), rtol=1e-6)
    # The convolution is linear in each argument, so a gradient's inner product with any
    # direction is the upstream gradient's inner product with the convolution along it.
    v, u, _ = conv_time.tensors(batch_size=2, size=3, channels=2, kernel_size=3, seed=1)
    upstream = ops.convert_to_numpy(dy)
    input_gradient = ops.convert_to_numpy(functions["input_gradient"](x, w, dy))
    kernel_gradient = ops.convert_to_numpy(functions["kernel_gradient"](x, w, dy))
    assert input_gradient.shape == tuple(x.shape) and kernel_gradient.shape == tuple(w.shape)
    np.testing.assert_allclose(
        np.sum(input_gradient * ops.convert_to_numpy(v)), np.sum(conv(v, w) * upstream), rtol=1e-4
    )
    np.testing.assert_allclose(
        np.sum(kernel_gradient * ops.convert_to_numpy(u)), np.sum(conv(x, u) * upstream), rtol=1e-4
    )


def test_the_script_writes_one_row_per_size(tmp_path, capsys):
    output = tmp_path / "conv.json"
    conv_time.main(
        [
            "--sizes",
            "1",
            "2",
            "--channels",
            "4",
            "--batch-size",
            "2",
            "--repeats",
            "2",
            "--output",
            str(output),
        ]  # fmt: skip
    )
    report = json.loads(output.read_text())
    assert [row["size"] for row in report["rows"]] == [1, 2]
    assert report["rows"][1]["gflop"] == pytest.approx(2 * 2 * 4 * 9 * 16 / 1e9)
    for row in report["rows"]:
        assert 0 < row["second_convolution_share"] < 1
        assert all(row[f"{part}_ms"] > 0 for part in conv_time.PARTS)
    assert report["settings"]["channels"] == 4
    assert "| 2x2 |" in capsys.readouterr().out


@pytest.mark.parametrize("flag", [["--sizes", "0"], ["--channels", "0"], ["--repeats", "0"]])
def test_bad_sizes_are_refused_before_any_work(flag, tmp_path):
    with pytest.raises(SystemExit, match="at least 1"):
        conv_time.main([*flag, "--output", str(tmp_path / "x.json")])
