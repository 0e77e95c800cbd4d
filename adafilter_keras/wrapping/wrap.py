"""`wrap()`: rewrite a pre-trained functional CNN into an AdaFilter model."""

import dataclasses
import re
import warnings

import keras

from adafilter_keras import validation
from adafilter_keras.layers import AdaFilterConv2D, GateController, GatedBatchNorm
from adafilter_keras.layers.gate_controller import POLICIES
from adafilter_keras.layers.gate_sampling import INFERENCE_RULES
from adafilter_keras.layers.gated_batch_norm import PRETRAINED_BRANCH_MODES
from adafilter_keras.wrapping import targets as target_selection
from adafilter_keras.wrapping.graph import (
    FunctionalGraph,
    call_arguments,
    is_functional,
    sublayers,
)
from adafilter_keras.wrapping.targets import describe

GRANULARITIES = ("filter", "block")

# The defaults of the gate settings, chosen on validation accuracy across the transfer benchmark's
# tasks and seeds (research/controller_defaults). One place, so wrap(), the harness and the docs
# agree.
DEFAULTS = dict(
    temperature=1.0,
    pretrained_bn="adapt",
    initial_rate=0.5,
    gradient_scale=300.0,
    inference="expected",
    gate_warmup_steps=0,
    normalize_controller_inputs=True,
    normalize_controller_gradient=False,
)
_BLOCK_NAME = re.compile(r"^(.+_block\d+)_")


def wrap(
    model,
    *,
    targets=None,
    exclude=None,
    controller_units=64,
    temperature=DEFAULTS["temperature"],
    pretrained_bn=DEFAULTS["pretrained_bn"],
    seed=None,
    policy="learned",
    random_rate=0.5,
    granularity="filter",
    initial_rate=DEFAULTS["initial_rate"],
    gradient_scale=DEFAULTS["gradient_scale"],
    inference=DEFAULTS["inference"],
    gate_warmup_steps=DEFAULTS["gate_warmup_steps"],
    normalize_controller_inputs=DEFAULTS["normalize_controller_inputs"],
    normalize_controller_gradient=DEFAULTS["normalize_controller_gradient"],
):
    """Turns a pre-trained functional CNN into an AdaFilter model.

    Returns a new functional model in which each targeted `Conv2D` is an `AdaFilterConv2D` (frozen
    pre-trained kernel plus a trainable fine-tuned copy, both equal to the original kernel), each
    `BatchNormalization` that directly and only consumes a targeted conv is a `GatedBatchNorm`
    (both branches copies of the original), a targeted conv with no such BN mixes its branches
    itself, and one `GateController` computes the gates, its LSTM state threaded through the
    gated layers in controller order. Every other layer is a copy of the original with the same
    weights and `trainable` flag. Right after wrapping, the new model's inference outputs equal the
    original's.

    Controller order: a breadth-first walk of the graph from the inputs that visits the consumers
    of each layer in the order they were connected, i.e. the order in which the layers were called
    when the model was built. For `keras.applications` ResNets: the stem first, then in each block
    the shortcut projection (if any) before convs 1, 2, 3. `gated_layers(model)` lists it.

    The model passed in is not modified. A backbone nested in a functional model (the
    "backbone + new head" pattern) is wrapped in place; if the outer model called it with
    `training=False`, that argument is dropped (with a warning) so the gates and the fine-tuned
    batch normalizations can train. Keras ops in the graph (`keras.ops.pad(x)` called on a
    symbolic tensor) are carried over as they are.

    Subclasses of functional models with their own constructor, such as keras-hub's
    `ResNetBackbone` and `ResNetImageClassifier`, come back as plain functional `keras.Model`s
    (top level and nested) with the same name, layers and outputs: the new graph cannot be
    re-created from the subclass's constructor arguments. What lives outside the graph (a
    keras-hub task's `preprocessor`, `from_preset` / `save_to_preset`, a task's `compile()`
    defaults) is not carried over; a model with a preprocessor gets a warning.

    Args:
        model: A built functional (or Sequential) `keras.Model`.
        targets: Which convolutions to gate. None: every `Conv2D`. Otherwise a layer name, a
            regular expression (matched in full against `Conv2D` names), a callable on the layer,
            or a list of these.
        exclude: Convolutions not to gate, in the same forms as `targets`.
        controller_units: Width of the controller's projections and LSTM cell.
        temperature: Temperature of the straight-through Gumbel gates (> 0).
        pretrained_bn: `"frozen"` or `"adapt"`: the mode of the pre-trained branch of every
            `GatedBatchNorm` (see `GatedBatchNorm`).
        seed: Optional int seed of the gate noise.
        policy: `"learned"` (the gate controller) or `"random"`: gates drawn at `random_rate`
            in training and fixed at `random_rate` at inference, the stochastic fine-tuning
            baseline.
        random_rate: Probability of the fine-tuned branch under `policy="random"`, or a list
            of one probability per gated layer in controller order.
        granularity: `"filter"` (one gate per example and filter) or `"block"` (one gate per
            example and residual block, shared by all the block's convolutions, as in SpotTune;
            blocks are recognised by the `keras.applications` naming `..._block<N>_...`, and any
            other conv is a block of its own).
        initial_rate: Initial probability that a learned gate picks the fine-tuned filter.
        gradient_scale: Factor on the gradient that reaches the controller (its learning rate
            relative to the filters', under SGD, whatever optimizer the model is compiled with;
            an optimizer that normalizes each update, such as Adam, largely ignores it).
        inference: `"expected"` (gate = `sigmoid(logit)`, the mean of the training gate) or
            `"threshold"` (gate = `1[logit > 0]`) at inference.
        gate_warmup_steps: Training steps during which every learned gate is 1 (plain fine-tuning)
            while the controller already learns.
        normalize_controller_inputs: If True, the controller standardizes each pooled input
            channel over the batch (a `BatchNormalization` without scale and offset; moving
            statistics at inference), so its gates respond to how an example differs from the
            others rather than to what they share. Without it the gates learn a per-filter
            rate that does not depend on the input (research/input_dependent_gates).
        normalize_controller_gradient: If True, the gradient reaching each gated layer's gate
            logits is normalized so that the controller head's bias receives a gradient of RMS
            `gradient_scale` at every step, whatever the backbone's width or the size of its
            loss gradient (`GateController(normalize_gradient=True)`).

    Returns:
        A new functional `keras.Model` with the same inputs, outputs and name.

    Raises:
        TypeError: If `model` is not a functional or Sequential Keras model.
        ValueError: If a targeted layer is shared, unsupported or not a `Conv2D`, nothing is
            targeted, or a layer that is not gated cannot be copied from its config. All checks
            run before the new model is built.
    """
    options = _Options(
        units=validation.positive_int("controller_units", controller_units),
        temperature=validation.positive_float("temperature", temperature),
        pretrained_bn=validation.one_of("pretrained_bn", pretrained_bn, PRETRAINED_BRANCH_MODES),
        seed=_check_seed(seed),
        policy=validation.one_of("policy", policy, POLICIES),
        random_rate=validation.rates("random_rate", random_rate),
        granularity=validation.one_of("granularity", granularity, GRANULARITIES),
        gate_options=_gate_options(
            initial_rate,
            gradient_scale,
            inference,
            gate_warmup_steps,
            normalize_controller_inputs,
            normalize_controller_gradient,
        ),
    )
    model = _as_functional(model)
    plan = _plan(model, targets, exclude)
    if getattr(model, "preprocessor", None) is not None:
        warnings.warn(
            f"Model '{model.name}' ({type(model).__name__}) has a preprocessor, which is not part "
            "of its graph: the model wrap() returns is a plain keras.Model that takes the "
            "preprocessed inputs. Apply the original model's `preprocessor` to your data "
            "yourself (in the tf.data pipeline, for example).",
            stacklevel=2,
        )
    return _Rewriter(plan, options).rebuild(model)


