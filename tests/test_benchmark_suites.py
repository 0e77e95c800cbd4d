"""The benchmark's model axis: backbones, suites, the rate-matched baseline and robustness."""

import dataclasses
import io
import json
import math

import keras
import pytest
from support import tiny_benchmark

from adafilter_keras import cli, wrap
from adafilter_keras.transfer import backbones, command, report
from adafilter_keras.transfer.runs import (
    MATCHED,
    Benchmark,
    matched_rates,
    run_key,
)

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the benchmark resizes images with TensorFlow"
)


def _benchmark_args(*flags):
    return cli.build_parser().parse_args(["benchmark", *flags])


def test_backbone_specs_parse_and_refuse_unknown_names_and_too_small_images():
    assert backbones.parse("resnet32@32", 16) == ("resnet32", 32)
    assert backbones.parse("plain", 16) == ("plain", 16)
    with pytest.raises(ValueError, match=r"Unknown benchmark backbone 'resnet99'.*NAME@PIXELS"):
        backbones.parse("resnet99@16", 16)
    with pytest.raises(ValueError, match="resnet50v2 needs images of at least 32 px"):
        backbones.parse("resnet50v2@16", 16)
    with pytest.raises(ValueError, match="must be a number of pixels"):
        backbones.parse("plain@big", 16)


@pytest.mark.parametrize("name", [n for n in backbones.BACKBONES if n != "resnet50v2"])
def test_every_backbone_keeps_its_own_bn_momentum_and_has_convolutions_to_gate(name):
    model = backbones.BACKBONES[name].build(16)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    expected = backbones.LEGACY_BN_MOMENTUM if name == backbones.LEGACY else 0.99
    assert all(layer.momentum == expected for layer in norms)
    assert (not norms) == name.startswith("plain")  # the stacks without batch normalization
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    head = keras.layers.Dense(3, name="head")(model.output)
    gated = wrap(keras.Model(model.input, head))
    assert len(gated.get_layer("gate_controller").filters) == len(convs)


def test_legacy_runs_keep_their_keys_and_other_backbones_are_named_in_theirs():
    legacy = tiny_benchmark()
    key = json.loads(run_key(legacy, "digits", "few_shot", "finetune", "sgd", 0))
    assert "backbone" not in key and key["width"] == legacy.width
    other = dataclasses.replace(legacy, backbone="resnet16")
    named = json.loads(run_key(other, "digits", "few_shot", "finetune", "sgd", 0))
    assert named["backbone"] == "resnet16" and "width" not in named
    plain = dataclasses.replace(legacy, backbone="plain")
    assert run_key(plain, "digits", "few_shot", "finetune", "sgd", 0) != json.dumps(named)


def test_suites_expand_into_one_settings_per_backbone_with_its_image_size():
    selection = command.suite_from(_benchmark_args("--suite", "selection"))
    assert [s.model for s in selection] == list(command.SUITE_BACKBONES["selection"])
    assert len({s.backbone for s in selection}) >= 4
    assert {s.image_size for s in selection} == {16, 32}
    confirmation = command.suite_from(_benchmark_args("--suite", "confirmation"))
    # Confirmation runs other backbones than the ones defaults are chosen on, with 5 seeds.
    assert not {s.backbone for s in confirmation} & {s.backbone for s in selection}
    assert all(s.seeds == (0, 1, 2, 3, 4) for s in confirmation)
    assert all(set(s.optimizers) == {"sgd", "own", "adam"} for s in confirmation)
    assert all(MATCHED in s.methods for s in confirmation)
    chosen = command.suite_from(
        _benchmark_args("--suite", "selection", "--backbones", "plain@8", "resnet32")
    )
    assert [(s.backbone, s.image_size) for s in chosen] == [("plain", 8), ("resnet32", 16)]
    with pytest.raises(ValueError, match="names a backbone twice"):
        command.suite_from(_benchmark_args("--backbones", "plain@8", "plain@8"))
    # The 0.1 tables' preset still runs its one backbone.
    (full,) = command.suite_from(_benchmark_args("--suite", "full"))
    # Without --suite: the confirmation suite, whose numbers the documentation reports.
    assert command.suite_from(_benchmark_args()) == confirmation
    assert full.backbone == backbones.LEGACY


