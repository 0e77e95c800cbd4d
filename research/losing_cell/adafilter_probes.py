"""What keeps AdaFilter behind fine-tuning in the losing cell? Changes to how it trains, paired.

Each probe trains AdaFilter as the transfer benchmark does with its larger regime at 4 epochs
(seeds 0-4; `BenchmarkSettings()`'s defaults) with one thing changed, and pairs every run with
a baseline directory's `finetune` and default `adafilter` runs (same source models, seeds,
images and order). The library is driven through public hooks: `Benchmark`'s
`optimizer_factory` and `model_hook`, `wrap()` settings, and the public functions the layers
call (`gate_controller.sample_gates`, `branches.mix_branches` / `mix_normalized`,
`GateController.build`), swapped for the process.

Probes of the training-time gate estimator (inference is unchanged; in training the library
draws hard gates with logistic noise, straight-through):

* `expected`: no noise, no hard decision: the gate is `sigmoid(logit)` in training too, the same
  function as the `expected` inference rule (the gate's gradient is exact);
* `deterministic`: the hard decision without noise, `1[logit > 0]`, with the relaxed gate's
  gradient (straight-through);
* `relaxed`: the noisy relaxed gate `sigmoid((logit + noise) / temperature)` as the forward value
  (binary Concrete, no hard decision).

Probes of how fast the network fits (the losing cell underfits, research/training_fit):

* `finetuned_gradient_x1.5`: the fine-tuned kernels' gradient times 1.5, about the inverse of
  the rate at which the gates pick them (an optimizer that scales it, `optimizer_factory`);
* `ungated_shortcuts`: the 1x1 projection shortcuts (`*_0_conv`) not gated (`wrap(exclude=)`);
* `ungated_stem`: the first convolution (`conv1_conv`) not gated.

A probe of the schedule (the `own` recipe only; under plain SGD it changes nothing):

* `controller_constant_rate`: the controller learns at the recipe's peak rate throughout, while
  every other weight follows its warm-up and cosine decay (the controller's gradient is
  multiplied by `peak / rate(step)`).

Probes of how fast the gates' rate moves:

* `head_bias_x10`: the controller heads' biases (one per filter) learn at 10 times the rate of
  the rest of the controller, under both optimizers;
* `layer_shared_bias`: every filter of a gated layer uses the mean of its head's biases, one
  rate per layer before the input's part (`model_hook`);
* `layer_rate`: every gated layer gets one more weight, a scalar added to all its filters'
  logits (starting at 0, scaled like the rest of the controller), whose gradient is the sum of
  the filters' gradients;
* `layer_rate_x10`: the same with the offsets' gradient times 10.

A probe of the trap a pre-trained choice might set (its fine-tuned copy gets no gradient):

* `finetuned_full_gradient`: the fine-tuned branch gets the gradient of every example, as if
  its gate had picked it (research/finetuned_gradient's mix).

Runs go to OUTPUT_DIR/runs.jsonl (resumed); the table pairs the probe with fine-tuning and with
the default AdaFilter.

    python research/losing_cell/adafilter_probes.py --probe expected \
        --output-dir research/losing_cell/results/probes/expected \
        --baseline-runs benchmarks/results/transfer_epochs4
"""

import argparse
import json
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "research" / "finetuned_gradient"))

from adafilter_keras.inspection import controller_or_none  # noqa: E402
from adafilter_keras.layers import gate_controller, gate_sampling  # noqa: E402
from adafilter_keras.transfer import runs as benchmark_runs  # noqa: E402
from adafilter_keras.transfer.report import overall, pair_methods  # noqa: E402
from adafilter_keras.transfer.runs import variant_key  # noqa: E402
from adafilter_keras.transfer.tasks import REGIMES, TASKS  # noqa: E402


def expected(logits, *, temperature, seed, training, inference="expected"):
    """The gate's mean, `sigmoid(logits)`, in training as at inference (no noise)."""
    del temperature, seed, training, inference
    return gate_sampling.gate_probability(logits)


def deterministic(logits, *, temperature, seed, training, inference="expected"):
    """`1[logits > 0]` forward, the gradient of `sigmoid(logits / temperature)`."""
    from keras import ops

    del seed, training, inference
    logits = ops.cast(logits, "float32")
    soft = ops.sigmoid(logits / temperature)
    return ops.cast(logits > 0, "float32") + (soft - ops.stop_gradient(soft))


def relaxed(logits, *, temperature, seed, training, inference="expected"):
    """`sigmoid((logits + logistic noise) / temperature)`: noisy, but not hard."""
    from keras import ops, random

    del training, inference
    logits = ops.cast(logits, "float32")
    uniform = random.uniform(
        ops.shape(logits), minval=1e-6, maxval=1.0 - 1e-6, dtype="float32", seed=seed
    )
    return ops.sigmoid((logits + ops.log(uniform) - ops.log1p(-uniform)) / temperature)


ESTIMATORS = {"expected": expected, "deterministic": deterministic, "relaxed": relaxed}


