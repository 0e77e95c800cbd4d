"""Image preprocessing inside `tf.data`: augmentation, eval crops and the backbone's normalization.

These run as TensorFlow ops in the input pipeline whatever the Keras backend, so they are written
with `tf` directly rather than `keras.ops`.
"""

import tensorflow as tf

from adafilter_keras import validation

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
    from adafilter_keras.training import hub  # no import at the top: training imports data

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


def random_resized_crop(image, size, *, min_area, flip, seed):
    """Training augmentation: a random crop of random area and aspect ratio, resized, maybe flipped.

    Stateless: the same `seed` gives the same crop whatever thread or process draws it, so a
    seeded pipeline repeats exactly and several processes see the same batches.

    Args:
        image: uint8 `(height, width, 3)` tensor.
        size: Output side in pixels.
        min_area: Smallest fraction of the image area the crop keeps.
        flip: Whether to flip left-right with probability 1/2.
        seed: int32/int64 tensor of shape `(2,)`, this image's draw.

    Returns:
        float32 `(size, size, 3)` tensor in [0, 255].
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros((1, 0, 4)),
        seed=crop_seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(min_area, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    # The slice's size is a tensor, so its static shape is lost; a model whose first layer is not
    # a Conv2D (ResNet V2's ZeroPadding2D, a preset's Rescaling) needs the 3 channels known.
    crop = tf.ensure_shape(tf.image.resize(crop, (size, size), antialias=True), (size, size, 3))
    if flip:
        crop = tf.image.stateless_random_flip_left_right(crop, seed=flip_seed)
    return crop


def center_crop(image, size, *, crop_fraction):
    """Eval transform: resize the shorter side to `size / crop_fraction`, take the central square.

    Returns:
        float32 `(size, size, 3)` tensor in [0, 255].
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / crop_fraction) / tf.reduce_min(shape)
    resized_shape = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    resized_shape = tf.maximum(resized_shape, size)
    image = tf.image.resize(image, resized_shape, antialias=True)
    top = (resized_shape[0] - size) // 2
    left = (resized_shape[1] - size) // 2
    return tf.slice(image, [top, left, 0], [size, size, 3])


def to_rgb(image):
    """Makes a decoded uint8 image 3-channel (grey is repeated, alpha dropped)."""
    channels = tf.shape(image)[-1]
    image = tf.cond(channels == 1, lambda: tf.repeat(image, 3, axis=-1), lambda: image)
    return image[..., :3]
