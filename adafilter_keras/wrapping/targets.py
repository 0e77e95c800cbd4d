"""Which convolutions `wrap()` gates: names, regular expressions or a predicate, with excludes."""

import re

import keras


def describe(layer):
    """`'name' (ClassName)` for error messages."""
    return f"'{layer.name}' ({type(layer).__name__})"


def select(layers, targets, exclude, *, where):
    """Returns the `Conv2D` layers chosen by `targets` minus those chosen by `exclude`.

    Args:
        layers: The candidate layers, in controller order.
        targets: None (every `Conv2D`), or a name, regular expression or callable, or a list of
            these. A string equal to a layer's name selects that layer; any other string is a
            regular expression matched in full against the names of the `Conv2D` layers. A callable
            is called on every layer and selects those for which it returns True.
        exclude: The same forms as `targets`; None excludes nothing.
        where: Words naming the searched model(s), for error messages.

    Returns:
        The selected layers, in the order of `layers`.

    Raises:
        ValueError: If a name or predicate picks a layer that is not a `Conv2D`, or nothing is
            selected.
    """
    if targets is None:
        chosen = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    else:
        chosen = _match(layers, targets, "targets")
        wrong = [layer for layer in chosen if not isinstance(layer, keras.layers.Conv2D)]
        if wrong:
            raise ValueError(
                "`targets` must select keras.layers.Conv2D layers only (depthwise, separable and "
                "transposed convolutions are not gated). These selected layers are not Conv2D: "
                f"{', '.join(describe(layer) for layer in wrong)}. Received: targets={targets!r}"
            )
    if exclude is not None:
        excluded = {id(layer) for layer in _match(layers, exclude, "exclude")}
        chosen = [layer for layer in chosen if id(layer) not in excluded]
    if not chosen:
        convs = [layer.name for layer in layers if isinstance(layer, keras.layers.Conv2D)]
        listed = ", ".join(convs[:20]) + (f", ... ({len(convs)} in all)" if len(convs) > 20 else "")
        raise ValueError(
            f"No Conv2D layer to gate in {where}: `targets`={targets!r} with `exclude`={exclude!r} "
            f"selected nothing. The Conv2D layers searched were: {listed or 'none'}."
        )
    return chosen


def _match(layers, spec, argument):
    specs = spec if isinstance(spec, (list, tuple, set)) else [spec]
    chosen = {}
    for item in specs:
        if callable(item):
            hits = [layer for layer in layers if item(layer)]
        elif isinstance(item, (str, re.Pattern)):
            hits = _match_name(layers, item)
        else:
            raise TypeError(
                f"`{argument}` entries must be layer names, regular expressions or callables. "
                f"Received: {argument}={spec!r}"
            )
        if not hits:
            names = ", ".join(layer.name for layer in layers[:20])
            raise ValueError(
                f"`{argument}` entry {item!r} matches no layer. Layers searched: {names}"
                + (f", ... ({len(layers)} in all)" if len(layers) > 20 else "")
            )
        chosen.update((id(layer), layer) for layer in hits)
    return [layer for layer in layers if id(layer) in chosen]


def _match_name(layers, pattern):
    if isinstance(pattern, str):
        exact = [layer for layer in layers if layer.name == pattern]
        if exact:
            return exact
    try:
        regex = re.compile(pattern)
    except re.error:
        return []
    return [
        layer
        for layer in layers
        if isinstance(layer, keras.layers.Conv2D) and regex.fullmatch(layer.name)
    ]
