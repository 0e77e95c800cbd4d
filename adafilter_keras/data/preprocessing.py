"""Image preprocessing inside `tf.data`: augmentation and eval crops.

The backbone-specific input normalization is `adafilter_keras.backbones.normalization`.

These run as TensorFlow ops in the input pipeline whatever the Keras backend, so they are written
with `tf` directly rather than `keras.ops`.
"""

import tensorflow as tf


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
