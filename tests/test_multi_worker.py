"""Data-parallel training across two processes with MultiWorkerMirroredStrategy (slow)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from support import saved_weights

pytestmark = pytest.mark.slow

# Keras 3.15's TensorFlow trainer reduces the first distributed batch in `_maybe_symbolic_build`,
# which fails under MultiWorkerMirroredStrategy with more than one worker ("Attempt to convert a
# value (PerReplica...)"); upstream: keras-team/keras#20585. Strict, so a fixed Keras shows up.
KNOWN_UPSTREAM_FAILURE = pytest.mark.xfail(
    reason="keras-team/keras#20585: Keras 3 fit() fails under MultiWorkerMirroredStrategy",
    raises=AssertionError,
    strict=True,
)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@KNOWN_UPSTREAM_FAILURE
def test_two_workers_on_loopback_agree_on_the_final_weights(tmp_path):
    ports = _free_ports(2)
    workers = [f"127.0.0.1:{port}" for port in ports]
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from adafilter_keras.training import TrainConfig, train
        index, run_dir = int(sys.argv[1]), sys.argv[2]
        config = TrainConfig(
            dataset="uci_digits", method="adafilter", backbone="SmallResNet", weights="none",
            image_size=16, batch_size=32, epochs=1, steps_per_epoch=4, warmup_epochs=0,
            controller_units=8, distribution="multi_worker", run_dir=run_dir,
        )
        train(config, verbose=0)
        """
    )
    processes = []
    for index in range(2):
        env = {
            **os.environ,
            "KERAS_BACKEND": "tensorflow",
            "TF_CONFIG": json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            ),
        }
        run_dir = tmp_path / f"worker{index}"
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", script, str(index), str(run_dir)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]

    first, second = (saved_weights(tmp_path / f"worker{i}" / "last.weights.h5") for i in range(2))
    assert first.keys() == second.keys() and len(first) > 10
    for name in first:
        np.testing.assert_allclose(first[name], second[name], rtol=1e-5, atol=1e-6, err_msg=name)