def patched(estimator):
    """`sample_gates` with `estimator` in training and the library's rules at inference."""
    original = gate_sampling.sample_gates

    def sample_gates(logits, *, temperature, seed, training, inference="expected"):
        if not training:
            return original(
                logits, temperature=temperature, seed=seed, training=training, inference=inference
            )
        return estimator(
            logits, temperature=temperature, seed=seed, training=training, inference=inference
        )

    return sample_gates


def with_scaled_gradients(optimizer, scale_of):
    """`optimizer`, whose `apply` first multiplies each variable's gradient by a scale.

    Args:
        optimizer: A Keras optimizer, changed in place.
        scale_of: Callable `(variable, optimizer) -> float or None`; None leaves the gradient
            as it is. It is called inside every update, so it may read the current learning
            rate. The scale acts before the optimizer's own changes (weight decay, multipliers),
            as a scale inside the model's backward pass would.

    Returns:
        `optimizer`.
    """
    from keras import ops

    apply = optimizer.apply

    def scaled_apply(grads, trainable_variables=None):
        scaled = []
        for grad, variable in zip(grads, trainable_variables, strict=True):
            scale = None if grad is None else scale_of(variable, optimizer)
            if scale is not None:
                grad = ops.convert_to_tensor(grad)
                grad = grad * ops.cast(scale, grad.dtype)
            scaled.append(grad)
        return apply(scaled, trainable_variables)

    optimizer.apply = scaled_apply
    return optimizer


def scaled_finetuned_gradient(scale):
    """An `optimizer_factory`: the benchmark's optimizer, fine-tuned kernels' gradient x`scale`."""

    def scale_of(variable, optimizer):
        del optimizer
        return scale if variable.path.endswith("finetuned_kernel") else None

    return lambda cell: with_scaled_gradients(benchmark_runs.default_optimizer(cell), scale_of)


def controller_at_peak_rate(peak):
    """An `optimizer_factory`: the controller's gradient scaled so it learns at the `peak` rate."""
    from keras import ops

    def scale_of(variable, optimizer):
        if "controller" not in variable.path:
            return None
        return peak / ops.maximum(ops.cast(optimizer.learning_rate, "float32"), 1e-12)

    return lambda cell: with_scaled_gradients(benchmark_runs.default_optimizer(cell), scale_of)


HEAD_BIASES = r"gate_controller/head_\d+/bias$"


def faster_head_biases(multiplier):
    """An `optimizer_factory`: the controller heads' biases at `multiplier` times the rate."""
    from adafilter_keras.training import optimizers

    def optimizer(cell):
        if cell.optimizer == "own":
            return benchmark_runs.own_recipe(
                cell.steps, cell.method, multipliers={HEAD_BIASES: multiplier}
            )
        if cell.optimizer != "sgd":
            raise SystemExit("head_bias_x10 runs under the own and sgd optimizers only.")
        return optimizers.SGDWithMultipliers(
            learning_rate=0.01, momentum=0.9, multipliers={HEAD_BIASES: multiplier}
        )

    return optimizer


def share_head_biases(model, cell=None):
    """A `model_hook`: the controller's heads add the mean of their biases to every filter."""
    import types

    from keras import ops

    del cell

    def call(head, inputs):
        return ops.matmul(inputs, head.kernel) + ops.mean(head.bias)

    controller = controller_or_none(model)
    for head in controller.heads if controller is not None else ():
        head.call = types.MethodType(call, head)


def add_layer_rates(original_build, multiplier=1.0):
    """`GateController.build` that adds one logit offset per gated layer to its head.

    The offset's gradient is multiplied by `multiplier` (on top of the controller's scale).
    """
    import types

    from keras import ops

    def offset_call(rate):
        def call(head, inputs):
            offset = gate_sampling.scale_gradient(ops.convert_to_tensor(rate), multiplier)
            return ops.matmul(inputs, head.kernel) + head.bias + offset

        return call

    def build(self, input_shape):
        original_build(self, input_shape)
        for i, head in enumerate(self.heads):
            rate = self.add_weight(name=f"layer_rate_{i}", shape=(), initializer="zeros")
            head.call = types.MethodType(offset_call(rate), head)

    return build


class Probe:
    """What a probe changes: `wrap()` settings, and the `Benchmark` hooks it needs.

    Attributes:
        variant: `wrap()` settings the probe adds (part of the runs' keys).
        optimizer_factory: For `Benchmark(optimizer_factory=)`, or None.
        model_hook: For `Benchmark(model_hook=)`, or None.
    """

    def __init__(self, variant=None, optimizer_factory=None, model_hook=None):
        self.variant = variant or {}
        self.optimizer_factory = optimizer_factory
        self.model_hook = model_hook


