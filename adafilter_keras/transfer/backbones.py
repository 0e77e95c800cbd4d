"""The benchmark's backbones: small models of several kinds, each pre-trained on a task's source.

A default of `wrap()` is a claim about every model a user brings, so the benchmark runs it on
backbones that differ in width, depth and kind: residual with batch normalization at three
widths, a plain VGG-style stack with batch normalization, a stack without any batch
normalization, and `keras.applications.ResNet50V2`. Every one keeps the batch-normalization
momentum it is built with (Keras's default, 0.99), as a user's pre-trained model does.

A backbone is named on the command line as `NAME@PIXELS` (`resnet32@32`): the backbone and the
image side it is pre-trained and fine-tuned at.
"""

import dataclasses

import keras

from adafilter_keras.backbones.models import small_resnet

# The backbone of the benchmark's 0.1 tables: `SmallResNet` of `BenchmarkSettings.width` with
# every batch normalization's momentum set to 0.9. Its runs keep their keys (no `backbone` field).
LEGACY = "small_resnet_bn09"
LEGACY_BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One benchmark backbone.

    Attributes:
        name: Its name in `BACKBONES`.
        description: What it is, in a few words (tables and `--help`).
        min_size: The smallest image side it accepts.
    """

    name: str
    description: str
    min_size: int = 8

    def build(self, image_size, width=16):
        """The headless backbone (images -> pooled features), randomly initialised.

        Args:
            image_size: Image side in pixels.
            width: `SmallResNet`'s width, for `LEGACY` only.
        """
        shape = (image_size, image_size, 3)
        if self.name == LEGACY:
            return small_resnet(shape, width=width, bn_momentum=LEGACY_BN_MOMENTUM)
        return _BUILDERS[self.name](shape)


def _vgg_stack(shape, widths, batch_norm, name):
    """Two 3x3 convolutions per stage (with BN before the ReLU when asked), 2x2 max pooling."""
    layers = keras.layers
    inputs = keras.Input(shape)
    x = inputs
    for stage, filters in enumerate(widths, start=1):
        for number in (1, 2):
            prefix = f"block{stage}_conv{number}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=prefix)(x)
            if batch_norm:
                x = layers.BatchNormalization(name=f"{prefix}_bn")(x)
            x = layers.Activation("relu", name=f"{prefix}_relu")(x)
        if stage < len(widths):
            x = layers.MaxPooling2D(2, name=f"block{stage}_pool")(x)
    outputs = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name=name)


def _resnet50v2(shape):
    return keras.applications.ResNet50V2(
        weights=None, include_top=False, pooling="avg", input_shape=shape
    )


_BUILDERS = {
    "resnet16": lambda shape: small_resnet(shape, width=16, name="resnet16"),
    "resnet32": lambda shape: small_resnet(shape, width=32, name="resnet32"),
    "resnet64": lambda shape: small_resnet(shape, width=64, name="resnet64"),
    "vgg_bn": lambda shape: _vgg_stack(shape, (16, 32, 64), True, "vgg_bn"),
    "vgg_bn32": lambda shape: _vgg_stack(shape, (32, 64, 128), True, "vgg_bn32"),
    "plain": lambda shape: _vgg_stack(shape, (16, 32, 64), False, "plain"),
    "plain32": lambda shape: _vgg_stack(shape, (32, 64, 128), False, "plain32"),
    "resnet50v2": _resnet50v2,
}

BACKBONES = {
    backbone.name: backbone
    for backbone in (
        Backbone("resnet16", "residual, BN, 16-32-64 filters"),
        Backbone("resnet32", "residual, BN, 32-64-128 filters"),
        Backbone("resnet64", "residual, BN, 64-128-256 filters"),
        Backbone("vgg_bn", "VGG-style stack, BN, 16-32-64 filters"),
        Backbone("vgg_bn32", "VGG-style stack, BN, 32-64-128 filters"),
        Backbone("plain", "VGG-style stack without BN, 16-32-64 filters"),
        Backbone("plain32", "VGG-style stack without BN, 32-64-128 filters"),
        Backbone("resnet50v2", "keras.applications.ResNet50V2", min_size=32),
        Backbone(LEGACY, "SmallResNet, BN momentum set to 0.9 (the 0.1 tables)"),
    )
}


def parse(spec, default_size):
    """`(name, pixels)` from a `NAME@PIXELS` spec (`NAME` alone: `default_size`), checked."""
    name, _, size = spec.partition("@")
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown benchmark backbone {name!r} in {spec!r}. Known: {', '.join(BACKBONES)} "
            "(write NAME@PIXELS, e.g. resnet32@32)."
        )
    if size and not size.isdigit():
        raise ValueError(f"Image size in {spec!r} must be a number of pixels, e.g. {name}@32.")
    pixels = int(size) if size else default_size
    minimum = max(8, BACKBONES[name].min_size)
    if pixels < minimum:
        raise ValueError(f"{name} needs images of at least {minimum} px. Received: {spec!r}")
    return name, pixels
