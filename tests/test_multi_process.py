"""Data-parallel training across two JAX processes on 127.0.0.1 (slow; `tox -e slow`).

Two processes with `--distribution multi_process` must train the same model as one process
with `--distribution data_parallel`: the same batches (each process takes its half of every
batch), the same gate noise, the gradient of the whole batch. Tolerance: weights within 1e-4
(float32 sums reduced in another order), logged losses within 1e-5 relative, accuracies within 1e-6.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from support import saved_weights

pytestmark = pytest.mark.slow
pytest.importorskip("jax")

# uci_digits: 1,437 training images of which 144 validate; neither split is a multiple of the
# batch, so the evaluation padding and weights are exercised; 4 steps stay inside epoch one.
TRAIN_FLAGS = [
    "--dataset", "uci_digits", "--method", "adafilter", "--backbone", "SmallResNet",
    "--image-size", "16", "--batch-size", "32", "--epochs", "1", "--steps-per-epoch", "4",
    "--controller-units", "8",
]  # fmt: skip


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(run_dir, *flags):
    env = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "adafilter_keras.cli", "train", *TRAIN_FLAGS]
    return subprocess.Popen(
        [*command, "--run-dir", str(run_dir), *flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process):
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]
    return output


def test_two_processes_train_what_one_process_trains(tmp_path):
    port = _free_port()
    group = [
        _train(
            tmp_path / "two",
            "--distribution",
            "multi_process",
            "--coordinator-address",
            f"127.0.0.1:{port}",
            "--num-processes",
            "2",
            "--process-id",
            str(index),
            "--process-timeout",
            "120",
        )  # fmt: skip
        for index in range(2)
    ]
    chief_output, other_output = (_finish(process) for process in group)
    _finish(_train(tmp_path / "one", "--distribution", "data_parallel"))

    assert "2 processes, 16 images of each batch per process" in chief_output
    assert "test accuracy" in chief_output and "epoch 1/1" not in other_output
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    # Process 1 keeps its own checkpoints under the chief's directory but no results of its own.
    assert (tmp_path / "two" / "processes" / "1" / "last.weights.h5").exists()
    assert not (tmp_path / "two" / "processes" / "1" / "results.json").exists()

    # Accuracies agree to well under one image (padded evaluation weighs each image padded/real).
    for key in ("test_accuracy", "best_validation_accuracy"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    np.testing.assert_allclose(two["test_loss"], one["test_loss"], rtol=1e-5)
    first, second = (saved_weights(tmp_path / run / "last.weights.h5") for run in ("one", "two"))
    assert first.keys() == second.keys() and len(first) > 100
    for name in first:
        np.testing.assert_allclose(first[name], second[name], rtol=0, atol=1e-4, err_msg=name)
