"""Read-only access to a functional model's graph: its nodes in a deterministic execution order.

Keras exposes no public graph-walking API, so this module is the one place that reads the node
structure (`_nodes_by_depth`, `_inbound_nodes`, `_outbound_nodes`, `Node.arguments`) and a layer's
tracked sub-layers (`_flatten_layers`); a change in Keras's internals is mended here.
"""

import collections

import keras


class FunctionalGraph:
    """The nodes of one functional model, in execution order.

    The order is a breadth-first walk from the model's inputs that visits the consumers of each
    node in the order they were connected (the order the layers were called when the model was
    built). For `keras.applications` ResNets it is the build order: stem first, then in each block
    the shortcut projection before convs 1, 2 and 3.

    Args:
        model: A functional `keras.Model`.
    """

    def __init__(self, model):
        self.model = model
        self._nodes = [n for nodes in model._nodes_by_depth.values() for n in nodes]
        self._ids = {id(n) for n in self._nodes}
        self.nodes = self._execution_order()

    def parents(self, node):
        """The nodes of this model whose outputs `node` consumes, without repeats."""
        return _unique(p for p in node.parent_nodes if id(p) in self._ids)

    def children(self, node):
        """The nodes of this model that consume an output of `node`, in connection order."""
        return _unique(
            child
            for child in node.operation._outbound_nodes
            if id(child) in self._ids and any(p is node for p in child.parent_nodes)
        )

    def nodes_of(self, layer):
        """The nodes of this model at which `layer` is called."""
        return [n for n in self.nodes if n.operation is layer]

    def layers(self):
        """The distinct layers called in this model, in execution order (inputs excluded)."""
        return _unique(n.operation for n in self.nodes if not n.is_input)

    def _execution_order(self):
        waiting = {id(n): len(self.parents(n)) for n in self._nodes}
        by_input = {id(n.outputs[0]): n for n in self._nodes if n.is_input}
        queue = collections.deque(by_input[id(x)] for x in self.model.inputs)
        order = []
        while queue:
            node = queue.popleft()
            order.append(node)
            for child in self.children(node):
                waiting[id(child)] -= 1
                if waiting[id(child)] == 0:
                    queue.append(child)
        if len(order) != len(self._nodes):
            raise ValueError(
                f"Could not order the graph of model '{self.model.name}': "
                f"{len(self._nodes) - len(order)} of its nodes are not reachable from its inputs."
            )
        return order


def sublayers(layer):
    """Every layer tracked inside `layer` (its attributes, recursively), without `layer` itself."""
    return list(layer._flatten_layers(include_self=False, recursive=True))


def is_functional(model):
    """Whether `model` is a functional model (built from `keras.Input` tensors), not subclassed."""
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")


def call_arguments(node, tensor_map):
    """The node's call arguments with each input tensor replaced through `tensor_map`."""
    return node.arguments.fill_in(tensor_map)


def _unique(items):
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out