def test_matched_method_needs_adafilter_and_says_so_before_any_work(tmp_path):
    settings = tiny_benchmark(methods=("finetune", MATCHED))
    with pytest.raises(ValueError, match="add adafilter to the methods"):
        Benchmark(settings, tmp_path)
    assert not tmp_path.joinpath("runs.jsonl").exists()


def test_matched_rates_are_the_learned_fractions_clipped_into_the_open_interval():
    record = {"gates": [{"fraction_finetuned": f} for f in (0.0, 0.37, 1.0)]}
    assert matched_rates(record) == [0.02, 0.37, 0.98]
    with pytest.raises(ValueError, match="no gate report"):
        matched_rates({"key": "k", "gates": None})


def test_suite_of_two_backbones_runs_random_gates_at_each_seeds_learned_rates(tmp_path):
    base = tiny_benchmark(methods=("finetune", "adafilter", MATCHED), seeds=(0, 1))
    suite = [
        dataclasses.replace(base, backbone="resnet16", image_size=8),
        dataclasses.replace(base, backbone="plain", image_size=8),
    ]
    records = Benchmark(suite, tmp_path, stream=io.StringIO()).run()
    assert len(records) == 12
    assert {r["backbone"] for r in records} == {"resnet16@8", "plain@8"}
    learned = {(r["backbone"], r["seed"]): r for r in records if r["method"] == "adafilter"}
    for record in (r for r in records if r["method"] == MATCHED):
        paired = learned[record["backbone"], record["seed"]]
        assert record["random_rate"] == matched_rates(paired)
        assert len(record["random_rate"]) == len(paired["gates"])
    # The report pairs cells per backbone.
    rows = report.compare(records)
    assert {r["task"] for r in rows} == {"digits resnet16@8", "digits plain@8"}
    assert report.pair_methods(records, "adafilter", MATCHED)
    table = report.write(records, tmp_path)
    assert "**Robustness**" in table and "learned − rate-matched" in table
    # The same suite resumes with nothing left to run.
    again = io.StringIO()
    Benchmark(suite, tmp_path, stream=again).run()
    assert "resuming: 12 of 12 runs" in again.getvalue()


def _record(method, seed, accuracy, optimizer="sgd", gates=None):
    return dict(
        task="digits", backbone="resnet32@32", regime="few_shot", optimizer=optimizer,
        method=method, seed=seed, test_accuracy=accuracy, val_accuracy=accuracy, gates=gates,
    )  # fmt: skip


def test_robustness_reports_the_worst_seed_the_rate_matched_gap_and_the_gates():
    instruments = {"probability_spread": 0.1, "train_inference_agreement": 0.9}
    gates = [
        {"fraction_finetuned": 0.2, "disagreement": 0.05, **instruments},
        {"fraction_finetuned": 0.95, "disagreement": 0.01, **instruments},
        {"fraction_finetuned": 0.6, "disagreement": 0.03, **instruments},
    ]
    records = []
    for seed, (base, learned, matched) in enumerate(
        [(0.90, 0.91, 0.90), (0.90, 0.86, 0.88), (0.80, 0.82, 0.83)]
    ):
        records += [
            _record("finetune", seed, base),
            _record("adafilter", seed, learned, gates=gates),
            _record(MATCHED, seed, matched),
        ]
    (verdict,) = report.robustness(records).values()
    worst = verdict["worst_seed"]
    assert math.isclose(worst["difference"], -4.0) and worst["seed"] == 1
    assert worst["met"] is False  # 4 points below the same seed's fine-tuning
    # Learned - matched: +1, -2, -1 points.
    assert math.isclose(verdict["versus_matched"]["mean"], -2 / 3)
    assert verdict["versus_matched"]["met"] is False
    assert verdict["gates"]["fraction_finetuned"] == [0.2, 0.95]
    assert verdict["gates"]["within_range"] is False
    assert math.isclose(verdict["gates"]["input_dependent_share"], 2 / 3)
    assert verdict["gates"]["input_dependent"] is True
    assert "-4.0 (digits resnet32@32 few_shot, seed 1) ✗" in report.markdown(records)
