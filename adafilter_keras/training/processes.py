"""Several JAX processes, on one or many machines, training one model data-parallel.

`join(...)` makes this process one of a `jax.distributed` group before JAX does any work;
`keras.distribution.DataParallel` then places one batch across every device of every process,
and each process reads its own part of each batch. Everything here is backend-light: JAX is
imported only when a group is joined.
"""

import dataclasses
import os

# Read when a flag is not given (the names `keras.distribution.initialize` reads too).
COORDINATOR_ENV = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
NUM_PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID_ENV = "KERAS_DISTRIBUTION_PROCESS_ID"
DEFAULT_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands in its group.

    Attributes:
        process_id: This process's index, 0 (the chief, which writes the run directory) to
            `num_processes - 1`.
        num_processes: The number of processes in the group.
    """

    process_id: int = 0
    num_processes: int = 1

    @property
    def is_chief(self):
        return self.process_id == 0


def current():
    """The group this process has joined, or a group of one."""
    import sys

    if "jax" not in sys.modules:
        return ProcessGroup()
    import jax

    if not jax.distributed.is_initialized():
        return ProcessGroup()
    return ProcessGroup(jax.process_index(), jax.process_count())


def join(coordinator_address=None, num_processes=None, process_id=None, timeout_s=None):
    """Joins a `jax.distributed` process group (once; later calls return the same group).

    Each argument left None is read from its environment variable
    (`KERAS_DISTRIBUTION_JOB_ADDRESSES`, `..._NUM_PROCESSES`, `..._PROCESS_ID`); when none of
    the three is set anywhere, JAX detects the cluster itself (SLURM, Open MPI, Kubernetes...).

    Args:
        coordinator_address: `HOST:PORT` of process 0, the same for every process (a
            comma-separated list of every process's address is accepted; the first is used).
        num_processes: How many processes take part.
        process_id: This process's index, `0 ... num_processes - 1`.
        timeout_s: Seconds to wait for every process to join (default 300).

    Returns:
        The `ProcessGroup` joined.

    Raises:
        ValueError: Not on the JAX backend, called after JAX started computing, settings
            missing or inconsistent, or the group did not form in time.
    """
    import keras

    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            "Training across processes needs the JAX backend (KERAS_BACKEND=jax); on "
            f"{backend}, train in one process."
        )
    import jax

    if jax.distributed.is_initialized():
        return current()
    coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ENV) or None
    num_processes = _integer(num_processes, NUM_PROCESSES_ENV, "num_processes")
    process_id = _integer(process_id, PROCESS_ID_ENV, "process_id")
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "Set all three of the coordinator address, the number of processes and this "
            "process's id (flags --coordinator-address, --num-processes, --process-id, or "
            f"{COORDINATOR_ENV}, {NUM_PROCESSES_ENV}, {PROCESS_ID_ENV}), or none of them under "
            "a cluster manager JAX detects (SLURM, Open MPI). Received: "
            f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}"
        )
    if coordinator_address and "," in coordinator_address:
        coordinator_address = coordinator_address.split(",")[0]
    if coordinator_address and ":" not in coordinator_address:
        raise ValueError(
            f"The coordinator address must be HOST:PORT. Received: {coordinator_address!r}"
        )
    if coordinator_address and not coordinator_address.rpartition(":")[2].isdigit():
        raise ValueError(
            f"The coordinator port must be a number. Received: {coordinator_address!r}"
        )
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id must be in 0 ... {num_processes - 1}. Received: process_id={process_id}"
        )
    if _backend_started():
        raise ValueError(
            "JAX has already started computing in this process; join the process group first "
            "(call adafilter_keras.training.processes.join before building any model)."
        )
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else int(timeout_s)
    if coordinator_address:
        # JAX ends the process (abort, no Python exception) when it cannot reach the
        # coordinator; find out first and say so.
        _check_coordinator(coordinator_address, process_id, timeout_s)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_s,
        )
    except (ValueError, RuntimeError) as error:
        where = coordinator_address or "the address the cluster manager gives"
        raise ValueError(
            f"Could not join the process group at {where} (waited up to {timeout_s} s): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}. Start every "
            "process with the same coordinator address and number of processes, each with its "
            "own process id, and check that process 0's machine accepts connections on that port."
        ) from None
    return current()


def _check_coordinator(address, process_id, timeout_s):
    """Process 0 can listen on the port; every other process can reach process 0 in time."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    port = int(port)  # checked by join()
    if process_id == 0:
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError as error:
                raise ValueError(
                    f"Process 0 cannot listen on port {port} ({error.strerror}); choose a free "
                    "port for the coordinator address and give it to every process."
                ) from None
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host.strip("[]"), port), timeout=2).close()
            return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"No coordinator answered at {address} within {timeout_s} s "
                    f"({error.strerror or error}). Start process 0 with the same "
                    "--coordinator-address (it listens there), check the host name and that the "
                    "port is open between the machines, or raise --process-timeout."
                ) from None
            time.sleep(0.5)


def _integer(value, env, name):
    if value is None:
        value = os.environ.get(env) or None
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer. Received: {name}={value!r}") from None


def _backend_started():
    from jax._src import xla_bridge

    return bool(getattr(xla_bridge, "_backends", None))
