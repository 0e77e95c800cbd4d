import keras
import numpy as np
import pytest
from support import conv2d_reference, to_numpy

from adafilter_keras import AdaFilterConv2D


def _layer_with_distinct_branches(rng, **kwargs):
    """A built layer whose fine-tuned kernel and bias differ from the pre-trained ones."""
    layer = AdaFilterConv2D(**kwargs)
    layer.build((None, None, None, 3))
    layer.finetuned_kernel.assign(rng.normal(size=layer.finetuned_kernel.shape))
    if layer.use_bias:
        layer.pretrained_bias.assign(rng.normal(size=layer.pretrained_bias.shape))
        layer.finetuned_bias.assign(rng.normal(size=layer.finetuned_bias.shape))
    return layer


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=4, kernel_size=3, padding="same"),
        dict(filters=5, kernel_size=(3, 1), strides=2, padding="valid"),
        dict(filters=3, kernel_size=3, strides=2, padding="same", use_bias=False),
        dict(filters=2, kernel_size=3, dilation_rate=2, padding="same"),
    ],
)
def test_matches_numpy_reference_for_zero_one_and_mixed_gates(rng, kwargs):
    layer = _layer_with_distinct_branches(rng, **kwargs)
    x = rng.normal(size=(3, 9, 8, 3)).astype("float32")
    bias = lambda branch: to_numpy(getattr(layer, f"{branch}_bias")) if layer.use_bias else None  # noqa: E731
    args = (layer.strides, layer.padding, layer.dilation_rate)
    pretrained = conv2d_reference(x, to_numpy(layer.pretrained_kernel), bias("pretrained"), *args)
    finetuned = conv2d_reference(x, to_numpy(layer.finetuned_kernel), bias("finetuned"), *args)
    assert np.abs(pretrained - finetuned).max() > 0.1  # the two branches really differ

    filters = layer.filters
    branches = [to_numpy(branch) for branch in layer(x)]
    np.testing.assert_allclose(branches[0], pretrained, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(branches[1], finetuned, rtol=1e-4, atol=1e-4)

    zeros = np.zeros((3, filters), "float32")
    np.testing.assert_array_equal(to_numpy(layer(x, zeros)), branches[0])
    # A 1 gate gives the fine-tuned branch up to one rounding (see mix_branches).
    np.testing.assert_allclose(to_numpy(layer(x, zeros + 1)), branches[1], rtol=1e-6, atol=1e-6)

    gate = rng.integers(0, 2, size=(3, filters)).astype("float32")
    gate[0, 0], gate[1, 0] = 1.0, 0.0  # both choices are exercised
    expected = np.where(gate[:, None, None, :] == 1, finetuned, pretrained)
    np.testing.assert_allclose(to_numpy(layer(x, gate)), expected, rtol=1e-4, atol=1e-4)


def test_activation_is_applied_after_mixing(rng):
    layer = _layer_with_distinct_branches(rng, filters=4, kernel_size=3, activation="relu")
    linear = AdaFilterConv2D.from_config({**layer.get_config(), "activation": None})
    linear.build((None, None, None, 3))
    linear.set_weights(layer.get_weights())
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    # A soft gate shows the order: relu(mix(a, b)) differs from mix(relu(a), relu(b)).
    gate = np.full((2, 4), 0.5, "float32")
    np.testing.assert_allclose(
        to_numpy(layer(x, gate)), np.maximum(to_numpy(linear(x, gate)), 0), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("use_bias", [True, False])
def test_from_conv2d_reproduces_the_conv_for_any_gate(rng, use_bias):
    conv = keras.layers.Conv2D(
        6, 3, strides=2, padding="same", activation="relu", use_bias=use_bias, name="my_conv"
    )
    x = rng.normal(size=(4, 10, 10, 3)).astype("float32")
    expected = to_numpy(conv(x))
    if use_bias:
        conv.bias.assign(rng.normal(size=(6,)))
        expected = to_numpy(conv(x))
    layer = AdaFilterConv2D.from_conv2d(conv)
    assert layer.name == "my_conv" and layer.built
    np.testing.assert_array_equal(to_numpy(layer.pretrained_kernel), to_numpy(conv.kernel))
    np.testing.assert_array_equal(to_numpy(layer.finetuned_kernel), to_numpy(conv.kernel))
    for gate in (np.zeros((4, 6)), np.ones((4, 6)), rng.integers(0, 2, (4, 6)), rng.random((4, 6))):
        np.testing.assert_allclose(
            to_numpy(layer(x, gate.astype("float32"))), expected, rtol=1e-5, atol=1e-6
        )
    for branch in layer(x):
        np.testing.assert_allclose(to_numpy(branch), expected, rtol=1e-5, atol=1e-6)


def test_copies_do_not_alias_the_source_weights(rng):
    conv = keras.layers.Conv2D(2, 1)
    conv.build((None, 4, 4, 3))
    layer = AdaFilterConv2D.from_conv2d(conv)
    before = to_numpy(conv.kernel).copy()
    layer.finetuned_kernel.assign(np.zeros(layer.finetuned_kernel.shape))
    np.testing.assert_array_equal(to_numpy(conv.kernel), before)
    np.testing.assert_array_equal(to_numpy(layer.pretrained_kernel), before)


def test_branches_start_equal_when_built_from_arguments():
    layer = AdaFilterConv2D(4, 3, bias_initializer="random_normal")
    layer.build((None, 8, 8, 3))
    np.testing.assert_array_equal(
        to_numpy(layer.pretrained_kernel), to_numpy(layer.finetuned_kernel)
    )
    np.testing.assert_array_equal(to_numpy(layer.pretrained_bias), to_numpy(layer.finetuned_bias))
    assert not layer.pretrained_kernel.trainable and layer.finetuned_kernel.trainable
    assert [v.path.split("/")[-1] for v in layer.trainable_weights] == [
        "finetuned_kernel",
        "finetuned_bias",
    ]


def test_kernel_regularizer_applies_to_the_finetuned_kernel_only():
    layer = AdaFilterConv2D(2, 1, kernel_regularizer=keras.regularizers.L2(1.0), use_bias=False)
    layer.build((None, 4, 4, 3))
    layer.pretrained_kernel.assign(np.ones(layer.pretrained_kernel.shape))
    layer.finetuned_kernel.assign(np.full(layer.finetuned_kernel.shape, 2.0))
    assert len(layer.losses) == 1
    np.testing.assert_allclose(to_numpy(layer.losses[0]), 4.0 * 6)


def test_config_round_trip():
    layer = AdaFilterConv2D(
        7,
        (3, 5),
        strides=(2, 1),
        padding="same",
        activation="relu",
        kernel_regularizer="l2",
        name="gated",
    )
    config = layer.get_config()
    clone = AdaFilterConv2D.from_config(config)
    assert clone.get_config() == config
    assert (clone.filters, clone.kernel_size, clone.strides) == (7, (3, 5), (2, 1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(filters=0, kernel_size=3), "Received: filters=0"),
        (dict(filters=-2, kernel_size=3), "Received: filters=-2"),
        (dict(filters=4, kernel_size=0), "Received: kernel_size=0"),
        (dict(filters=4, kernel_size=3, padding="causal"), "Received: padding='causal'"),
        (dict(filters=4, kernel_size=3, groups=2), "Received: groups=2"),
        (
            dict(filters=4, kernel_size=3, data_format="channels_first"),
            "Received: data_format='channels_first'",
        ),
        (dict(filters=4, kernel_size=3, kernel_constraint="non_neg"), "kernel_constraint"),
        (dict(filters=4, kernel_size=3, strides=2, dilation_rate=2), "dilation_rate"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AdaFilterConv2D(**kwargs)


def test_gate_of_the_wrong_width_is_refused(rng):
    layer = AdaFilterConv2D(4, 3, name="c")
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"gate of shape \(batch, 4\).*gate.shape=\(2, 5\)"):
        layer(x, np.zeros((2, 5), "float32"))
    with pytest.raises(ValueError, match="gate of shape"):
        layer(keras.Input((6, 6, 3)), keras.Input((3,)))


def test_from_conv2d_refuses_other_layers_and_unbuilt_convs():
    with pytest.raises(TypeError, match="expects a keras.layers.Conv2D.*Dense"):
        AdaFilterConv2D.from_conv2d(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="'lonely' is not built"):
        AdaFilterConv2D.from_conv2d(keras.layers.Conv2D(3, 3, name="lonely"))
    grouped = keras.layers.Conv2D(4, 3, groups=2)
    grouped.build((None, 8, 8, 4))
    with pytest.raises(ValueError, match="groups=2"):
        AdaFilterConv2D.from_conv2d(grouped)


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="a PyTorch memory layout (the torch tox env)"
)
def test_torch_convolution_reads_a_kernel_variable_in_place_and_lays_out_any_other(rng):
    import torch

    from adafilter_keras.layers.adafilter_conv2d import _channels_last_kernel

    layer = AdaFilterConv2D(4, 3)
    layer.build((None, 6, 6, 2))
    variable = layer.finetuned_kernel.value
    # Stored out-major already: handed over as it is, not through four views.
    assert _channels_last_kernel(layer.finetuned_kernel) is variable
    plain = torch.tensor(rng.normal(size=(3, 3, 2, 4)).astype("float32"))  # stored in-major
    laid_out = _channels_last_kernel(plain)
    np.testing.assert_array_equal(laid_out.numpy(), plain.numpy())
    assert laid_out.stride() == variable.stride() and laid_out.data_ptr() != plain.data_ptr()
