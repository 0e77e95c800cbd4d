"""Harness callbacks: gate statistics for TensorBoard, and a NaN stop that says what happened."""

import contextlib
import io
import math

import keras
import numpy as np

from adafilter_keras.inspection import find_controller


class GateStatistics(keras.callbacks.Callback):
    """Logs, each epoch, what the gates of every gated layer did in training.

    Training steps keep no gate statistics unless asked: this callback asks, for the `fit` it
    is passed to. At the start of training it turns the controller's statistics on
    (`GateController.start_statistics`) and makes the model re-make its train function; at the
    end it turns them off again. For a one-off measurement, `adafilter_keras.gate_report(model,
    x)` needs no callback.

    Per gated layer and epoch (see `GateController.gate_report`):

    * `fraction_finetuned`: how often the training gates picked the fine-tuned filter;
    * `disagreement`: how much the inference decision depends on the input (the chance that two
      examples of a batch get different decisions for one filter; 0 means one fixed choice for
      every input);
    * `probability_spread`: the spread across a batch of the gate probability `sigmoid(logit)`;
    * `train_inference_agreement`: how well the inference gates match the sampled training gates;
    * `controller_gradient`: the norm of the loss gradient reaching the layer's controller head
      (and `controller_gradient/total` for the whole controller), on a fixed probe batch in
      training mode, computed without changing any weight or statistic (TensorFlow and JAX).

    Writes them to TensorBoard under `log_dir` (`gates/<layer>` for the fraction, `gates/mean`,
    `gate_disagreement/<layer>`, `gate_spread/<layer>`, `gate_agreement/<layer>`,
    `controller_gradient/<layer>`, a histogram per layer of the per-filter rates and an image
    `gates/per_layer`), keeps them per epoch in `history` (fractions) and `reports` (everything),
    and adds `gate_fraction`, `gate_disagreement` and `gate_agreement` (means over layers) to the
    epoch logs.

    Args:
        log_dir: TensorBoard directory; None logs nothing to TensorBoard.
        probe: Optional `(images, labels)` batch for the gradient probe; None skips it.
    """

    def __init__(self, log_dir=None, probe=None):
        super().__init__()
        self.log_dir = log_dir
        self.probe = probe
        self.history = []
        self.reports = []
        self.layer_names = []
        self._controller = None
        self._writer = None

    def on_train_begin(self, logs=None):
        self._controller = find_controller(self.model)
        self.layer_names = list(self._controller.layer_names)
        # Under a TensorFlow distribution strategy, the statistics variables are created in its
        # scope, where the model's variables live.
        strategy = getattr(self.model, "distribute_strategy", None)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self._controller.start_statistics()
        _forget_functions(self.model)
        self.model.make_train_function()  # `fit` has made its own already: one that counts them
        if self.log_dir and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(str(self.log_dir))

    def on_epoch_end(self, epoch, logs=None):
        rates = self._controller.gate_statistics()
        fractions = [float(np.mean(r)) for r in rates]
        report = self._controller.gate_report()
        gradients = controller_gradient_norms(self.model, self._controller, self.probe)
        if gradients is not None:
            for layer_report, norm in zip(report, gradients["per_layer"], strict=True):
                layer_report["controller_gradient"] = norm
        self.history.append(fractions)
        self.reports.append(
            {
                "epoch": epoch + 1,
                "layers": report,
                "controller_gradient_total": None if gradients is None else gradients["total"],
            }
        )
        if logs is not None and fractions and not any(math.isnan(f) for f in fractions):
            logs["gate_fraction"] = float(np.mean(fractions))
            logs["gate_disagreement"] = float(np.mean([r["disagreement"] for r in report]))
            logs["gate_agreement"] = float(
                np.mean([r["train_inference_agreement"] for r in report])
            )
        if self._writer is not None:
            self._write(epoch, rates, fractions, report, gradients)
        self._controller.reset_gate_statistics()

    def _write(self, epoch, rates, fractions, report, gradients):
        import tensorflow as tf

        with self._writer.as_default(step=epoch):
            for name, rate, fraction, layer in zip(
                self.layer_names, rates, fractions, report, strict=True
            ):
                if math.isnan(fraction):
                    continue
                tf.summary.scalar(f"gates/{name}", fraction)
                tf.summary.histogram(f"gate_rates/{name}", rate)
                tf.summary.scalar(f"gate_disagreement/{name}", layer["disagreement"])
                tf.summary.scalar(f"gate_spread/{name}", layer["probability_spread"])
                tf.summary.scalar(f"gate_agreement/{name}", layer["train_inference_agreement"])
                if "controller_gradient" in layer:
                    tf.summary.scalar(f"controller_gradient/{name}", layer["controller_gradient"])
            if gradients is not None:
                tf.summary.scalar("controller_gradient/total", gradients["total"])
            tf.summary.scalar("gates/mean", float(np.nanmean(fractions)))
            tf.summary.image("gates/per_layer", plot_fractions(self.layer_names, fractions)[None])
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._controller.stop_statistics()
        _forget_functions(self.model)  # the next `fit` makes them without the statistics
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _forget_functions(model):
    # Made with another set of variables: under a JAX distribution their recorded shardings
    # would no longer match the model's state.
    model.train_function = model.test_function = model.predict_function = None


def controller_gradient_norms(model, controller, probe):
    """The gradient norm that reaches the controller on one batch, per gated layer and in total.

    Runs `model` in training mode on `probe = (images, labels)` with `model.stateless_call`, so no
    weight, moving statistic, gate statistic or noise seed changes. The loss is the compiled
    loss. Per layer, the norm is over that layer's controller head (its logits' weights).

    Returns:
        `{"per_layer": [float, ...], "total": float}`, or None where it cannot be computed (no
        probe, a policy without weights, or a backend other than TensorFlow and JAX).
    """
    backend = keras.backend.backend()
    if probe is None or controller.policy != "learned" or backend not in ("tensorflow", "jax"):
        return None
    images, labels = probe
    loss_fn = keras.losses.get(model.loss)
    trainable = model.trainable_variables
    non_trainable = [v.value for v in model.non_trainable_variables]
    ids = {id(v): i for i, v in enumerate(trainable)}
    groups = [[ids[id(v)] for v in head.trainable_variables] for head in controller.heads]
    everything = [ids[id(v)] for v in controller.trainable_variables if id(v) in ids]

    def loss(values):
        outputs, _ = model.stateless_call(values, non_trainable, images, training=True)
        return keras.ops.mean(loss_fn(labels, outputs))

    if backend == "tensorflow":
        import tensorflow as tf

        values = [tf.identity(v.value) for v in trainable]
        with tf.GradientTape() as tape:
            tape.watch(values)
            value = loss(values)
        grads = tape.gradient(value, values)
    else:
        import jax

        grads = jax.grad(loss)([v.value for v in trainable])

    def norm(indices):
        total = sum(
            float(np.sum(np.square(keras.ops.convert_to_numpy(grads[i]))))
            for i in indices
            if grads[i] is not None
        )
        return math.sqrt(total)

    return {"per_layer": [norm(group) for group in groups], "total": norm(everything)}


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
