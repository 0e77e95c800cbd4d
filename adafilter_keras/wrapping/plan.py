"""What `wrap()` rewrites: the targeted convolutions, their order, their BNs; every check.

`plan(model, targets, exclude)` walks the model's graph (and its nested functional models),
selects the convolutions to gate in controller order, pairs each with the BatchNormalization
that directly and only consumes it, and runs every check before anything is built: a model
that cannot be wrapped is refused untouched.
"""

import dataclasses
import warnings

import keras

from adafilter_keras.wrapping import targets as target_selection
from adafilter_keras.wrapping.graph import FunctionalGraph, is_functional, sublayers
from adafilter_keras.wrapping.targets import describe


@dataclasses.dataclass
class Plan:
    """What to rewrite, found and checked before anything is built."""

    owner: keras.Model  # the (sub)model whose graph holds the gated convs
    path: set  # ids of the models from the top model down to the owner
    convs: list  # the gated Conv2D layers, in controller order
    paired_bn: dict  # id(conv) -> the BatchNormalization that becomes its GatedBatchNorm
    copies: dict  # id(layer or op) -> its fresh copy, for everything on the path not rewritten


def as_functional(model):
    """`model` as a functional model (a Sequential one becomes one); refuses subclassed models."""
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                f"Sequential model '{model.name}' has no defined input. Start it with "
                "keras.Input(shape) (or build it) before wrapping."
            )
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not is_functional(model):
        raise TypeError(
            f"wrap() needs a functional Keras model (built from keras.Input), whose graph it can "
            f"rewrite. Model '{getattr(model, 'name', model)}' of type {type(model).__name__} is "
            "subclassed (its graph lives in Python code). Rebuild it with the functional API, "
            "or assemble it from AdaFilterConv2D / GatedBatchNorm / GateController yourself."
        )
    return model


def plan(model, targets, exclude):
    """Finds what to rewrite and runs every check, building nothing.

    Args:
        model: A functional `keras.Model` (see `as_functional`).
        targets: `wrap()`'s `targets`.
        exclude: `wrap()`'s `exclude`.

    Returns:
        A `Plan`.

    Raises:
        ValueError: If the model cannot be wrapped as asked (the message says why).
    """
    graphs = {}  # id(model) -> FunctionalGraph, for the top model and every nested functional one
    parents = {}  # id(nested model) -> the model that calls it
    owners = {}  # id(layer) -> the model whose graph calls it
    candidates = []

    def visit(current):
        graph = graphs[id(current)] = FunctionalGraph(current)
        for layer in graph.layers():
            owners[id(layer)] = current
            if not isinstance(layer, keras.layers.Layer):
                continue  # a Keras op (`keras.ops.pad(x)` in the graph): copied, never gated
            candidates.append(layer)
            if is_functional(layer) and id(layer) not in graphs:
                parents[id(layer)] = current
                visit(layer)

    visit(model)
    searched = f"model '{model.name}'" + (" and its nested models" if len(graphs) > 1 else "")
    convs = target_selection.select(candidates, targets, exclude, where=searched)
    if targets is None:
        _warn_about_hidden_convs(candidates)

    owner_ids = {id(owners[id(conv)]) for conv in convs}
    if len(owner_ids) > 1:
        places = sorted({f"'{owners[id(conv)].name}'" for conv in convs})
        raise ValueError(
            "The targeted convolutions lie in more than one (nested) model: "
            f"{', '.join(places)}. One controller serves one model graph: choose `targets` "
            "(or `exclude`) so that they all lie in one of them."
        )
    owner = owners[id(convs[0])]
    graph = graphs[id(owner)]
    path, current = {id(owner)}, owner
    while id(current) in parents:
        parent = parents[id(current)]
        if len(graphs[id(parent)].nodes_of(current)) != 1:
            raise ValueError(
                f"Nested model '{current.name}' is called at more than one place in model "
                f"'{parent.name}' (a shared model); wrap() cannot give each call its own gates."
            )
        path.add(id(parent))
        current = parent

    paired_bn = {}
    for conv in convs:
        _check_conv(conv, graph)
        bn = _following_batch_norm(conv, graph)
        if bn is not None:
            paired_bn[id(conv)] = bn
    rewritten = path | {id(conv) for conv in convs} | {id(bn) for bn in paired_bn.values()}
    copies = {
        id(layer): _copy_of(layer)
        for model_id in path
        for layer in graphs[model_id].layers()
        if id(layer) not in rewritten
    }
    return Plan(owner=owner, path=path, convs=convs, paired_bn=paired_bn, copies=copies)


