"""Backbones by name with their pre-trained weights; clear early errors when weights are missing.

A backbone is a `keras.applications` model name, `SmallResNet`, or a keras-hub preset (name or
local directory; `hub.py`, with the optional `keras_hub`).
"""

import os
import pathlib

import keras

from adafilter_keras.backbones import hub
from adafilter_keras.backbones.errors import WeightsUnavailableError

# keras.applications models the harness accepts, and a small one for tests and the CPU quick start.
APPLICATIONS = (
    "ResNet50",
    "ResNet101",
    "ResNet152",
    "ResNet50V2",
    "ResNet101V2",
    "ResNet152V2",
    "VGG16",
    "VGG19",
)
SMALL = "SmallResNet"
BACKBONES = (*APPLICATIONS, SMALL)


def keras_cache_dir():
    """Where `keras.applications` caches downloaded weights: `$KERAS_HOME/models`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return pathlib.Path(home) / "models"


def check_backbone(name):
    """Returns `name` if it is one of `BACKBONES` or a keras-hub preset, else raises `ValueError`.

    Looks at the name only (no download, no import of `keras_hub`): a preset name or directory
    needs `keras_hub` installed; whether the preset exists is checked when it is built.
    """
    if name in BACKBONES:
        return name
    if hub.is_preset(name):
        hub.require_keras_hub(name)
        return name
    raise ValueError(
        f"`backbone` must be one of {', '.join(BACKBONES)}, or a keras-hub preset name (such as "
        f"{hub.PRESET_EXAMPLE!r}) or local preset directory (with {hub.INSTALL_HINT}). "
        f"Received: backbone={name!r}"
    )


def build_backbone(name, weights, input_shape):
    """Builds a headless backbone with global average pooling.

    Args:
        name: One of `BACKBONES`, or a keras-hub preset name (`"resnet_50_imagenet"`), handle or
            local preset directory (`hub.build_preset_backbone`).
        weights: `"imagenet"` (for a keras-hub preset: the preset's own weights), a path to a
            weights file (`.h5` / `.weights.h5`) for this backbone without its top, or None for
            random initialisation.
        input_shape: `(height, width, 3)`.

    Returns:
        A functional `keras.Model` mapping images to pooled features.

    Raises:
        ValueError: Unknown backbone name, or a preset without keras_hub installed.
        WeightsUnavailableError: The weights cannot be loaded; the message says how to fix it.
    """
    check_backbone(name)
    if weights not in (None, "imagenet"):
        path = pathlib.Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"Weights file {str(path)!r} does not exist. Pass the path of a {name} weights "
                "file without its classification top, 'imagenet', or 'none'."
            )
        weights = str(path)
    if name not in BACKBONES:
        preset_weights = "imagenet" if weights == "imagenet" else None
        model = hub.build_preset_backbone(name, preset_weights, input_shape)
        if weights not in (None, "imagenet"):
            _load_weights(model, weights, name)
        return model
    if name == SMALL:
        if weights == "imagenet":
            raise WeightsUnavailableError(
                f"{SMALL} has no ImageNet weights; pass a weights file it saved, or 'none'."
            )
        model = small_resnet(input_shape)
        if weights:
            _load_weights(model, weights, name)
        return model
    constructor = getattr(keras.applications, name)
    try:
        return constructor(
            weights=weights, include_top=False, pooling="avg", input_shape=tuple(input_shape)
        )
    except Exception as error:  # Keras raises several types for these two failures
        text = str(error)
        if weights == "imagenet" and ("URL fetch failure" in text or "fetch" in text.lower()):
            raise WeightsUnavailableError(
                f"Could not download the ImageNet weights of {name} (no network?): {text} "
                f"Place the weights file named in that URL (the '_notop' variant) in "
                f"{keras_cache_dir()} (the Keras cache, $KERAS_HOME/models), or pass its path "
                "as weights."
            ) from None
        if weights not in (None, "imagenet"):
            raise WeightsUnavailableError(
                f"Weights file {weights!r} does not fit backbone {name} without its top: {text}"
            ) from None
        raise


def _load_weights(model, path, name):
    try:
        model.load_weights(path)
    except Exception as error:
        raise WeightsUnavailableError(
            f"Weights file {path!r} does not fit backbone {name}: {error}"
        ) from None


def small_resnet(input_shape, width=16, name="small_resnet", bn_momentum=0.99):
    """A small ResNet built the way `keras.applications` builds its models (Conv2D, BN, adds).

    Stem conv, then three stages of one bottleneck-free residual block each (projection
    shortcuts where the shape changes), then global average pooling. Block layers follow the
    `keras.applications` naming (`conv2_block1_1_conv`, ...), so block granularity finds them.
    `bn_momentum` is the momentum of every batch normalization's moving statistics.
    """
    layers = keras.layers

    def block(x, filters, stride, prefix):
        shortcut = x
        if stride != 1 or x.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=stride, name=f"{prefix}_0_conv")(x)
            shortcut = layers.BatchNormalization(
                momentum=bn_momentum, epsilon=1.001e-5, name=f"{prefix}_0_bn"
            )(shortcut)
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"{prefix}_1_conv")(x)
        y = layers.BatchNormalization(
            momentum=bn_momentum, epsilon=1.001e-5, name=f"{prefix}_1_bn"
        )(y)
        y = layers.Activation("relu", name=f"{prefix}_1_relu")(y)
        y = layers.Conv2D(filters, 3, padding="same", name=f"{prefix}_2_conv")(y)
        y = layers.BatchNormalization(
            momentum=bn_momentum, epsilon=1.001e-5, name=f"{prefix}_2_bn"
        )(y)
        y = layers.Add(name=f"{prefix}_add")([shortcut, y])
        return layers.Activation("relu", name=f"{prefix}_out")(y)

    inputs = keras.Input(tuple(input_shape))
    x = layers.Conv2D(width, 3, padding="same", name="conv1_conv")(inputs)
    x = layers.BatchNormalization(momentum=bn_momentum, epsilon=1.001e-5, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    for stage, (filters, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2)]):
        x = block(x, filters, stride, f"conv{stage + 2}_block1")
    outputs = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name=name)
