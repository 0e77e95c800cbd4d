"""Looking inside a model that uses AdaFilter layers."""

import collections
import contextlib

import keras
import numpy as np

from adafilter_keras.layers.gate_controller import GateController
from adafilter_keras.wrapping.graph import FunctionalGraph


def find_controller(model):
    """Returns the one `GateController` of `model`, searching nested models too.

    Raises:
        ValueError: If `model` has no controller or more than one.
    """
    found = [layer for layer in _walk(model) if isinstance(layer, GateController)]
    if len(found) != 1:
        raise ValueError(
            f"Model '{model.name}' must contain exactly one GateController to inspect its gates. "
            f"Received: {len(found)} GateController layers"
            + (f" ({', '.join(layer.name for layer in found)})" if found else "")
        )
    return found[0]


def controller_or_none(model):
    """Returns the one `GateController` of `model`, or None if it has none (or several)."""
    try:
        return find_controller(model)
    except ValueError:
        return None


def gate_model(model):
    """Builds a model that maps `model`'s inputs to the gates of every gated layer.

    The returned functional model shares `model`'s layers and weights; its outputs are the gate
    tensors, shape `(batch, filters[i])`, in controller order. Call it with `training=False` (the
    default of `predict`) for the deterministic inference gates.

    Args:
        model: A functional model whose graph calls a `GateController`, directly or inside a
            nested functional model (for example a wrapped backbone under a new head) that the
            graph calls once.

    Returns:
        A `keras.Model` with one output per gated layer.

    Raises:
        ValueError: If `model` has no controller or several, if its graph does not call the
            controller for every gated layer, or if it calls the nested model that holds the
            controller more than once (then pass that nested model).
    """
    controller = find_controller(model)
    return keras.Model(_inputs(model), _gate_tensors(model, controller), name=f"{model.name}_gates")


def _inputs(model):
    # One input as a tensor, not a list of one: called with one array, the model then warns not.
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _gate_tensors(model, controller):
    """The gate tensors, in controller order, of `model`'s graph."""
    return _controller_tensors(model, controller)[::2]


def _controller_tensors(model, controller):
    """`[gate_0, hidden_0, gate_1, hidden_1, ...]`: the controller's outputs in `model`'s graph."""
    if controller not in model.layers:
        nested = next(
            layer
            for layer in model.layers
            if isinstance(layer, keras.Model) and controller in _walk(layer)
        )
        calls = _calls(model, nested)
        if len(calls) != 1:
            raise ValueError(
                f"Model '{model.name}' calls the nested model '{nested.name}', which holds the "
                f"GateController, {len(calls)} times, so its gates are not one set of tensors. "
                f"Call gate_model on '{nested.name}' instead."
            )
        inner = keras.Model(nested.inputs, _controller_tensors(nested, controller))
        return list(inner(*calls[0].arguments.args, **calls[0].arguments.kwargs))
    gates = {}
    for node in _calls(model, controller):
        index = node.arguments.kwargs.get("index", 0)
        gates.setdefault(index, node.output_tensors[:2])
    if sorted(gates) != list(range(controller.num_gated_layers)):
        raise ValueError(
            f"GateController '{controller.name}' serves {controller.num_gated_layers} gated layers "
            f"but the graph of model '{model.name}' calls it for indices {sorted(gates)}."
        )
    return [tensor for i in sorted(gates) for tensor in gates[i]]


def _calls(model, layer):
    """The nodes of `model`'s own graph at which `layer` is called (not other models' calls)."""
    if isinstance(model, keras.Sequential):  # its graph is that of the functional model it built
        model = keras.Model(model.inputs, model.outputs)
    return FunctionalGraph(model).nodes_of(layer)


def _walk(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer)


GatedLayer = collections.namedtuple("GatedLayer", ["index", "name", "filters", "input_channels"])


def gated_layers(model):
    """Lists the gated layers of an AdaFilter model in controller order.

    Args:
        model: A model returned by `wrap()` (or any model with one `GateController`).

    Returns:
        A list of `GatedLayer(index, name, filters, input_channels)` named tuples.
    """
    controller = find_controller(model)
    return [
        GatedLayer(index, name, filters, channels)
        for index, (name, filters, channels) in enumerate(
            zip(controller.layer_names, controller.filters, controller.input_channels, strict=True)
        )
    ]