def _warn_about_hidden_convs(layers):
    """Warns when layers of the graph hold Conv2D layers of their own, which wrap() cannot see."""
    holders, hidden = [], 0
    for layer in layers:
        if not is_functional(layer):
            count = sum(isinstance(sub, keras.layers.Conv2D) for sub in sublayers(layer))
            if count:
                holders.append(describe(layer))
                hidden += count
    if holders:
        more = f", ... ({len(holders)} layers in all)" if len(holders) > 5 else ""
        warnings.warn(
            f"{hidden} Conv2D layers inside {', '.join(holders[:5])}{more} stay plain "
            "convolutions: wrap() gates the Conv2D layers of the functional graph, not those "
            "inside a subclassed layer (or a nested Sequential model). To gate them, build the "
            "model from plain Keras layers with the functional API.",
            stacklevel=4,
        )


def _copy_of(operation):
    """A new instance of a layer, nested model or Keras op, without weights yet."""
    if not isinstance(operation, keras.layers.Layer):
        # A Keras op called on symbolic tensors (keras-hub's ResNet V2 pads with
        # `keras.ops.pad(x, constant_values=-inf)`). Ops hold no state, so when one cannot be
        # re-created from its config the new model calls the same instance.
        try:
            return type(operation).from_config(operation.get_config())
        except Exception:
            return operation
    try:
        if isinstance(operation, keras.Model):
            return keras.models.clone_model(operation)
        return type(operation).from_config(operation.get_config())
    except Exception as error:
        reason = " ".join(str(error).strip().split("\n\n")[0].split())  # Keras's first paragraph
        raise ValueError(
            f"wrap() copies every layer it does not gate from its config, and layer "
            f"{describe(operation)} could not be re-created that way "
            f"({type(error).__name__}: {reason}). Give its class a get_config() that returns its "
            "constructor arguments (and register it with "
            "keras.saving.register_keras_serializable), or rebuild the model without it."
        ) from error


def _check_conv(conv, graph):
    nodes = graph.nodes_of(conv)
    if len(nodes) != 1:
        raise ValueError(
            f"Layer {describe(conv)} is called at {len(nodes)} places in model "
            f"'{graph.model.name}' (a shared layer); wrap() cannot give each call its own gates. "
            "Exclude it with `exclude=[...]`."
        )
    config = conv.get_config()
    problems = []
    if config.get("groups", 1) != 1:
        problems.append(f"groups={config['groups']}")
    if conv.data_format != "channels_last":
        problems.append(f"data_format={conv.data_format!r}")
    for name in ("kernel_constraint", "bias_constraint"):
        if config.get(name) is not None:
            problems.append(f"{name}={getattr(conv, name)!r}")
    if getattr(conv, "lora_enabled", False):
        problems.append("LoRA enabled")
    if problems:
        raise ValueError(
            f"Layer {describe(conv)} cannot be gated: AdaFilterConv2D supports channels_last, "
            f"groups=1 and no weight constraints. Exclude it with `exclude=[{conv.name!r}]`. "
            f"Received: {', '.join(problems)}"
        )


def _following_batch_norm(conv, graph):
    """The BatchNormalization that directly and only consumes `conv`'s output, if supported."""
    (node,) = graph.nodes_of(conv)
    children = graph.children(node)
    if len(children) != 1:
        return None
    bn = children[0].operation
    if not isinstance(bn, keras.layers.BatchNormalization) or len(graph.nodes_of(bn)) != 1:
        return None
    args = children[0].arguments
    if len(args.keras_tensors) != 1 or bn.renorm or bn.beta_constraint or bn.gamma_constraint:
        return None
    if bn.axis not in (-1, len(node.outputs[0].shape) - 1):
        return None
    return bn
