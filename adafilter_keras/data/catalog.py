"""What `adafilter-keras datasets` prints: every registry entry and whether its data is here."""

from adafilter_keras.data import registry
from adafilter_keras.data.loading import data_root
from adafilter_keras.data.sources import bundled
from adafilter_keras.data.sources import tfds as tfds_source


def status(spec, data_dir=None):
    """Says whether a dataset is present, downloadable, or needs a manual step (and which)."""
    root = data_root(data_dir)
    if spec.source == "bundled":
        return "present (bundled with an installed package)"
    if spec.folder and (root / spec.folder).is_dir():
        return f"present ({root / spec.folder})"
    if spec.source == "tfds" and tfds_source.is_prepared(spec.tfds_name, root):
        return f"present ({root / spec.tfds_name})"
    if spec.manual_step:
        return f"manual step: {spec.manual_step}"
    return f"downloadable (TFDS, into {root})"


def rows(data_dir=None):
    """One dict per registered dataset: name, classes, split sizes, source and status."""
    out = []
    for spec in registry.REGISTRY.values():
        sizes = " / ".join(f"{k} {v:,}" for k, v in spec.split_sizes.items()) or "see TFDS"
        if spec.source == "bundled":
            source = f"bundled ({bundled.ORIGINS[spec.name]})"
        elif spec.source == "folder":
            source = f"folder {spec.folder}/"
        else:
            source = f"TFDS {spec.tfds_name}" + (
                f" or folder {spec.folder}/" if spec.folder else ""
            )
        out.append(
            {
                "name": spec.name,
                "classes": spec.num_classes,
                "splits": sizes,
                "source": source,
                "status": status(spec, data_dir),
            }
        )
    return out
