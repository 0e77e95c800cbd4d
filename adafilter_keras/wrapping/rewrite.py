"""How `wrap()` rebuilds the graph: gated layers in, every other layer copied with its weights."""

import re
import warnings

import keras

from adafilter_keras.layers import AdaFilterConv2D, GateController, GatedBatchNorm
from adafilter_keras.wrapping.graph import FunctionalGraph, call_arguments

_BLOCK_NAME = re.compile(r"^(.+_block\d+)_")


class Rewriter:
    """Rebuilds the models on the path to the owner; clones everything else with its weights.

    Args:
        plan: The `plan.Plan` of the model.
        settings: The `GateSettings` of the new gated layers.
        seed: Optional int seed of the gate noise.
    """

    def __init__(self, plan, settings, seed):
        self.plan = plan
        self.settings = settings
        self.seed = seed
        self.blocks = []  # controller entries: (name, [convs]) in controller order
        for conv in plan.convs:
            name = conv.name
            if settings.granularity == "block":
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
                    layer, pretrained_branch=self.settings.pretrained_bn
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
        settings = self.settings
        per_filter = settings.granularity == "filter"
        taken = {layer.name for layer in model.layers}
        name, suffix = "gate_controller", 1
        while name in taken:
            name, suffix = f"gate_controller_{suffix}", suffix + 1
        return GateController(
            filters=[conv.filters if per_filter else 1 for conv in firsts],
            input_channels=[conv.kernel.shape[2] for conv in firsts],
            units=settings.controller_units,
            temperature=settings.temperature,
            seed=self.seed,
            layer_names=[name for name, _ in self.blocks],
            policy=settings.policy,
            random_rate=settings.random_rate,
            initial_rate=settings.initial_rate,
            gradient_scale=settings.gradient_scale,
            inference=settings.inference,
            warmup_steps=settings.gate_warmup_steps,
            normalize_inputs=settings.normalize_controller_inputs,
            normalize_gradient=settings.normalize_controller_gradient,
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
