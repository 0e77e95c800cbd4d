"""benchmarks/profile_step.py: self times from nested profiler events, op names per backend, the
comparison table, and one real profile of a tiny model. Nothing here is a timing."""

import keras
import numpy as np
import pytest
from support import load_benchmark

profile_step = load_benchmark("profile_step")


def test_self_time_is_the_duration_less_the_nested_events():
    # A step of 100 holding a conv of 60 that holds a kernel of 20, then an add of 10.
    events = [(0, 100, "step"), (5, 65, "conv"), (10, 30, "kernel"), (70, 80, "add")]
    assert dict(profile_step._self_times(events)) == {
        "step": 100 - 60 - 10,
        "conv": 60 - 20,
        "kernel": 20,
        "add": 10,
    }


@pytest.mark.parametrize(
    "backend, name, expected",
    [
        ("tensorflow", "model/conv1/Conv2D:Conv2D", "Conv2D"),
        ("tensorflow", "Conv2DBackpropInput", "Conv2DBackpropInput"),
        ("jax", "transpose_copy_fusion.15", "transpose_copy_fusion"),
        ("jax", "convolution-base-dilated.3", "convolution-base-dilated"),
    ],
)
def test_events_are_summed_by_op_type_or_kernel_kind(backend, name, expected):
    assert profile_step.op_name(name, backend) == expected


def test_xplane_host_events_are_summed_per_op_with_their_calls():
    xplane_pb2 = pytest.importorskip("tensorflow.tsl.profiler.protobuf.xplane_pb2")
    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    for key, name in enumerate(["__inference_step_12", "a/Conv2D:Conv2D", "a/Relu:Relu"], 1):
        plane.event_metadata[key].name = name
    line = plane.lines.add()
    for key, offset, duration in [(1, 0, 1000), (2, 100, 400), (3, 600, 100), (2, 800, 100)]:
        line.events.add(metadata_id=key, offset_ps=offset, duration_ps=duration)
    device = space.planes.add(name="/device:GPU:0")  # not a host plane: not read
    device.event_metadata[1].name = "ignored"
    device.lines.add().events.add(metadata_id=1, offset_ps=0, duration_ps=10**9)
    totals = profile_step.xplane_self_times(space.SerializeToString(), "tensorflow")
    # The function's span is the runtime's, not an op.
    assert totals == {"Conv2D": (500 / 1e12, 2), "Relu": (100 / 1e12, 1)}


def test_ops_are_sorted_by_adafilter_extra_time_per_step():
    profiles = {
        "finetune": {"conv": (0.2, 10), "add": (0.1, 20)},
        "adafilter": {"conv": (0.3, 20), "add": (0.1, 20), "lstm": (0.4, 40)},
    }
    rows, totals = profile_step.compare(profiles, steps=10)
    assert [r["op"] for r in rows] == ["lstm", "conv", "add"]
    assert rows[0]["adafilter_ms"] == pytest.approx(40) and rows[0]["finetune_calls"] == 0
    assert rows[1]["extra_ms"] == pytest.approx(10) and rows[1]["adafilter_calls"] == 2
    assert totals == pytest.approx({"finetune": 30, "adafilter": 80})


def test_a_real_profile_counts_the_gated_model_s_second_convolution():
    import adafilter_keras as ak

    def model(wrapped):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        x = keras.layers.BatchNormalization(name="bn")(x)
        outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
        built = keras.Model(inputs, outputs)
        built = ak.wrap(built, seed=0) if wrapped else built
        built.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        return built

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 8, 8, 3)).astype("float32"), np.array([0, 1, 0, 1])
    calls = {}
    for wrapped in (False, True):
        built = model(wrapped)
        built.train_on_batch(x, y)
        ops = profile_step.profile(built, x, y, steps=2)
        assert ops and all(seconds >= 0 and count > 0 for seconds, count in ops.values())
        calls[wrapped] = sum(count for name, (_, count) in ops.items() if "conv" in name.lower())
    # Two convolutions forward (and one more input gradient) where fine-tuning has one.
    assert calls[True] > calls[False] > 0


def test_ablations_time_fine_tuning_and_every_variant():
    setting = profile_step.step_time.ModelSetting("tiny", "SmallResNet", 16, 2)
    medians = profile_step.ablations(setting, repeats=2)
    assert list(medians) == ["finetune", *profile_step.ABLATIONS]
    assert all(seconds > 0 for seconds in medians.values())


def test_one_convolution_ablation_runs_the_fine_tuned_convolution_only(rng):
    import adafilter_keras as ak
    from adafilter_keras.wrapping.graph import sublayers

    model = profile_step.step_time.build("adafilter", "SmallResNet", 16)
    gated = [layer for layer in sublayers(model) if isinstance(layer, ak.AdaFilterConv2D)]
    layer = gated[0]
    layer.finetuned_kernel.assign(layer.finetuned_kernel * 2.0)  # the branches now differ
    x = rng.normal(size=(2, 16, 16, layer.pretrained_kernel.shape[2])).astype("float32")
    pretrained, finetuned = (keras.ops.convert_to_numpy(b) for b in layer(x))
    assert not np.allclose(pretrained, finetuned)

    assert profile_step.convolve_once(model) is model
    copied, once = (keras.ops.convert_to_numpy(b) for b in layer(x))
    np.testing.assert_allclose(once, finetuned, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(copied, once)
    gate = np.ones((2, layer.filters), "float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x, gate)), once, rtol=1e-5, atol=1e-5
    )
    assert all(g.call.__func__ is layer.call.__func__ for g in gated)