@dataclasses.dataclass(frozen=True)
class _Options:
    units: int
    temperature: float
    pretrained_bn: str
    seed: int | None
    policy: str
    random_rate: float | list
    granularity: str
    gate_options: dict


def check_gate_settings(settings):
    """Checks a dict of `wrap()`'s gate settings (the keys of `DEFAULTS`) as `wrap()` would.

    For callers that pass such settings on later (the benchmark's `--wrap-settings`), so that a
    bad value is refused before any work starts.

    Returns:
        The same keys, each value as `wrap()` holds it (`{"gradient_scale": 300}` gives
        `300.0`), so that equal settings compare and print alike.

    Raises:
        ValueError: If a value is not one `wrap()` accepts.
    """
    resolved = {**DEFAULTS, **settings}
    options = _gate_options(
        resolved["initial_rate"],
        resolved["gradient_scale"],
        resolved["inference"],
        resolved["gate_warmup_steps"],
        resolved["normalize_controller_inputs"],
        resolved["normalize_controller_gradient"],
    )
    checked = dict(
        temperature=validation.positive_float("temperature", resolved["temperature"]),
        pretrained_bn=validation.one_of(
            "pretrained_bn", resolved["pretrained_bn"], PRETRAINED_BRANCH_MODES
        ),
        normalize_controller_inputs=options.pop("normalize_inputs"),
        normalize_controller_gradient=options.pop("normalize_gradient"),
        gate_warmup_steps=options.pop("warmup_steps"),
        **options,
    )
    return {key: checked[key] for key in settings}


def _gate_options(
    initial_rate, gradient_scale, inference, gate_warmup_steps, normalize_inputs, normalize_gradient
):
    return dict(
        normalize_inputs=validation.boolean("normalize_controller_inputs", normalize_inputs),
        normalize_gradient=validation.boolean("normalize_controller_gradient", normalize_gradient),
        initial_rate=validation.rate("initial_rate", initial_rate),
        gradient_scale=validation.positive_float("gradient_scale", gradient_scale),
        inference=validation.one_of("inference", inference, INFERENCE_RULES),
        warmup_steps=validation.non_negative_int("gate_warmup_steps", gate_warmup_steps),
    )


