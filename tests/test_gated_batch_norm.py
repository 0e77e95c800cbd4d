import keras
import numpy as np
import pytest
from support import loss_gradients, to_numpy

from adafilter_keras import GatedBatchNorm
from adafilter_keras.layers import gated_batch_norm
from adafilter_keras.layers.branches import mix_normalized
from adafilter_keras.layers.casting import cast, normalization_dtype
from adafilter_keras.layers.gated_batch_norm import batch_moments
from adafilter_keras.layers.mixed_batch_norm import normalization_affine

EPSILON = 1e-3


def _bn_reference(x, mean, variance, gamma, beta):
    return (x - mean) / np.sqrt(variance + EPSILON) * gamma + beta


def _layer_with_distinct_branches(rng, filters=4, **kwargs):
    kwargs = {"pretrained_branch": "frozen", **kwargs}
    layer = GatedBatchNorm(epsilon=EPSILON, **kwargs)
    layer.build([(None, 5, 5, filters), (None, 5, 5, filters), (None, filters)])
    for variable in layer.weights:
        low = 0.5 if "variance" in variable.path or "gamma" in variable.path else -1.0
        variable.assign(rng.uniform(low, 1.5, size=variable.shape))
    return layer


def _halves(x):
    """The first and the second half of `x`'s channels: a pre-trained and a fine-tuned branch."""
    half = x.shape[-1] // 2
    return [x[..., :half], x[..., half:]]


def _branch(layer, branch):
    names = ("moving_mean", "moving_variance", "gamma", "beta")
    return [to_numpy(getattr(layer, f"{branch}_{name}")) for name in names]


def test_inference_matches_reference_per_branch_and_gate(rng):
    layer = _layer_with_distinct_branches(rng)
    x = rng.normal(size=(3, 5, 5, 8)).astype("float32")
    pretrained = _bn_reference(x[..., :4], *_branch(layer, "pretrained"))
    finetuned = _bn_reference(x[..., 4:], *_branch(layer, "finetuned"))
    zeros = np.zeros((3, 4), "float32")
    np.testing.assert_allclose(
        to_numpy(layer([*_halves(x), zeros])), pretrained, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(layer([*_halves(x), zeros + 1])), finetuned, rtol=1e-5, atol=1e-5
    )
    gate = rng.integers(0, 2, size=(3, 4)).astype("float32")
    expected = np.where(gate[:, None, None, :] == 1, finetuned, pretrained)
    np.testing.assert_allclose(to_numpy(layer([*_halves(x), gate])), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate_filters", [4, 1])
def test_soft_gates_mix_the_normalized_branches(rng, gate_filters):
    # The inference gates are probabilities, and block granularity shares one gate per example.
    layer = _layer_with_distinct_branches(rng)
    x = rng.normal(size=(3, 5, 5, 8)).astype("float32")
    pretrained = _bn_reference(x[..., :4], *_branch(layer, "pretrained"))
    finetuned = _bn_reference(x[..., 4:], *_branch(layer, "finetuned"))
    gate = rng.uniform(size=(3, gate_filters)).astype("float32")
    expected = gate[:, None, None, :] * finetuned + (1 - gate[:, None, None, :]) * pretrained
    np.testing.assert_allclose(to_numpy(layer([*_halves(x), gate])), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["frozen", "adapt"])
def test_training_uses_batch_statistics_per_mode(rng, mode):
    layer = _layer_with_distinct_branches(rng, pretrained_branch=mode, momentum=0.9)
    pretrained_before, finetuned_before = _branch(layer, "pretrained"), _branch(layer, "finetuned")
    x = rng.normal(1.0, 2.0, size=(6, 5, 5, 8)).astype("float32")
    batch_mean, batch_variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))

    out_pretrained = to_numpy(layer([*_halves(x), np.zeros((6, 4), "float32")], training=True))
    mean, variance, gamma, beta = pretrained_before
    if mode == "adapt":
        mean, variance = batch_mean[:4], batch_variance[:4]
    np.testing.assert_allclose(
        out_pretrained, _bn_reference(x[..., :4], mean, variance, gamma, beta), rtol=1e-4, atol=1e-4
    )

    _, _, gamma, beta = finetuned_before
    out_finetuned = to_numpy(layer([*_halves(x), np.ones((6, 4), "float32")], training=True))
    np.testing.assert_allclose(
        out_finetuned,
        _bn_reference(x[..., 4:], batch_mean[4:], batch_variance[4:], gamma, beta),
        rtol=1e-4,
        atol=1e-4,
    )

    # Two training calls: each moved the statistics by momentum 0.9 toward the batch's.
    expected_mean = finetuned_before[0]
    for _ in range(2):
        expected_mean = 0.9 * expected_mean + 0.1 * batch_mean[4:]
    np.testing.assert_allclose(to_numpy(layer.finetuned_moving_mean), expected_mean, rtol=1e-5)
    if mode == "frozen":
        for before, after in zip(pretrained_before, _branch(layer, "pretrained"), strict=True):
            np.testing.assert_array_equal(before, after)
    else:
        assert not np.allclose(to_numpy(layer.pretrained_moving_mean), pretrained_before[0])


