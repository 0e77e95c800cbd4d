"""How large is the gradient that reaches the gate controller, and what sets its size?

For each backbone (`small_resnet` at a width and image size, pre-trained on MNIST-5k as in
`plain_keras.py`), wraps the model with `gradient_scale=1` and trains it with SGD(0.01,
momentum 0.9) on the UCI digits (10 per class, batch 16), recording at chosen steps the RMS over
filters of each gated layer's controller-head bias gradient (the summed per-example gradient of
the gate logits) with a 4x-wider or larger backbone beside it.

    python research/unseen_backbone/gradient_rms.py --output-dir /tmp/unseen \\
        --backbones 16x16 32x16 32x32 64x16 --steps 0 1 5 20 60
"""

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import plain_keras  # noqa: E402


def measure(output_dir, width, image_size, steps, variant):
    """Per recorded step, the per-layer RMS of the controller-head bias gradient."""
    import keras
    import tensorflow as tf

    import adafilter_keras
    from adafilter_keras.backbones.models import small_resnet
    from adafilter_keras.inspection import find_controller
    from adafilter_keras.transfer.tasks import load_task

    weights = plain_keras.source_backbone(output_dir, width, image_size, 8).get_weights()
    task = load_task("digits", image_size)
    (x, y), _ = task.sample("few_shot", 0, 10)
    x = x.astype("float32") / 255.0
    keras.utils.set_random_seed(0)
    backbone = small_resnet((image_size, image_size, 3), width=width)
    backbone.set_weights(weights)
    inputs = keras.Input((image_size, image_size, 3))
    model = keras.Model(inputs, keras.layers.Dense(10)(backbone(inputs)))
    model = adafilter_keras.wrap(model, seed=0, **({"gradient_scale": 1.0} | variant))
    controller = find_controller(model)
    biases = [head.bias for head in controller.heads]
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    records = {}
    for step in range(max(steps) + 1):
        index = rng.choice(len(x), 16, replace=False)
        with tf.GradientTape() as tape:
            loss = loss_fn(y[index], model(x[index], training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        if step in steps:
            lookup = {id(v): g for v, g in zip(model.trainable_variables, grads, strict=True)}
            records[step] = [
                float(np.sqrt(np.mean(np.square(lookup[id(b)].numpy())))) for b in biases
            ]
        optimizer.apply(grads, model.trainable_variables)
    return records


def build_parser():
    """Returns the argument parser of this script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=pathlib.Path, required=True)
    parser.add_argument("--backbones", nargs="+", default=["16x16", "32x32"], help="WIDTHxSIZE")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 20, 60])
    parser.add_argument("--variant", default="{}", help="wrap() overrides as JSON")
    return parser


def main(argv=None):
    """Measures and prints a table of the median (over layers) RMS per backbone and step."""
    args = build_parser().parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    variant = json.loads(args.variant)
    results = {}
    for spec in args.backbones:
        width, size = (int(v) for v in spec.split("x"))
        results[spec] = measure(args.output_dir, width, size, args.steps, variant)
    print("| backbone (width x px) | " + " | ".join(f"step {s}" for s in args.steps) + " |")
    print("|---" * (len(args.steps) + 1) + "|")
    for spec, records in results.items():
        cells = [f"{np.median(records[s]):.2e}" for s in args.steps]
        print(f"| {spec} | " + " | ".join(cells) + " |")
    path = args.output_dir / f"gradient_rms_{'_'.join(args.backbones)}.json"
    path.write_text(json.dumps({"variant": variant, "results": results}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
