r"""Does `wrap()` with its defaults hold against fine-tuning on a backbone the benchmark never ran?

The plain-Keras path a user takes: a ResNet-style backbone (`small_resnet` of 32/64/128 filters,
Keras's default BN momentum 0.99) pre-trained on MNIST-5k at 32 px for 8 epochs, a new Dense head,
then on the UCI digits with 10 images per class: `model.compile(optimizer)` and `model.fit` with
batch 16 for 30 epochs (about 210 steps), scored once on the fixed test set at the end.
Methods: `finetune` (plain Keras), and `wrap()` with any overrides (`--variant NAME=JSON`; the
name `adafilter` is `wrap()`'s defaults). A variant's value `"matched"` for `random_rate` runs
random gates at the per-layer rates the `adafilter` run of the same seed and optimizer reached.

    python research/unseen_backbone/plain_keras.py --output-dir /tmp/unseen --seeds 0 1 2 \\
        --optimizers sgd adam --variant adafilter='{}' \\
        --variant random_matched='{"policy": "random", "random_rate": "matched"}'

Runs append to OUTPUT_DIR/runs.jsonl and are skipped when already there (resumable); the table
pairs every variant with `finetune` by seed (mean, 95 % interval, worst seed).
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

OPTIMIZERS = ("sgd", "adam")


PIXEL_SCALE = {"unit": 1.0 / 255.0, "raw": 1.0}


def _images(data, pixels="unit"):
    """Images as float32: in [0, 1] (`unit`) or the raw [0, 255] a user may feed (`raw`)."""
    images, labels = data
    return images.astype("float32") * PIXEL_SCALE[pixels], labels


def source_backbone(output_dir, width, image_size, epochs, pixels="unit"):
    """The pre-trained backbone, trained once and kept in OUTPUT_DIR (regenerated if absent)."""
    import keras

    from adafilter_keras.backbones.models import small_resnet
    from adafilter_keras.transfer.tasks import load_task

    suffix = "" if pixels == "unit" else f"_{pixels}"
    path = pathlib.Path(output_dir) / f"source_w{width}_{image_size}px_e{epochs}{suffix}.weights.h5"
    backbone = small_resnet((image_size, image_size, 3), width=width)
    if path.exists():
        backbone.load_weights(path)
        return backbone
    keras.utils.set_random_seed(1234)
    x, y = _images(load_task("digits", image_size).source, pixels)
    model = keras.Sequential([backbone, keras.layers.Dense(10)])
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=2)
    backbone.save_weights(path)
    return backbone


def make_optimizer(name):
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(0.01, momentum=0.9)
    return keras.optimizers.Adam()


def run(args, backbone_weights, variant, overrides, optimizer, seed, matched_rates=None):
    """One run: returns its record."""
    import keras

    import adafilter_keras
    from adafilter_keras.backbones.models import small_resnet
    from adafilter_keras.transfer.tasks import load_task

    task = load_task("digits", args.image_size)
    train, validation = task.sample("few_shot", seed, args.shots)
    (x, y), (xv, yv), (xt, yt) = (
        _images(data, args.pixels) for data in (train, validation, task.test)
    )
    keras.utils.set_random_seed(seed)
    backbone = small_resnet((args.image_size,) * 2 + (3,), width=args.width)
    backbone.set_weights(backbone_weights)
    inputs = keras.Input((args.image_size, args.image_size, 3))
    model = keras.Model(inputs, keras.layers.Dense(10)(backbone(inputs)))
    if variant != "finetune":
        settings = dict(overrides)
        if settings.get("random_rate") == "matched":
            settings["random_rate"] = matched_rates
        model = adafilter_keras.wrap(model, seed=seed, **settings)
    model.compile(
        make_optimizer(optimizer),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    started = time.time()
    history = model.fit(
        x, y, batch_size=16, epochs=args.epochs, validation_data=(xv, yv), verbose=0
    )
    record = {
        "variant": variant,
        "overrides": overrides,
        "optimizer": optimizer,
        "seed": seed,
        "train_accuracy": history.history["accuracy"][-1],
        "validation_accuracy": history.history["val_accuracy"][-1],
        "test_accuracy": float(model.evaluate(xt, yt, verbose=0)[1]),
        "seconds": time.time() - started,
    }
    controller = adafilter_keras.inspection.controller_or_none(model)
    if controller is not None and controller.policy == "learned":
        # The rates the learned gates reached, on the training images.
        record["gate_report"] = list(adafilter_keras.gate_report(model, x))
    return record


def report(records, variants, baseline="finetune"):
    """Prints each variant against `baseline`, paired by (optimizer, seed)."""
    by_key = {(r["variant"], r["optimizer"], r["seed"]): r for r in records}
    print(f"| optimizer | variant | test % | vs {baseline} (mean ± 95 %) | worst seed | val vs |")
    print("|---|---|---|---|---|---|")
    for optimizer in sorted({r["optimizer"] for r in records}):
        for variant in variants:
            pairs = [
                (by_key[(variant, optimizer, s)], by_key.get((baseline, optimizer, s)))
                for (v, o, s) in sorted(by_key)
                if v == variant and o == optimizer
            ]
            pairs = [(a, b) for a, b in pairs if b is not None]
            if not pairs or variant == baseline:
                continue
            test = np.array([100 * a["test_accuracy"] for a, _ in pairs])
            diff = np.array([100 * (a["test_accuracy"] - b["test_accuracy"]) for a, b in pairs])
            val = np.array(
                [100 * (a["validation_accuracy"] - b["validation_accuracy"]) for a, b in pairs]
            )
            half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            print(
                f"| {optimizer} | {variant} | {test.mean():.1f} | {diff.mean():+.1f} ± {half:.1f} "
                f"(n={len(diff)}) | {diff.min():+.1f} | {val.mean():+.1f} |"
            )


def build_parser():
    """Returns the argument parser of this script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=pathlib.Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=["sgd"])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a wrap() variant: name and JSON overrides (repeatable); finetune always runs",
    )
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--source-epochs", type=int, default=8)
    parser.add_argument(
        "--pixels",
        choices=tuple(PIXEL_SCALE),
        default="unit",
        help="inputs in [0, 1] (unit) or raw [0, 255] for source and target (default unit)",
    )
    parser.add_argument("--report-only", action="store_true")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    variants = {"finetune": {}}
    for item in args.variant:
        name, _, text = item.partition("=")
        try:
            variants[name] = json.loads(text or "{}")
        except json.JSONDecodeError as error:
            parser.error(f"--variant {item!r}: the overrides are not JSON ({error})")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results = args.output_dir / "runs.jsonl"
    setting = {k: getattr(args, k) for k in ("width", "image_size", "shots", "epochs")}
    setting["source_epochs"] = args.source_epochs
    if args.pixels != "unit":
        setting["pixels"] = args.pixels
    records = []
    if results.exists():
        records = [json.loads(line) for line in results.read_text().splitlines() if line]
        records = [r for r in records if r.get("setting") == setting]
    done = {
        (r["variant"], json.dumps(r["overrides"], sort_keys=True), r["optimizer"], r["seed"])
        for r in records
    }
    if not args.report_only:
        weights = source_backbone(
            args.output_dir, args.width, args.image_size, args.source_epochs, args.pixels
        ).get_weights()
        for optimizer in args.optimizers:
            for seed in args.seeds:
                for variant, overrides in variants.items():
                    key = (variant, json.dumps(overrides, sort_keys=True), optimizer, seed)
                    if key in done:
                        continue
                    rates = None
                    if overrides.get("random_rate") == "matched":
                        learned = [
                            r for r in records
                            if r["variant"] == "adafilter" and r["optimizer"] == optimizer
                            and r["seed"] == seed
                        ]  # fmt: skip
                        if not learned:
                            print(f"skip {variant}: no adafilter run of seed {seed} to match")
                            continue
                        rates = [
                            min(max(layer["fraction_finetuned"], 0.01), 0.99)
                            for layer in learned[-1]["gate_report"]
                        ]
                    record = run(args, weights, variant, overrides, optimizer, seed, rates)
                    record["setting"] = setting
                    records.append(record)
                    with results.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    print(
                        f"{optimizer} seed {seed} {variant}: "
                        f"test {100 * record['test_accuracy']:.1f} "
                        f"(train {100 * record['train_accuracy']:.0f}, {record['seconds']:.0f} s)",
                        flush=True,
                    )
    latest = {}
    for r in records:
        if r["variant"] in variants and r["overrides"] == variants[r["variant"]]:
            latest[(r["variant"], r["optimizer"], r["seed"])] = r
    report(list(latest.values()), [v for v in variants if v != "finetune"])
    if "random_matched" in variants:
        print()
        report(list(latest.values()), [v for v in variants if v != "finetune"], "random_matched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