def count_parameters(model):
    """Counts the parameters of a model, with the gate controller's apart.

    Returns:
        A dict with `total`, `trainable` and `non_trainable` parameter counts of `model`, and
        `controller`, the trainable parameters of its `GateController` (0 if it has none), which
        are included in `trainable`.
    """
    size = lambda variables: int(sum(np.prod(v.shape) for v in variables))  # noqa: E731
    controllers = [layer for layer in _walk(model) if isinstance(layer, GateController)]
    trainable, non_trainable = size(model.trainable_weights), size(model.non_trainable_weights)
    return {
        "total": trainable + non_trainable,
        "trainable": trainable,
        "non_trainable": non_trainable,
        "controller": sum(size(c.trainable_weights) for c in controllers),
    }


_REPORT_COLUMNS = (
    ("layer", "layer"),
    ("filters", "filters"),
    ("fraction_finetuned", "fine-tuned (train)"),
    ("fraction_finetuned_inference", "fine-tuned (inference)"),
    ("disagreement", "disagreement"),
    ("probability_spread", "probability spread"),
    ("train_inference_agreement", "train/inference agreement"),
)


class GateReport(list):
    """The rows of `gate_report`: a list of dicts, one per gated layer, that prints as a table.

    `str(report)` (what `print` shows) and `report.format(digits)` give a Markdown table.
    """

    def format(self, digits=3):
        """Returns the report as a Markdown table, numbers rounded to `digits` decimals."""
        lines = [
            "| " + " | ".join(title for _, title in _REPORT_COLUMNS) + " |",
            "|" + "|".join("---" if key == "layer" else "--:" for key, _ in _REPORT_COLUMNS) + "|",
        ]
        for row in self:
            cells = [
                f"{row[key]:.{digits}f}" if isinstance(row[key], float) else str(row[key])
                for key, _ in _REPORT_COLUMNS
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self):
        return self.format()


def gate_report(model, x, batch_size=32, steps=None):
    """Measures, on the inputs `x`, what the gates of every gated layer of `model` do.

    Nothing of `model` changes: the training-mode pass runs with `model.stateless_call`, so no
    weight, moving statistic, gate warm-up count or noise seed moves (the gate noise differs
    from batch to batch and is the same from call to call). The inference-mode pass reads the
    model as it is. Training steps keep no statistics
    unless asked (see `GateController.start_statistics`); this computes them when wanted.

    Per gated layer, over all examples of `x`:

    * `fraction_finetuned`: the mean of the training-mode gates (sampled 0/1 gates, all 1 while
      a gate warm-up lasts): how often training picks the fine-tuned filter;
    * `fraction_finetuned_inference`: the mean of the inference gates (with the default
      `"expected"` rule, the mean gate probability);
    * `disagreement`: how much the inference decision `1[p > 0.5]` depends on the input: the
      chance that two examples get different decisions for the same filter, `2 d (1 - d)` with
      `d` the fraction of examples whose decision is 1, averaged over filters (0 to 0.5; 0 means
      one fixed choice per filter for every input);
    * `probability_spread`: the standard deviation across examples of the inference-mode gate
      probability `p = sigmoid(logit)`, averaged over filters;
    * `train_inference_agreement`: `1 - mean |training gate - inference gate|` on the same
      examples: 1 when inference gives the gates that training samples.

    Args:
        model: A model returned by `wrap()`, or a functional model that calls one (for example a
            wrapped backbone under a new head) once; see `gate_model`.
        x: The inputs: an array or tensor (split into batches of `batch_size`), or an iterable of
            batches such as a `tf.data.Dataset` or a PyTorch `DataLoader`, whose elements are
            the inputs or `(inputs, targets, ...)` tuples (only the inputs are read).
        batch_size: Batch size for array inputs (a positive int).
        steps: Optional number of batches to read from an iterable (None: all of it).

    Returns:
        A `GateReport`: a list with one dict per gated layer, in controller order, with keys
        `index`, `layer` (its name), `filters`, `examples` and the five measures above; `print`
        shows it as a Markdown table.

    Raises:
        ValueError: If `model` has no `GateController` or several, if its graph does not call
            the controller for every gated layer, if `batch_size` or `steps` is invalid, or if
            `x` holds no example.
    """
    controller = find_controller(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}"
        )
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"`steps` must be a positive int or None. Received: steps={steps!r}")
    sums = _measure(model, controller, _batches(x, batch_size, steps))
    if not sums[0].examples:
        raise ValueError(
            f"`gate_report` needs at least one example in `x`. Received: {type(x).__name__} with "
            "no example"
        )
    return GateReport(
        {
            "index": index,
            "layer": name,
            "filters": filters,
            "examples": layer_sums.examples,
            **layer_sums.measures(),
        }
        for index, (name, filters, layer_sums) in enumerate(
            zip(controller.layer_names, controller.filters, sums, strict=True)
        )
    )


