"""keras-hub presets as backbones: preset names, local preset directories, fast offline failures.

`keras_hub` is an optional dependency (`pip install "adafilter_keras[hub]"`), imported only when a
preset is built: recognising a preset name needs nothing installed.
"""

import importlib.util
import os
import pathlib
import re
import urllib.parse
import urllib.request
import warnings

import keras

from adafilter_keras import network
from adafilter_keras.backbones.errors import WeightsUnavailableError

PRESET_EXAMPLE = "resnet_50_imagenet"
INSTALL_HINT = 'pip install "adafilter_keras[hub]"'
# How long the reachability check of the preset's host may take before the build gives up. The
# downloads of kagglehub have no time-out of their own: without network they can hang for minutes.
PROBE_TIMEOUT_S = 5.0
_KAGGLE_API = "https://api.kaggle.com"
_HUGGING_FACE = "https://huggingface.co"
# keras-hub preset names are lower snake case ("resnet_50_imagenet"); keras.applications names
# are CamelCase ("ResNet50"), so the two never collide.
_PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*(_[a-z0-9.-]+)+$")
_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.weights.h5"
_IMAGE_CONVERTER_FILE = "image_converter.json"


def is_preset(name):
    """Whether `name` refers to a keras-hub preset rather than a `keras.applications` model.

    A preset is a preset name (`"resnet_50_imagenet"`), a handle with a scheme
    (`"kaggle://keras/resnetv1/keras/resnet_50_imagenet/3"`, `"hf://..."`) or the path of a local
    preset directory (one with a `/`, or starting with `.` or `~`: `./my_preset`). The answer
    depends on the name only, never on what the current directory holds.
    """
    if not isinstance(name, str) or not name:
        return False
    return "://" in name or _looks_like_path(name) or bool(_PRESET_NAME.match(name))


def is_directory(name):
    """Whether the preset `name` is written as a local path (a `/`, or a `.` or `~` prefix)."""
    return is_preset(name) and "://" not in name and _looks_like_path(name)


def installed():
    """Whether `keras_hub` can be imported (without importing it: that takes seconds)."""
    return importlib.util.find_spec("keras_hub") is not None


def require_keras_hub(preset):
    """Raises a `ValueError` naming the install command when `keras_hub` is missing."""
    if not installed():
        raise ValueError(
            f"Backbone {preset!r} is a keras-hub preset, and keras_hub is not installed. "
            f"Install it with: {INSTALL_HINT}"
        )


def build_preset_backbone(preset, weights, input_shape):
    """Builds a headless keras-hub backbone with global average pooling, like `keras.applications`.

    The model maps RGB images in [0, 255] to pooled features: when the preset has an image
    converter (`image_converter.json`, as keras-hub's pre-trained image presets do), its per-channel
    scale and offset run first, as a `keras.layers.Rescaling` layer, so the input pipeline feeds
    the images unnormalized (`data.normalization_for` gives `"raw"` for presets).

    Args:
        preset: A keras-hub preset name (`"resnet_50_imagenet"`), a `kaggle://` / `hf://` handle,
            or a local preset directory (one that `save_to_preset` wrote, or a downloaded one).
        weights: `"imagenet"` (the preset's own weights), None (random initialisation with the
            preset's architecture), or the path of a weights file saved from the model this
            function returns.
        input_shape: `(height, width, 3)`.

    Returns:
        A functional `keras.Model` whose nested keras-hub backbone `wrap()` rewrites in place.

    Raises:
        ValueError: keras_hub is missing, the name is not a preset, or the preset is not an
            image backbone.
        WeightsUnavailableError: The preset cannot be loaded (offline, missing directory or
            files); the message says where to put the files.
    """
    require_keras_hub(preset)
    import keras_hub

    location, remote = _locate(preset, keras_hub)
    needed = [_CONFIG_FILE] + ([_WEIGHTS_FILE] if weights == "imagenet" else [])
    if remote and not _cached(remote, [*needed, _IMAGE_CONVERTER_FILE]):
        _check_reachable(preset, remote)
    try:
        backbone = keras_hub.models.Backbone.from_preset(
            location, load_weights=weights == "imagenet"
        )
        converter = _image_converter(location, keras_hub)
    except Exception as error:  # network, missing-file and format errors come in many types
        if remote:
            raise WeightsUnavailableError(
                f"Could not load keras-hub preset {preset!r} ({remote}): "
                f"{type(error).__name__}: {error}. {_where_to_put_files(preset, remote)}"
            ) from None
        raise WeightsUnavailableError(
            f"Could not load the keras-hub preset directory {location!r}: "
            f"{type(error).__name__}: {error}"
        ) from None
    _check_image_backbone(preset, backbone)
    if converter is None and weights == "imagenet":
        warnings.warn(
            f"keras-hub preset {preset!r} has no {_IMAGE_CONVERTER_FILE}, so its backbone gets "
            "the images unnormalized (RGB in [0, 255]). If its weights were trained on "
            "normalized images, save the preset from the image classifier with its "
            "preprocessor (`classifier.save_to_preset(dir)` writes the image converter too).",
            stacklevel=2,
        )
    inputs = keras.Input(tuple(input_shape), name="images")
    x = inputs
    if converter is not None and (converter.scale is not None or converter.offset is not None):
        x = keras.layers.Rescaling(
            _plain(converter.scale, 1.0), _plain(converter.offset, 0.0), name="normalization"
        )(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone(x))
    return keras.Model(inputs, outputs, name=_model_name(preset))


