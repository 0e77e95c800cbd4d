"""How a backbone's inputs are normalized: the per-channel normalization each family expects.

`normalize` runs as TensorFlow ops inside the `tf.data` input pipeline whatever the Keras backend,
so it is written with `tf` directly rather than `keras.ops`.
"""

import tensorflow as tf

from adafilter_keras import validation
from adafilter_keras.backbones import hub

# Per-channel normalization of the `keras.applications` families, on RGB images in [0, 255].
NORMALIZATIONS = ("caffe", "tf", "torch", "raw")
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)

_BACKBONE_NORMALIZATION = {
    "resnet": "caffe",
    "vgg": "caffe",
    "mobilenet": "tf",
    "inception": "tf",
    "xception": "tf",
    "densenet": "torch",
    "efficientnet": "raw",
    "convnext": "raw",
}


def normalization_for(backbone):
    """Returns the normalization (`NORMALIZATIONS`) that `keras.applications.<backbone>` expects.

    Args:
        backbone: A model name such as `"ResNet50"`, `"ResNet50V2"`, `"VGG16"`, a normalization
            name, or a keras-hub preset (`"resnet_50_imagenet"`, a preset directory): `"raw"`,
            because the model built from a preset normalizes its inputs itself.
    """
    key = backbone.lower()
    if key in NORMALIZATIONS:
        return key
    if hub.is_preset(backbone):
        return "raw"
    if key.startswith("resnet") and key.endswith("v2"):
        return "tf"
    for family, normalization in sorted(_BACKBONE_NORMALIZATION.items(), key=lambda i: -len(i[0])):
        if key.startswith(family):
            return normalization
    raise ValueError(
        f"No known input normalization for backbone {backbone!r}. Pass one of "
        f"{', '.join(NORMALIZATIONS)} instead. Received: backbone={backbone!r}"
    )


def normalize(images, normalization):
    """Applies a `keras.applications` input normalization to float RGB images in [0, 255]."""
    validation.one_of("normalization", normalization, NORMALIZATIONS)
    images = tf.cast(images, tf.float32)
    if normalization == "caffe":
        return images[..., ::-1] - tf.constant(_CAFFE_BGR_MEAN)
    if normalization == "tf":
        return images / 127.5 - 1.0
    if normalization == "torch":
        return (images / 255.0 - tf.constant(_TORCH_MEAN)) / tf.constant(_TORCH_STD)
    return images
