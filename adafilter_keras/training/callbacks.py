"""Harness callbacks: gate statistics for TensorBoard, and a NaN stop that says what happened."""

import io
import math

import keras
import numpy as np

from adafilter_keras.inspection import find_controller


class GateStatistics(keras.callbacks.Callback):
    """Logs, each epoch, how often each gated layer chose its fine-tuned filters in training.

    Writes to TensorBoard (under `log_dir`): a scalar per gated layer
    (`gates/<layer>`: fraction of fine-tuned filter choices over the epoch's training examples),
    the mean over layers (`gates/mean`), a histogram per layer of the per-filter rates, and an
    image `gates/per_layer` plotting the fraction per layer. Keeps the per-epoch fractions in
    `history` (one list per epoch) and adds `gate_fraction` to the epoch logs.

    Args:
        log_dir: TensorBoard directory; None logs nothing to TensorBoard.
    """

    def __init__(self, log_dir=None):
        super().__init__()
        self.log_dir = log_dir
        self.history = []
        self.layer_names = []
        self._controller = None
        self._writer = None

    def on_train_begin(self, logs=None):
        self._controller = find_controller(self.model)
        self.layer_names = list(self._controller.layer_names)
        self._controller.reset_gate_statistics()
        if self.log_dir and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(str(self.log_dir))

    def on_epoch_end(self, epoch, logs=None):
        rates = self._controller.gate_statistics()
        fractions = [float(np.mean(r)) for r in rates]
        self.history.append(fractions)
        if logs is not None and fractions and not any(math.isnan(f) for f in fractions):
            logs["gate_fraction"] = float(np.mean(fractions))
        if self._writer is not None:
            self._write(epoch, rates, fractions)
        self._controller.reset_gate_statistics()

    def _write(self, epoch, rates, fractions):
        import tensorflow as tf

        with self._writer.as_default(step=epoch):
            for name, rate, fraction in zip(self.layer_names, rates, fractions, strict=True):
                if math.isnan(fraction):
                    continue
                tf.summary.scalar(f"gates/{name}", fraction)
                tf.summary.histogram(f"gate_rates/{name}", rate)
            tf.summary.scalar("gates/mean", float(np.nanmean(fractions)))
            tf.summary.image("gates/per_layer", plot_fractions(self.layer_names, fractions)[None])
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def plot_fractions(layer_names, fractions, title="Fraction of fine-tuned filters per gated layer"):
    """Renders a bar chart of per-layer fractions; returns it as a uint8 `(h, w, 4)` RGBA array.

    Args:
        layer_names: The gated layers, in controller order.
        fractions: One fraction per layer, or a dict `{label: fractions}` drawn as grouped bars
            with a legend.
        title: The chart title.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    series = fractions if isinstance(fractions, dict) else {None: fractions}
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.18 * len(layer_names)), 3.2), dpi=100)
    colors = ["#3a7bd5", "#e07b39", "#4caf50", "#9c27b0"]
    for number, (label, values) in enumerate(series.items()):
        offsets = [i + (number - (len(series) - 1) / 2) * width for i in range(len(values))]
        axes.bar(offsets, values, width=width, label=label, color=colors[number % len(colors)])
    if len(series) > 1 or None not in series:
        axes.legend(fontsize=7)
    axes.set_ylim(0, 1)
    axes.set_ylabel("fine-tuned fraction")
    axes.set_xlabel("gated layer (controller order)")
    axes.set_title(title)
    step = max(1, len(layer_names) // 12)
    axes.set_xticks(range(0, len(layer_names), step))
    axes.set_xticklabels(layer_names[::step], rotation=60, ha="right", fontsize=6)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    buffer.seek(0)
    from PIL import Image

    return np.asarray(Image.open(buffer).convert("RGBA"))


class StopOnNaN(keras.callbacks.Callback):
    """Raises at the first NaN or infinite loss, so no later callback touches the checkpoints.

    Keras's `TerminateOnNaN` ends training normally, and `BackupAndRestore` then deletes its
    backup; raising keeps the last completed epoch's backup and the best checkpoint on disk.

    Args:
        make_error: `make_error(epoch, batch)` returns the exception to raise.
    """

    def __init__(self, make_error):
        super().__init__()
        self.make_error = make_error
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise self.make_error(self._epoch, batch)