def test_trainable_weights_per_mode():
    def trainable_names(mode):
        layer = GatedBatchNorm(pretrained_branch=mode)
        layer.build([(None, 4, 4, 3), (None, 4, 4, 3), (None, 3)])
        return sorted(v.path.split("/")[-1] for v in layer.trainable_weights)

    assert trainable_names("frozen") == ["finetuned_beta", "finetuned_gamma"]
    assert trainable_names("adapt") == sorted(
        ["pretrained_gamma", "pretrained_beta", "finetuned_gamma", "finetuned_beta"]
    )


def test_non_trainable_layer_runs_in_inference_mode(rng):
    layer = _layer_with_distinct_branches(rng)
    layer.trainable = False
    x = rng.normal(size=(2, 5, 5, 8)).astype("float32")
    gate = np.ones((2, 4), "float32")
    before = to_numpy(layer.finetuned_moving_mean)
    np.testing.assert_allclose(
        to_numpy(layer([*_halves(x), gate], training=True)),
        to_numpy(layer([*_halves(x), gate])),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(to_numpy(layer.finetuned_moving_mean), before)


@pytest.mark.parametrize("center, scale", [(True, True), (False, True), (True, False)])
def test_from_batch_normalization_reproduces_inference_for_any_gate(rng, center, scale):
    bn = keras.layers.BatchNormalization(epsilon=1.001e-5, center=center, scale=scale, name="bn")
    x = rng.normal(size=(4, 3, 3, 5)).astype("float32")
    bn(x)
    for variable in bn.weights:
        variable.assign(rng.uniform(0.5, 2.0, size=variable.shape))
    expected = to_numpy(bn(x))
    layer = GatedBatchNorm.from_batch_normalization(bn)
    assert layer.name == "bn" and layer.epsilon == bn.epsilon
    for gate in (np.zeros((4, 5)), np.ones((4, 5)), rng.integers(0, 2, (4, 5)), rng.random((4, 5))):
        np.testing.assert_allclose(
            to_numpy(layer([x, x, gate.astype("float32")])), expected, rtol=1e-6, atol=1e-6
        )


def test_from_batch_normalization_refuses_unsupported_layers():
    with pytest.raises(TypeError, match="expects a keras.layers.BatchNormalization"):
        GatedBatchNorm.from_batch_normalization(keras.layers.LayerNormalization())
    with pytest.raises(ValueError, match="'unbuilt' is not built"):
        GatedBatchNorm.from_batch_normalization(keras.layers.BatchNormalization(name="unbuilt"))
    channels_first = keras.layers.BatchNormalization(axis=1, name="cf")
    channels_first.build((None, 4, 8, 8))
    with pytest.raises(ValueError, match="'cf' normalizes axis 1"):
        GatedBatchNorm.from_batch_normalization(channels_first)
    renorm = keras.layers.BatchNormalization(renorm=True, name="rn")
    renorm.build((None, 8, 8, 4))
    with pytest.raises(ValueError, match="renorm"):
        GatedBatchNorm.from_batch_normalization(renorm)


def test_config_round_trip():
    layer = GatedBatchNorm(momentum=0.9, epsilon=1e-5, center=False, pretrained_branch="adapt")
    config = layer.get_config()
    clone = GatedBatchNorm.from_config(config)
    assert clone.get_config() == config
    assert clone.pretrained_branch == "adapt" and not clone.center


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pretrained_branch="train"), "Received: pretrained_branch='train'"),
        (dict(momentum=1.5), "Received: momentum=1.5"),
        (dict(epsilon=0), "Received: epsilon=0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GatedBatchNorm(**kwargs)


def test_bad_inputs_are_refused(rng):
    layer = GatedBatchNorm(name="gbn")
    branch = np.zeros((2, 3, 3, 4), "float32")
    with pytest.raises(ValueError, match=r"gate of shape \(batch, 4\).*gate.shape=\(2, 3\)"):
        layer([branch, branch, np.zeros((2, 3), "float32")])
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3, 3, 4\) and \(2, 3, 3, 5\)"):
        GatedBatchNorm()([branch, np.zeros((2, 3, 3, 5), "float32"), np.zeros((2, 4), "float32")])
    with pytest.raises(ValueError, match=r"called on a list \[pretrained, finetuned, gate\]"):
        GatedBatchNorm()([branch, np.zeros((2, 4), "float32")])


