"""Training across processes: settings checked before JAX starts, batches split evenly, CLI.

The two-process run itself is in tests/test_multi_process.py (slow).
"""

import socket

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import run_main, run_python

from adafilter_keras.training import processes
from adafilter_keras.training.config import BACKEND_DISTRIBUTIONS
from adafilter_keras.training.runner import _process_share

JAX_ONLY = pytest.mark.skipif(keras.backend.backend() != "jax", reason="process groups are JAX's")


def test_a_process_that_joined_nothing_is_a_chief_of_one():
    group = processes.current()
    assert (group.process_id, group.num_processes, group.is_chief) == (0, 1, True)


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the refusal is for other backends")
def test_other_backends_are_refused():
    with pytest.raises(ValueError, match="needs the JAX backend"):
        processes.join("127.0.0.1:1234", 2, 0)


@JAX_ONLY
@pytest.mark.parametrize(
    "arguments, message",
    [
        (("127.0.0.1:1234", None, 0), "Set all three"),
        (("127.0.0.1", 2, 0), "HOST:PORT"),
        (("127.0.0.1:port", 2, 1), "port must be a number"),
        (("127.0.0.1:1234", 2, 2), r"process_id must be in 0 \.\.\. 1"),
        (("127.0.0.1:1234", "two", 0), "num_processes must be an integer"),
    ],
)
def test_bad_settings_are_refused_before_jax_is_touched(arguments, message, monkeypatch):
    for name in (processes.COORDINATOR_ENV, processes.NUM_PROCESSES_ENV, processes.PROCESS_ID_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=message):
        processes.join(*arguments, timeout_s=1)


@JAX_ONLY
def test_settings_come_from_the_environment_when_flags_are_silent(monkeypatch):
    monkeypatch.setenv(processes.COORDINATOR_ENV, "127.0.0.1:1234")
    monkeypatch.setenv(processes.NUM_PROCESSES_ENV, "2")
    # No process id in the environment: the three are read together, so this is incomplete.
    monkeypatch.delenv(processes.PROCESS_ID_ENV, raising=False)
    with pytest.raises(ValueError, match="coordinator_address='127.0.0.1:1234', num_processes=2"):
        processes.join(timeout_s=1)


@JAX_ONLY
def test_no_coordinator_is_a_clear_error_in_seconds_not_an_abort():
    # JAX itself aborts the process (SIGABRT, no exception) when the coordinator never answers.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens once closed
    result = run_python(
        "from adafilter_keras.training import processes\n"
        "try:\n"
        f"    processes.join('127.0.0.1:{port}', 2, 1, timeout_s=2)\n"
        "except ValueError as error:\n"
        "    print('refused:', error)\n",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"refused: No coordinator answered at 127.0.0.1:{port} within 2 s" in result.stdout


@JAX_ONLY
def test_process_zero_says_when_its_port_is_taken():
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_python(
            "from adafilter_keras.training import processes\n"
            "try:\n"
            f"    processes.join('127.0.0.1:{port}', 2, 0, timeout_s=2)\n"
            "except ValueError as error:\n"
            "    print('refused:', error)\n",
        )
    assert f"refused: Process 0 cannot listen on port {port}" in result.stdout, result.stderr


def _batches(size, batch_size):
    images = np.arange(size, dtype="float32").reshape(size, 1)
    labels = np.arange(size, dtype="float32").reshape(size, 1) * 10
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


@pytest.mark.parametrize("kind", ["train", "validation"])
def test_processes_share_every_batch_evenly_and_together_see_one_process_batches(kind):
    size, batch_size = 10, 4
    shares = [
        list(
            _process_share(
                _batches(size, batch_size), size, batch_size, kind, processes.ProcessGroup(i, 2)
            )
        )
        for i in range(2)
    ]
    assert len(shares[0]) == len(shares[1])
    joined = [
        [np.concatenate([a, b]) for a, b in zip(first, second, strict=True)]
        for first, second in zip(*shares, strict=True)
    ]
    assert all(part.shape[0] == batch_size for batch in joined for part in batch)
    images = np.concatenate([batch[0] for batch in joined])[:, 0]
    if kind == "train":  # the last incomplete batch is dropped
        assert images.tolist() == list(range(8))
        return
    # Evaluation pads to 12 with weight-0 zeros; real images weigh 12/10 so that the loss (a sum
    # over the padded batch) and accuracy (a weighted mean) are those of the 10 real images.
    weights = np.concatenate([batch[2] for batch in joined])
    assert images.tolist() == [*range(10), 0, 0]
    np.testing.assert_allclose(weights, [1.2] * 10 + [0, 0])
    assert np.concatenate([batch[1] for batch in joined])[:10, 0].tolist() == list(range(0, 91, 10))


def test_train_offers_only_the_distributions_of_its_backend(capsys):
    backend = keras.backend.backend()
    help_text = run_main(capsys, "train", "--help").stdout
    offered = BACKEND_DISTRIBUTIONS[backend]
    choices = help_text.split("--distribution {", 1)[1].split("}", 1)[0].split(",")
    assert choices == ["None", *offered]
    refused = next(
        name for names in BACKEND_DISTRIBUTIONS.values() for name in names if name not in offered
    )
    result = run_main(capsys, "train", "--dataset", "uci_digits", "--distribution", refused)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert "--coordinator-address" in help_text and "SLURM" in help_text


def test_process_flags_without_multi_process_are_refused(capsys):
    result = run_main(capsys, "train", "--dataset", "uci_digits", "--num-processes", "2")
    assert result.returncode == 2
    assert "--num-processes is for --distribution multi_process" in result.stderr