def _locate(preset, keras_hub):
    """`(what from_preset loads, the remote handle or None)`; raises when there is nothing.

    As in keras-hub, a built-in preset name wins over a directory of the same name.
    """
    if "://" in preset:
        return preset, preset
    presets = keras_hub.models.Backbone.presets
    if preset in presets:
        return preset, presets[preset]["kaggle_handle"]
    path = pathlib.Path(preset).expanduser()
    if not (path.is_dir() or _looks_like_path(preset)):
        resnets = sorted(name for name in presets if name.startswith("resnet"))
        raise ValueError(
            f"Unknown keras-hub preset {preset!r}, and no directory of that name exists. "
            f"keras-hub's ResNet presets: {', '.join(resnets)} "
            "(`keras_hub.models.Backbone.presets` lists all); or pass a local preset directory. "
            f"Received: backbone={preset!r}"
        )
    if not path.is_dir():
        raise WeightsUnavailableError(
            f"keras-hub preset directory {str(path)!r} does not exist. Pass a directory "
            f"holding a preset's {_CONFIG_FILE} and {_WEIGHTS_FILE} (what "
            "`backbone.save_to_preset(dir)` writes, or a downloaded preset), or a preset "
            f"name such as {PRESET_EXAMPLE!r}."
        )
    if not (path / _CONFIG_FILE).is_file():
        raise WeightsUnavailableError(
            f"Directory {str(path)!r} is not a keras-hub preset: it has no {_CONFIG_FILE}. "
            "A preset directory is what `backbone.save_to_preset(dir)` writes (config.json, "
            f"{_WEIGHTS_FILE}, metadata.json), or a preset downloaded with kagglehub."
        )
    return str(path), None


def _looks_like_path(name):
    return "/" in name or os.sep in name or name.startswith((".", "~"))


def _cached(handle, files):
    """Whether kagglehub's cache holds every file of `files` of a versioned Kaggle handle."""
    if not handle.startswith("kaggle://"):
        return False
    try:  # kagglehub's cache layout, read through its own helpers
        from kagglehub.cache import Cache
        from kagglehub.handle import parse_model_handle

        parsed = parse_model_handle(handle.removeprefix("kaggle://"))
        return parsed.is_versioned() and all(
            Cache().load_from_cache(parsed, name) is not None for name in files
        )
    except Exception:
        return False


def _check_reachable(preset, handle):
    """Fails within seconds, with what to do, when the host serving `handle` cannot be reached."""
    scheme = handle.split("://")[0].lower()
    if scheme == "kaggle":
        url = _kaggle_endpoint()
    elif scheme == "hf":
        url = os.environ.get("HF_ENDPOINT", _HUGGING_FACE)
    else:
        return  # other stores (gs://, modelscope://) time out on their own
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy.hostname, proxy.port or 80
    error = network.connection_error((host, port), timeout=PROBE_TIMEOUT_S)
    if error is not None:
        raise WeightsUnavailableError(
            f"Cannot download keras-hub preset {preset!r} ({handle}): {host}:{port} is not "
            f"reachable (no network?): {error}. {_where_to_put_files(preset, handle)}"
        )


def _kaggle_endpoint():
    try:
        from kagglesdk.kaggle_env import get_endpoint, get_env

        return get_endpoint(get_env())
    except Exception:
        return _KAGGLE_API


def _where_to_put_files(preset, handle):
    if not handle.startswith("kaggle://"):
        return (
            "Without network, pass a local preset directory instead (--backbone DIR): download "
            "the preset on a machine with network and copy its directory here."
        )
    kaggle = handle.removeprefix("kaggle://")
    cache = os.environ.get("KAGGLEHUB_CACHE") or os.path.join("~", ".cache", "kagglehub")
    return (
        "Without network, pass a local preset directory as the backbone (--backbone DIR): on a "
        'machine with network, `python -c "import kagglehub; '
        f"print(kagglehub.model_download('{kaggle}'))\"` downloads the preset into kagglehub's "
        "cache ($KAGGLEHUB_CACHE, default ~/.cache/kagglehub) and prints its directory "
        f"({os.path.join('$KAGGLEHUB_CACHE', 'models', kaggle)}); copy that directory here and "
        "pass its path. A preset that an earlier run with network downloaded on this machine is "
        f"used from kagglehub's cache (here {cache}) without network."
    )


def _image_converter(location, keras_hub):
    """The preset's image converter, or None when it has none (a backbone saved alone)."""
    try:
        return keras_hub.layers.ImageConverter.from_preset(location)
    except FileNotFoundError:
        return None


def _check_image_backbone(preset, backbone):
    shapes = [tuple(x.shape) for x in backbone.inputs]
    output = getattr(backbone, "output", None)
    if (
        len(shapes) != 1
        or len(shapes[0]) != 4
        or shapes[0][-1] != 3
        or not isinstance(output, keras.KerasTensor)
        or len(output.shape) != 4
    ):
        raise ValueError(
            f"keras-hub preset {preset!r} holds a {type(backbone).__name__}, not an image "
            "backbone with one channels-last RGB input and a feature-map output (input shapes: "
            f"{shapes}). Pass a CNN image preset such as {PRESET_EXAMPLE!r}."
        )


def _plain(value, default):
    """A converter's scale or offset as a float or a list of floats (JSON-serializable)."""
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return float(value)


def _model_name(preset):
    """The preset's name: its last path part that is not a version number (kagglehub's `.../3`)."""
    parts = [p for p in re.split(r"[/\\]+", preset.split("://")[-1]) if p and p not in (".", "~")]
    names = [p for p in parts if not p.isdigit()] or ["keras_hub"]
    return re.sub(r"[^A-Za-z0-9_]+", "_", names[-1]).strip("_") or "keras_hub"