def test_a_cast_to_the_dtype_a_tensor_has_is_no_operation():
    x = keras.ops.ones((2, 3), dtype="float32")
    assert cast(x, "float32") is x
    array = np.ones((2, 3), "float32")  # not a backend tensor: converted, as `ops.cast` does
    assert keras.ops.is_tensor(cast(array, "float32"))
    halved = cast(x, "float16")
    assert keras.backend.standardize_dtype(halved.dtype) == "float16"
    assert [normalization_dtype(d) for d in ("float16", "bfloat16", "float32", "float64")] == [
        "float32",
        "float32",
        "float32",
        "float64",
    ]


def test_batch_moments_are_the_per_channel_mean_and_biased_variance(rng):
    x = rng.normal(1.0, 2.0, size=(6, 5, 4, 3)).astype("float32")
    mean, variance = (to_numpy(v) for v in batch_moments(keras.ops.convert_to_tensor(x)))
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance, x.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="the PyTorch formulation (the torch tox env)"
)
def test_torch_batch_moments_equal_keras_moments_forward_and_backward(rng):
    # The sums give Keras's values bit for bit; only the backward pass is shorter.
    import torch

    x = rng.normal(1.0, 2.0, size=(6, 5, 4, 3)).astype("float32")
    weights = torch.tensor(rng.normal(size=(2, 3)).astype("float32"))

    def values_and_gradient(moments):
        tensor = torch.tensor(x, requires_grad=True)
        mean, variance = moments(tensor)
        ((mean * weights[0]).sum() + (variance * weights[1]).sum()).backward()
        return mean.detach().numpy(), variance.detach().numpy(), tensor.grad.numpy()

    ours = values_and_gradient(batch_moments)
    keras_moments = values_and_gradient(lambda t: keras.ops.moments(t, axes=[0, 1, 2]))
    np.testing.assert_array_equal(ours[0], keras_moments[0])
    np.testing.assert_array_equal(ours[1], keras_moments[1])
    np.testing.assert_allclose(ours[2], keras_moments[2], rtol=1e-5, atol=1e-7)


class _DifferentiatedGatedBatchNorm(GatedBatchNorm):
    """The training forward pass as plain operations, differentiated by the backend."""

    def call(self, inputs, training=None):
        *branches, gate = inputs
        affines = []
        for branch, values in zip(("pretrained", "finetuned"), branches, strict=True):
            mean, variance = batch_moments(values)
            weights = [getattr(self, f"{branch}_{name}", None) for name in ("gamma", "beta")]
            affines.append(normalization_affine(mean, variance, self.epsilon, *weights))
        return mix_normalized(*branches, *affines, gate)


def _gated_model(layer_class, gate_filters, **kwargs):
    """Branches and gate from trainable layers, so that every gradient reaches a weight."""
    inputs = keras.Input((5, 4, 3))
    both = keras.layers.Conv2D(8, 1)(inputs)
    pretrained = keras.layers.Lambda(lambda t: t[..., :4] * 3.0 + 1.0)(both)
    finetuned = keras.layers.Lambda(lambda t: t[..., 4:] - 0.5)(both)
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    gate = keras.layers.Dense(gate_filters, activation="sigmoid")(pooled)
    layer = layer_class(epsilon=EPSILON, pretrained_branch="adapt", **kwargs)
    outputs = layer([pretrained, finetuned, gate], training=True)
    return keras.Model(inputs, outputs), layer


