"""Looking inside a model that uses AdaFilter layers."""

import collections

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
    return keras.Model(model.inputs, _gate_tensors(model, controller), name=f"{model.name}_gates")


def _gate_tensors(model, controller):
    """The gate tensors, in controller order, of `model`'s graph."""
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
        inner = keras.Model(nested.inputs, _gate_tensors(nested, controller))
        return inner(*calls[0].arguments.args, **calls[0].arguments.kwargs)
    gates = {}
    for node in _calls(model, controller):
        index = node.arguments.kwargs.get("index", 0)
        gates.setdefault(index, node.output_tensors[0])
    if sorted(gates) != list(range(controller.num_gated_layers)):
        raise ValueError(
            f"GateController '{controller.name}' serves {controller.num_gated_layers} gated layers "
            f"but the graph of model '{model.name}' calls it for indices {sorted(gates)}."
        )
    return [gates[i] for i in sorted(gates)]


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
