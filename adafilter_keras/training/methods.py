"""The methods the harness compares, all on the same backbone, head and data."""

import keras
import numpy as np
from keras import ops

from adafilter_keras.backbones.models import build_backbone
from adafilter_keras.layers.settings import DEFAULTS as GATE_DEFAULTS
from adafilter_keras.training.config import GATE_FIELDS
from adafilter_keras.wrapping import wrap

HEAD = "head"


@keras.saving.register_keras_serializable(package="adafilter_keras")
class L2SP(keras.regularizers.Regularizer):
    """`strength / 2 * ||w - reference||^2` (L2-SP, Li et al. 2018); plain L2 without a reference.

    The reference (the pre-trained weights) is not part of the config: a saved model keeps the
    penalty's strength only, which matters for training, not for inference.
    """

    def __init__(self, strength, reference=None):
        self.strength = float(strength)
        self.reference = None if reference is None else np.array(reference, copy=True)

    def __call__(self, x):
        if self.reference is not None:
            x = x - ops.convert_to_tensor(self.reference, dtype=x.dtype)
        return 0.5 * self.strength * ops.sum(ops.square(x))

    def get_config(self):
        return {"strength": self.strength}


def build_model(config, num_classes):
    """Builds the model of `config.method`: the backbone with a new `Dense` head, then the method.

    Returns:
        A functional model mapping `(image_size, image_size, 3)` images to logits.
    """
    shape = (config.image_size, config.image_size, 3)
    backbone = build_backbone(config.backbone, config.resolved_weights, shape)
    inputs = keras.Input(shape, name="images")
    features = backbone(inputs)
    # The head stays float32 under mixed precision, so the logits and loss are computed in full.
    outputs = keras.layers.Dense(num_classes, name=HEAD, dtype="float32")(features)
    model = keras.Model(inputs, outputs, name=f"{config.method}_{backbone.name}")
    return apply_method(
        model,
        backbone,
        config.method,
        seed=config.seed,
        l2sp_alpha=config.l2sp_alpha,
        l2sp_beta=config.l2sp_beta,
        **{name: getattr(config, name) for name in GATE_FIELDS},
    )


def apply_method(
    model,
    backbone,
    method,
    *,
    seed=None,
    l2sp_alpha=0.01,
    l2sp_beta=0.01,
    random_rate=None,
    **gate_settings,
):
    """Turns `model` (`backbone` with a new `Dense` head named `head`) into `method`'s model.

    `finetune` returns `model` as it is; `feature_extraction` freezes `backbone`; `l2sp` adds its
    penalties; `adafilter`, `stochastic` and `block` return `wrap(model, ...)` with
    `gate_settings` (wrap()'s gate arguments) and the method's policy and granularity.
    `stochastic` draws its random gates at `random_rate`, by default the learned gates'
    starting rate (`initial_rate`), so that it is the ablation of the learned policy alone.
    """
    if random_rate is None:
        random_rate = gate_settings.get("initial_rate", GATE_DEFAULTS.initial_rate)
    if method == "feature_extraction":
        backbone.trainable = False
    elif method == "l2sp":
        _add_l2sp(backbone, model.get_layer(HEAD), l2sp_alpha, l2sp_beta)
    elif method in ("adafilter", "stochastic", "block"):
        model = wrap(
            model,
            seed=seed,
            policy="random" if method == "stochastic" else "learned",
            random_rate=random_rate,
            granularity="block" if method == "block" else "filter",
            **gate_settings,
        )
    return model


def _add_l2sp(backbone, head, alpha, beta):
    for variable in backbone.trainable_variables:
        if len(variable.shape) >= 2:  # kernels
            variable.regularizer = L2SP(alpha, reference=ops.convert_to_numpy(variable))
    head.kernel.regularizer = L2SP(beta)