@pytest.mark.parametrize(
    "gate_filters, scale, center", [(4, True, True), (1, True, True), (4, False, False)]
)
def test_written_out_gradient_equals_the_differentiated_one(
    rng, monkeypatch, gate_filters, scale, center
):
    monkeypatch.setattr(gated_batch_norm, "WRITE_OUT_GRADIENT", True)  # PyTorch's too
    models = [
        _gated_model(layer_class, gate_filters, scale=scale, center=center)
        for layer_class in (GatedBatchNorm, _DifferentiatedGatedBatchNorm)
    ]
    for variable in models[0][1].weights:
        low = 0.5 if "variance" in variable.path or "gamma" in variable.path else -1.0
        variable.assign(rng.uniform(low, 1.5, size=variable.shape))
    models[1][0].set_weights(models[0][0].get_weights())
    x = rng.normal(size=(6, 5, 4, 3)).astype("float32")
    target = rng.normal(size=(6, 5, 4, 4)).astype("float32")

    def loss(y, outputs):  # weights every output differently, so no gradient cancels
        squares = keras.ops.square(keras.ops.subtract(outputs, y))
        return keras.ops.sum(squares * keras.ops.arange(1, 5, dtype="float32"))

    outputs = [to_numpy(model(x, training=True)) for model, _ in models]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    written, differentiated = (loss_gradients(model, x, target, loss) for model, _ in models)
    assert len(written) == len(differentiated) == 2 + 2 + 2 * (scale + center)
    # The conv bias gets no gradient through a batch normalization: both are rounding noise there.
    largest = max(np.abs(reference).max() for reference in differentiated)
    assert largest > 0.1
    for ours, reference in zip(written, differentiated, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5 * largest)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's gradient graph")
def test_each_branch_gradient_is_one_term_in_tensorflow():
    # Grappler rewrites sums of more than two full-size gradients into accumulations into
    # zero-initialised temporaries, which constant folding turns into held constants.
    import tensorflow as tf

    def sums(layer_class):
        model, _ = _gated_model(layer_class, 4)

        @tf.function
        def gradients(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=True) ** 2)
            return tape.gradient(loss, model.trainable_variables)

        graph = gradients.get_concrete_function(tf.random.normal((6, 5, 4, 3))).graph
        return [len(op.inputs) for op in graph.get_operations() if op.type == "AddN"]

    assert gated_batch_norm.WRITE_OUT_GRADIENT
    assert max(sums(_DifferentiatedGatedBatchNorm)) == 3  # mean, variance and mix
    assert max(sums(GatedBatchNorm)) <= 2


@pytest.mark.parametrize("subtract", [True, False])
def test_the_subtracting_mixes_give_the_adding_ones_values_bit_for_bit(rng, monkeypatch, subtract):
    # TensorFlow and JAX subtract (see branches.py), PyTorch adds: one set of values everywhere.
    from adafilter_keras.layers import branches

    pretrained, finetuned = (rng.normal(size=(3, 4, 4, 5)).astype("float32") for _ in range(2))
    gate = rng.uniform(size=(3, 5)).astype("float32")
    affines = [tuple(rng.normal(size=(5,)).astype("float32") for _ in range(2)) for _ in range(2)]
    expected = (
        pretrained + gate[:, None, None] * (finetuned - pretrained),
        pretrained * ((1 - gate)[:, None, None] * affines[0][0])
        + finetuned * (gate[:, None, None] * affines[1][0])
        + (affines[0][1] + gate * (affines[1][1] - affines[0][1]))[:, None, None],
    )
    monkeypatch.setattr(branches, "_SUBTRACT", subtract)
    tensor = keras.ops.convert_to_tensor
    mixed = (
        branches.mix_branches(tensor(pretrained), tensor(finetuned), tensor(gate)),
        branches.mix_normalized(
            tensor(pretrained),
            tensor(finetuned),
            *[tuple(tensor(v) for v in affine) for affine in affines],
            tensor(gate),
        ),
    )
    for ours, reference in zip(mixed, expected, strict=True):
        np.testing.assert_array_equal(to_numpy(ours), reference)
