"""`wrap()`: rewrite a pre-trained functional CNN into an AdaFilter model."""

import warnings

from adafilter_keras.layers.settings import GateSettings
from adafilter_keras.wrapping import plan as planning
from adafilter_keras.wrapping.rewrite import Rewriter


def wrap(model, *, targets=None, exclude=None, seed=None, settings=None, **changes):
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
        seed: Optional int seed of the gate noise.
        settings: Optional `GateSettings` to start from; default `GateSettings()`, the
            recommended settings.
        **changes: Gate settings by name, applied over `settings`: `controller_units`,
            `temperature`, `pretrained_bn`, `policy`, `random_rate`, `granularity`,
            `initial_rate`, `gradient_scale`, `normalize_controller_gradient`, `inference`,
            `gate_warmup_steps`, `normalize_controller_inputs`. `GateSettings` documents each
            one, its default and which values are kept only as ablations.

    Returns:
        A new functional `keras.Model` with the same inputs, outputs and name.

    Raises:
        TypeError: If `model` is not a functional or Sequential Keras model, `settings` is not a
            `GateSettings`, or a keyword is not a gate setting (the message lists them).
        ValueError: If a targeted layer is shared, unsupported or not a `Conv2D`, nothing is
            targeted, a layer that is not gated cannot be copied from its config, or a gate
            setting has a value it does not accept. All checks run before the new model is built.
    """
    if settings is None:
        settings = GateSettings()
    elif not isinstance(settings, GateSettings):
        raise TypeError(
            "`settings` must be an adafilter_keras.GateSettings or None. "
            f"Received: settings={settings!r} of type {type(settings).__name__}"
        )
    settings = settings.replace(**changes) if changes else settings
    seed = _check_seed(seed)
    model = planning.as_functional(model)
    plan = planning.plan(model, targets, exclude)
    if getattr(model, "preprocessor", None) is not None:
        warnings.warn(
            f"Model '{model.name}' ({type(model).__name__}) has a preprocessor, which is not part "
            "of its graph: the model wrap() returns is a plain keras.Model that takes the "
            "preprocessed inputs. Apply the original model's `preprocessor` to your data "
            "yourself (in the tf.data pipeline, for example).",
            stacklevel=2,
        )
    return Rewriter(plan, settings, seed).rebuild(model)


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
    return seed
