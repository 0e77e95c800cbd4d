"""Looking inside a model that uses AdaFilter layers."""

import keras

from adafilter_keras.layers.gate_controller import GateController


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


def gate_model(model):
    """Builds a model that maps `model`'s inputs to the gates of every gated layer.

    The returned functional model shares `model`'s layers and weights; its outputs are the gate
    tensors, shape `(batch, filters[i])`, in controller order. Call it with `training=False` (the
    default of `predict`) for the deterministic inference gates.

    Args:
        model: A functional model whose graph calls a `GateController` (directly, not only inside a
            nested model).

    Returns:
        A `keras.Model` with one output per gated layer.
    """
    controller = find_controller(model)
    gates = {}
    for node in controller._inbound_nodes:
        index = node.arguments.kwargs.get("index", 0)
        gates.setdefault(index, node.output_tensors[0])
    if sorted(gates) != list(range(controller.num_gated_layers)):
        raise ValueError(
            f"GateController '{controller.name}' serves {controller.num_gated_layers} gated layers "
            f"but the graph of model '{model.name}' calls it for indices {sorted(gates)}."
        )
    return keras.Model(model.inputs, [gates[i] for i in sorted(gates)], name=f"{model.name}_gates")


def _walk(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer)