def apply_probe(name):
    """Sets up probe `name`: swaps the public functions it replaces, returns its `Probe`."""
    if name in ESTIMATORS:
        gate_controller.sample_gates = patched(ESTIMATORS[name])
    elif name == "finetuned_gradient_x1.5":
        return Probe(optimizer_factory=scaled_finetuned_gradient(1.5))
    elif name == "ungated_shortcuts":
        return Probe({"exclude": ".*_0_conv"})
    elif name == "ungated_stem":
        return Probe({"exclude": "conv1_conv"})
    elif name == "controller_constant_rate":
        return Probe(optimizer_factory=controller_at_peak_rate(0.01))
    elif name == "head_bias_x10":
        return Probe(optimizer_factory=faster_head_biases(10.0))
    elif name == "finetuned_full_gradient":
        import finetuned_gradient  # research/finetuned_gradient/

        finetuned_gradient.use_full_finetuned_gradient()
    elif name == "layer_shared_bias":
        return Probe(model_hook=share_head_biases)
    elif name in ("layer_rate", "layer_rate_x10"):
        gate_controller.GateController.build = add_layer_rates(
            gate_controller.GateController.build, 10.0 if name.endswith("x10") else 1.0
        )
    return Probe()


PROBES = (
    *ESTIMATORS,
    "finetuned_gradient_x1.5",
    "ungated_shortcuts",
    "ungated_stem",
    "controller_constant_rate",
    "head_bias_x10",
    "finetuned_full_gradient",
    "layer_shared_bias",
    "layer_rate",
    "layer_rate_x10",
)


def build_parser():
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe", required=True, choices=PROBES, help="what to change")
    parser.add_argument("--output-dir", required=True, help="where runs.jsonl goes (resumed)")
    parser.add_argument(
        "--baseline-runs",
        required=True,
        help="a benchmark output directory whose finetune and adafilter runs and source models "
        "to pair with",
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=list(benchmark_runs.OPTIMIZERS),
        choices=benchmark_runs.OPTIMIZERS,
        help="as in the benchmark (default: both)",
    )
    return parser


def _same_budget(record, settings):
    """Whether a baseline run had the probe's budget (steps or epochs, shots, sizes, source)."""
    key = json.loads(record["key"])
    mine = json.loads(
        benchmark_runs.run_key(
            settings, key["task"], key["regime"], "adafilter", key["optimizer"], key["seed"]
        )
    )
    return all(key[name] == mine[name] for name in mine if name not in ("method", "variant"))


def _is_default(record):
    return json.loads(record["key"])["variant"] == variant_key({})


def main(argv=None):
    """Runs AdaFilter under the probe and prints the paired table."""
    args = build_parser().parse_args(argv)
    output, baseline = pathlib.Path(args.output_dir), pathlib.Path(args.baseline_runs)
    if not (baseline / benchmark_runs.RESULTS).exists():
        raise SystemExit(f"No runs.jsonl in --baseline-runs {baseline}: run the benchmark first.")
    output.mkdir(parents=True, exist_ok=True)
    # The baseline's source models, if it kept them; otherwise the benchmark pre-trains them
    # from seed 0 into OUTPUT_DIR/sources, the same models as the baseline's where its runs
    # were made by the same code.
    if not (output / "sources").exists() and (baseline / "sources").is_dir():
        shutil.copytree(baseline / "sources", output / "sources")
    probe_setup = apply_probe(args.probe)
    settings = benchmark_runs.BenchmarkSettings(
        tasks=tuple(args.tasks),
        regimes=tuple(args.regimes),
        methods=("adafilter",),
        optimizers=tuple(args.optimizers),
        variant=probe_setup.variant,
    )
    probe = benchmark_runs.Benchmark(
        settings,
        output,
        optimizer_factory=probe_setup.optimizer_factory,
        model_hook=probe_setup.model_hook,
    ).run()
    cells = {(r["task"], r["regime"], r["optimizer"]) for r in probe}
    base = [
        r
        for r in benchmark_runs.Benchmark(settings, baseline).done().values()
        if (r["task"], r["regime"], r["optimizer"]) in cells
        and (r["method"] == "finetune" or (r["method"] == "adafilter" and _is_default(r)))
        and _same_budget(r, settings)
    ]
    if not base:
        raise SystemExit(
            f"No finetune or default adafilter runs in --baseline-runs {baseline} with this "
            "probe's budget (larger regime: 4 epochs, seeds 0-4): pair it with such a "
            "directory, e.g. benchmarks/results/transfer_epochs4."
        )
    probe = [dict(r, method="probe") for r in probe]
    print(f"AdaFilter under the probe {args.probe!r}, points (mean ± 95% interval)")
    print("| optimizer | split | probe − finetune | probe − default adafilter | cells |")
    print("|---|---|---|---|---|")
    for optimizer in args.optimizers:
        for metric in ("val_accuracy", "test_accuracy"):
            columns = [
                [
                    row
                    for row in pair_methods(probe + base, "probe", other, metric)
                    if row["optimizer"] == optimizer
                ]
                for other in ("finetune", "adafilter")
            ]
            means = [overall(rows) for rows in columns]
            per_cell = ", ".join(
                f"{row['task']} {row['regime']} {row['difference']:+.1f}" for row in columns[0]
            )
            print(
                f"| {optimizer} | {metric.split('_')[0]} | {means[0][0]:+.2f} ± {means[0][1]:.2f} "
                f"| {means[1][0]:+.2f} ± {means[1][1]:.2f} | vs finetune: {per_cell} |"
            )


if __name__ == "__main__":
    main()