def _measure(model, controller, batches):
    """Runs `model` on `batches` in training and inference mode; returns a `_LayerSums` a layer."""
    learned = controller.policy == "learned"
    tensors = _controller_tensors(model, controller)
    probe = keras.Model(_inputs(model), tensors if learned else tensors[::2])
    trainable = [v.value for v in probe.trainable_variables]
    non_trainable = [v.value for v in probe.non_trainable_variables]
    state = list(non_trainable)
    # The noise seeds (`variables` that are not `weights`) advance from batch to batch so that
    # each batch draws new gate noise; everything else keeps its value.
    weights = {id(v) for v in probe.weights}
    seeds = [i for i, v in enumerate(probe.non_trainable_variables) if id(v) not in weights]
    sums = [_LayerSums(filters) for filters in controller.filters]
    with _no_gradient():
        for batch in batches:
            trained, updated = probe.stateless_call(trainable, state, batch, training=True)
            for i in seeds:
                state[i] = updated[i]
            inferred, _ = probe.stateless_call(trainable, non_trainable, batch, training=False)
            for index, layer_sums in enumerate(sums):
                if learned:
                    train_gate = trained[2 * index]
                    inference_gate, hidden = inferred[2 * index], inferred[2 * index + 1]
                    probability = keras.ops.sigmoid(controller.heads[index](hidden))
                else:
                    train_gate = trained[index]
                    inference_gate = probability = inferred[index]
                layer_sums.add(
                    *(
                        keras.ops.convert_to_numpy(t).astype("float64")
                        for t in (train_gate, inference_gate, probability)
                    )
                )
    return sums


def _no_gradient():
    # PyTorch records every operation for a backward pass unless told not to.
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


class _LayerSums:
    """Running sums over examples of one gated layer's gates, for `gate_report`."""

    def __init__(self, filters):
        self.examples = 0
        self.train = np.zeros(filters)
        self.inference = np.zeros(filters)
        self.decisions = np.zeros(filters)
        self.probability = np.zeros(filters)
        self.probability_squares = np.zeros(filters)
        self.distance = 0.0

    def add(self, train_gate, inference_gate, probability):
        self.examples += len(train_gate)
        self.train += train_gate.sum(0)
        self.inference += inference_gate.sum(0)
        self.decisions += (probability > 0.5).sum(0)
        self.probability += probability.sum(0)
        self.probability_squares += np.square(probability).sum(0)
        self.distance += np.abs(train_gate - inference_gate).mean(1).sum()

    def measures(self):
        n = self.examples
        decided = self.decisions / n
        mean = self.probability / n
        variance = np.maximum(self.probability_squares / n - np.square(mean), 0.0)
        return {
            "fraction_finetuned": float(self.train.mean() / n),
            "fraction_finetuned_inference": float(self.inference.mean() / n),
            "disagreement": float(np.mean(2.0 * decided * (1.0 - decided))),
            "probability_spread": float(np.mean(np.sqrt(variance))),
            "train_inference_agreement": float(1.0 - self.distance / n),
        }


def _batches(x, batch_size, steps):
    """The input batches of `x`: slices of an array, or the inputs of an iterable's elements."""
    if hasattr(x, "shape") and not isinstance(x, dict):
        for start in range(0, int(x.shape[0]), batch_size):
            yield x[start : start + batch_size]
        return
    if isinstance(x, (list, tuple, dict)):
        raise ValueError(
            "`x` must be an array or tensor of inputs, or an iterable of batches (such as a "
            f"`tf.data.Dataset`). Received: x of type {type(x).__name__}"
        )
    for number, element in enumerate(x):
        if steps is not None and number >= steps:
            return
        yield _host(element[0] if isinstance(element, (list, tuple)) else element)


def _host(batch):
    # A `tf.data` batch on another backend: its NumPy values (Keras's data adapters do the same).
    if keras.backend.backend() != "tensorflow":
        return keras.tree.map_structure(
            lambda t: t.numpy() if type(t).__module__.startswith("tensorflow") else t, batch
        )
    return batch
