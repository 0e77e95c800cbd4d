"""What our commands print: TensorFlow's start-up lines filtered, the device, one line per epoch.

TensorFlow writes its start-up lines (CUDA stubs, CPU features, absl) from C++ straight to the
process's stderr, before `TF_CPP_MIN_LOG_LEVEL` is read for some of them, so the only way to keep
them off a user's screen is to catch file descriptor 2 while the backend is imported. Lines that
report an error are printed again; `--verbose` (or `ADAFILTER_KERAS_VERBOSE=1`) shows everything.
"""

import contextlib
import os
import re
import sys
import tempfile
import time

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "ADAFILTER_KERAS_VERBOSE"
# absl / glog lines at ERROR or FATAL ("E0000 00:00:... file.cc:12] ...") and Python errors.
_ERROR_LINE = re.compile(r"^(?:[EF]\d{4} |.*(?:Error\b|ERROR|Traceback|CUDA_ERROR))")
# What TensorFlow reports as an error on every machine without a usable CUDA driver.
_NO_CUDA_LINE = re.compile(r"cuInit|cuda drivers|CUDA_ERROR_NO_DEVICE")


def verbose_requested(argv=None):
    """Whether the user asked for TensorFlow's full output (`--verbose` or the environment)."""
    argv = sys.argv[1:] if argv is None else argv
    return VERBOSE_FLAG in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


COMMAND = "adafilter-keras"
_COMMAND_MODULE = "adafilter_keras.cli"


def started_as_command(argv=None):
    """Whether this process is the `adafilter-keras` command (or `python -m adafilter_keras.cli`).

    Read from the interpreter's own command line (`sys.orig_argv`), which is set before any
    import: the package's `__init__` asks it, and only the command quiets TensorFlow's start-up
    lines. A program that imports `adafilter_keras` keeps its stderr as it is.
    """
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    if any(os.path.basename(arg).split(".")[0] == COMMAND for arg in argv[:2]):
        return True
    return any(
        flag == "-m" and module == _COMMAND_MODULE
        for flag, module in zip(argv, argv[1:], strict=False)
    )


def import_backend_quietly():
    """Imports Keras (and so its backend) with TensorFlow's start-up lines filtered.

    Does nothing when Keras is already imported or the user asked for verbose output. The lines
    that report errors are written to stderr after the import; when the import itself fails,
    every caught line is, before the exception propagates.
    """
    if "keras" in sys.modules or verbose_requested():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _caught_stderr(_ERROR_LINE) as caught:
        try:
            import keras  # noqa: F401
        except BaseException:
            caught.failed = True
            raise


class _Caught:
    failed = False


@contextlib.contextmanager
def _caught_stderr(shown_lines):
    """Sends file descriptor 2 to a temporary file (never a pipe: it cannot fill up and block).

    Afterwards the lines that match `shown_lines` (every line, if the block raised) are printed.
    """
    caught = _Caught()
    try:
        sys.stderr.flush()
        sink = tempfile.TemporaryFile(mode="w+b")
    except (OSError, ValueError, AttributeError):  # no usable temporary directory
        sink = None
    try:
        saved = os.dup(2) if sink is not None else None
    except (OSError, ValueError):  # no real stderr (embedded interpreters)
        saved = None
    if saved is None:
        if sink is not None:
            sink.close()
        yield caught
        return
    with sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield caught
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines = sink.read().decode("utf-8", "replace").splitlines()
            shown = lines if caught.failed else [line for line in lines if shown_lines.match(line)]
            if shown:
                print("\n".join(shown), file=sys.stderr, flush=True)


def quiet_python_logging():
    """Keeps TensorFlow's Python warnings (retracing, deprecations) at ERROR unless verbose."""
    if verbose_requested():
        return
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")


def device_line():
    """One line naming the backend and the accelerator found (or that none was)."""
    import keras

    backend = keras.backend.backend()
    accelerators = []
    if backend == "tensorflow":
        import tensorflow as tf

        # Listing devices initialises CUDA, which logs an error on machines without a driver.
        errors = re.compile(rf"(?!.*(?:{_NO_CUDA_LINE.pattern})){_ERROR_LINE.pattern}")
        with _caught_stderr(errors):
            accelerators = [
                tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
                for gpu in tf.config.list_physical_devices("GPU")
            ]
    elif backend == "jax":
        import jax

        accelerators = [d.device_kind for d in jax.devices() if d.platform != "cpu"]
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            accelerators = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if accelerators:
        found = f"{len(accelerators)} GPU: {', '.join(sorted(set(accelerators)))}"
    else:
        found = f"no GPU found, running on the CPU ({os.cpu_count()} cores)"
    return f"device: {found}; Keras {keras.__version__}, {backend} backend"


def is_terminal(stream=None):
    """Whether `stream` (default stdout) shows progress bars: a TTY or a notebook."""
    stream = stream or sys.stdout
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(stream, "isatty", lambda: False)())


def epoch_line_callback(stream=None):
    """A Keras callback printing one line per epoch: number, metrics and the epoch's time.

    For output that goes to a file or a pipe (CI, `nohup`, SLURM logs), where progress bars
    become one long line of escape codes.
    """
    import keras
    import numpy

    stream = stream or sys.stdout

    class EpochLine(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.epochs = self.params.get("epochs")

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.time()

        def on_epoch_end(self, epoch, logs=None):
            metrics = "  ".join(
                f"{name} {float(value):.4f}"
                for name, value in (logs or {}).items()
                if name != "learning_rate" and numpy.ndim(value) == 0
            )
            seconds = time.time() - self.started
            print(f"epoch {epoch + 1}/{self.epochs}  {metrics}  {seconds:.1f} s", file=stream)
            stream.flush()

    return EpochLine()