@dataclasses.dataclass
class _Plan:
    owner: keras.Model  # the (sub)model whose graph holds the gated convs
    path: set  # ids of the models from the top model down to the owner
    convs: list  # the gated Conv2D layers, in controller order
    paired_bn: dict  # id(conv) -> the BatchNormalization that becomes its GatedBatchNorm
    copies: dict  # id(layer or op) -> its fresh copy, for everything on the path not rewritten


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
    return seed


def _as_functional(model):
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


def _plan(model, targets, exclude):
    """Finds what to rewrite and runs every check, building nothing."""
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
    return _Plan(owner=owner, path=path, convs=convs, paired_bn=paired_bn, copies=copies)


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


class _Rewriter:
    """Rebuilds the models on the path to the owner; clones everything else with its weights."""

    def __init__(self, plan, options):
        self.plan = plan
        self.options = options
        self.blocks = []  # controller entries: (name, [convs]) in controller order
        for conv in plan.convs:
            name = conv.name
            if options.granularity == "block":
                match = _BLOCK_NAME.match(conv.name)
                name = match.group(1) if match else conv.name
            if not self.blocks or self.blocks[-1][0] != name:
                self.blocks.append((name, []))
            self.blocks[-1][1].append(conv)
        self.gated = {
            id(conv): index for index, (_, convs) in enumerate(self.blocks) for conv in convs
        }
        self.bn_to_conv = {id(bn): conv_id for conv_id, bn in plan.paired_bn.items()}
        self.weights_copied = set()  # ids of the original layers whose copies have weights

    def rebuild(self, model):
        graph = FunctionalGraph(model)
        inputs = keras.tree.map_structure(
            lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name), model.input
        )
        tensors = {
            id(old): new for old, new in zip(model.inputs, keras.tree.flatten(inputs), strict=True)
        }
        controller = self._controller(model) if model is self.plan.owner else None
        state, gates, block_gates = None, {}, {}
        for node in graph.nodes:
            if node.is_input:
                continue
            layer = node.operation
            args, kwargs = call_arguments(node, tensors)
            if id(layer) in self.gated:
                index = self.gated[id(layer)]
                if index not in block_gates:
                    gate, hidden, cell = controller(args[0], states=state, index=index)
                    state = [hidden, cell]
                    block_gates[index] = gate
                gate = block_gates[index]
                conv = AdaFilterConv2D.from_conv2d(layer)
                if id(layer) in self.plan.paired_bn:
                    # Both branches go, as one pair, to the GatedBatchNorm that replaces the
                    # conv's only consumer.
                    gates[id(layer)] = gate
                    tensors[id(node.outputs[0])] = conv(*args, **kwargs)
                    continue
                outputs = conv(*args, gate, **kwargs)
            elif id(layer) in self.bn_to_conv:
                bn = GatedBatchNorm.from_batch_normalization(
                    layer, pretrained_branch=self.options.pretrained_bn
                )
                training = {k: v for k, v in kwargs.items() if k == "training"}
                outputs = bn([*args[0], gates[self.bn_to_conv[id(layer)]]], **training)
            elif id(layer) in self.plan.path:
                if kwargs.get("training") is False:
                    warnings.warn(
                        f"Model '{model.name}' calls the wrapped backbone '{layer.name}' with "
                        "training=False; wrap() drops that argument so the gates and the "
                        "fine-tuned batch normalizations train with the model.",
                        stacklevel=3,
                    )
                    kwargs.pop("training")
                outputs = self.rebuild(layer)(*args, **kwargs)
            else:
                outputs = self._copy_call(layer, args, kwargs)
            for old, new in zip(node.outputs, keras.tree.flatten(outputs), strict=True):
                tensors[id(old)] = new
        outputs = keras.tree.map_structure(lambda x: tensors[id(x)], model.output)
        return keras.Model(inputs, outputs, name=model.name)

    def _controller(self, model):
        firsts = [convs[0] for _, convs in self.blocks]
        per_filter = self.options.granularity == "filter"
        taken = {layer.name for layer in model.layers}
        name, suffix = "gate_controller", 1
        while name in taken:
            name, suffix = f"gate_controller_{suffix}", suffix + 1
        return GateController(
            filters=[conv.filters if per_filter else 1 for conv in firsts],
            input_channels=[conv.kernel.shape[2] for conv in firsts],
            units=self.options.units,
            temperature=self.options.temperature,
            seed=self.options.seed,
            layer_names=[name for name, _ in self.blocks],
            policy=self.options.policy,
            random_rate=self.options.random_rate,
            **self.options.gate_options,
            dtype=firsts[0].dtype_policy,
            name=name,
        )

    def _copy_call(self, layer, args, kwargs):
        copy = self.plan.copies[id(layer)]
        outputs = copy(*args, **kwargs)
        if id(layer) not in self.weights_copied and isinstance(layer, keras.layers.Layer):
            # A shared layer is called at several nodes: its copy gets the weights once, after
            # its first call has built it.
            self.weights_copied.add(id(layer))
            copy.set_weights(layer.get_weights())
            copy.trainable = layer.trainable
            if isinstance(layer, keras.Model):
                for copied, original in zip(copy.layers, layer.layers, strict=True):
                    copied.trainable = original.trainable
        return outputs
