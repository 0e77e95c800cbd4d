"""What keeps AdaFilter behind fine-tuning? Changes to how it trains, paired with the benchmark.

Each probe trains AdaFilter exactly as the transfer benchmark did before session 20 (larger
regime: 4 epochs, seeds 0-4; `BenchmarkSettings()`'s defaults) with one thing changed, and
pairs every run with the benchmark's `finetune` and default `adafilter` runs (same source
models, seeds, images and order). Probes of the training-time gate estimator (inference is
unchanged; in training the library draws hard gates with logistic noise, straight-through):

* `expected`: no noise, no hard decision: the gate is `sigmoid(logit)` in training too, the same
  function as the `expected` inference rule (training and inference compute the same network,
  and the gate's gradient is exact rather than straight-through);
* `deterministic`: the hard decision without noise, `1[logit > 0]`, with the relaxed gate's
  gradient (straight-through);
* `relaxed`: the noisy relaxed gate `sigmoid((logit + noise) / temperature)` as the forward value
  (binary Concrete, no hard decision).

Probes of how fast the network fits (the losing cell underfits, docs/evidence.md):

* `finetuned_gradient_x1.5`: the fine-tuned kernels' gradient times 1.5, about the inverse of
  the rate at which the gates pick them (a fine-tuned filter learns only from the examples that
  picked it, as if at that fraction of the learning rate);
* `ungated_shortcuts`: the 1x1 projection shortcuts (`*_0_conv`) not gated (`wrap(exclude=)`):
  plain fine-tuned convolutions; their gates stay near 0.5 in most cells.

A probe of the schedule (the harness recipe, `own`, only; under plain SGD it changes nothing):

* `controller_constant_rate`: the controller learns at the recipe's peak rate throughout, while
  every other weight follows its warm-up and cosine decay (the controller's gradient is
  multiplied by `peak / rate(step)`). Under the recipe the gates settle lower (62-72 %
  fine-tuned) than under a constant rate (75-85 %): does the decay freeze them early?

A probe of how fast the gates' rate moves (session 16: at the end of training the mean
straight-through gradient still points to the fine-tuned filters in most gated layers, at about
a twentieth of its per-example spread):

* `head_bias_x10`: the controller heads' biases (one per filter: the rate, before the input's
  part) learn at 10 times the rate of the rest of the controller, under both optimizers.

A probe of the trap a pre-trained choice sets (session 18): a filter whose gate picks the
pre-trained branch passes no gradient to its fine-tuned copy, which then stays near the
pre-trained filter, so the gate's gradient (the loss's change from one branch to the other)
stays near zero and nothing pulls the gate back:

* `finetuned_full_gradient`: the fine-tuned branch gets the gradient of every example, as if
  its gate had picked it (straight-through for the branch; the forward pass and the gate's
  gradient are unchanged): `benchmarks/finetuned_gradient.py`'s mix, which measured it on
  random gates in the few-shot regime (before session 9).

A probe of the heads' per-filter biases (session 18: which filters end on the pre-trained side
hardly agrees between seeds that start from the same source filters, so the biases' spread over
filters looks like noise):

* `layer_shared_bias`: every filter of a gated layer uses the mean of its head's biases, so
  the biases move together, one rate per layer before the input's part (they start equal).

A probe of how fast a layer's rate can move (sessions 16 and 18 found that at the end of
training the mean gradient of every layer's gates still favours the fine-tuned filters, but per
filter it is small against its noise; a layer's filters summed have about `sqrt(filters)` times
the signal to noise of one filter):

* `layer_rate`: every gated layer gets one more weight, a scalar added to all its filters'
  logits (starting at 0, scaled like the rest of the controller). Its gradient is the sum of
  the filters' gradients, so the layer's rate moves `filters` times faster than a filter's bias
  does, and its noise only about `sqrt(filters)` times.
* `layer_rate_x10`: the same with the offsets' gradient times 10. (Each layer's gates go all one
  way per run: the top layers' to the fine-tuned filters, the lower ones' to either side.)
* `ungated_stem`: the first convolution (`conv1_conv`, which sees the colour images) not gated
  (`wrap(exclude=)`): a plain fine-tuned convolution.

Runs go to OUTPUT_DIR/runs.jsonl (resumed); the table pairs the probe with fine-tuning and with
the default AdaFilter.

    python benchmarks/adafilter_probes.py --probe expected \
        --output-dir benchmarks/results/adafilter_probes/expected \
        --baseline-runs benchmarks/results/transfer
"""

import argparse
import json
import pathlib
import re
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adafilter_keras.layers import adafilter_conv2d, gate_controller, gate_sampling  # noqa: E402
from adafilter_keras.transfer import runs as benchmark_runs  # noqa: E402
from adafilter_keras.transfer.report import overall, pair_methods  # noqa: E402
from adafilter_keras.transfer.tasks import REGIMES, TASKS  # noqa: E402
from adafilter_keras.wrapping.wrap import DEFAULTS as WRAP_DEFAULTS  # noqa: E402


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


def scaled_finetuned_gradient(scale):
    """`AdaFilterConv2D`'s convolution with the fine-tuned kernel's gradient times `scale`."""
    original = adafilter_conv2d._convolve

    def convolve(inputs, kernels, **options):
        pretrained, finetuned = kernels
        finetuned = gate_sampling.scale_gradient(finetuned, scale)
        return original(inputs, (pretrained, finetuned), **options)

    return convolve


def controller_at_peak_rate(peak):
    """`SGDWithMultipliers.apply` with the controller's gradient scaled to the `peak` rate."""
    from keras import ops

    from adafilter_keras.training import optimizers

    original = optimizers.SGDWithMultipliers.apply

    def apply(self, grads, trainable_variables=None):
        variables = list(trainable_variables if trainable_variables is not None else [])
        variables = variables or list(self._trainable_variables)
        rate = ops.maximum(ops.cast(self.learning_rate, "float32"), 1e-12)
        scaled = [
            grad * ops.cast(peak / rate, grad.dtype)
            if grad is not None and "controller" in variable.path
            else grad
            for grad, variable in zip(grads, variables, strict=True)
        ]
        return original(self, scaled, trainable_variables)

    return apply


HEAD_BIASES = r"gate_controller/head_\d+/bias$"


def faster_head_biases(multiplier):
    """`_Cell._optimizer` with the controller heads' biases at `multiplier` times the rate."""
    from adafilter_keras.training import optimizers

    original = benchmark_runs._Cell._optimizer

    def optimizer(self):
        chosen = original(self)
        if isinstance(chosen, optimizers.SGDWithMultipliers):
            chosen.multipliers = {HEAD_BIASES: multiplier, **chosen.multipliers}
            chosen._patterns = [(re.compile(p), float(m)) for p, m in chosen.multipliers.items()]
            return chosen
        if type(chosen).__name__ != "SGD":
            raise SystemExit("head_bias_x10 runs under the own and sgd optimizers only.")
        return optimizers.SGDWithMultipliers(
            learning_rate=0.01, momentum=0.9, multipliers={HEAD_BIASES: multiplier}
        )

    return optimizer


def share_head_biases(original_init):
    """`GateController.__init__` whose heads add the mean of their biases to every filter."""
    import types

    from keras import ops

    def call(head, inputs):
        return ops.matmul(inputs, head.kernel) + ops.mean(head.bias)

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        for head in self.heads:
            head.call = types.MethodType(call, head)

    return init


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


def apply_probe(name):
    """Patches the library for probe `name`; returns the `wrap()` settings the probe adds."""
    if name in ESTIMATORS:
        gate_controller.sample_gates = patched(ESTIMATORS[name])
    elif name == "finetuned_gradient_x1.5":
        adafilter_conv2d._convolve = scaled_finetuned_gradient(1.5)
    elif name == "ungated_shortcuts":
        return {"exclude": ".*_0_conv"}
    elif name == "ungated_stem":
        return {"exclude": "conv1_conv"}
    elif name == "controller_constant_rate":
        from adafilter_keras.training import optimizers

        optimizers.SGDWithMultipliers.apply = controller_at_peak_rate(0.01)
    elif name == "head_bias_x10":
        benchmark_runs._Cell._optimizer = faster_head_biases(10.0)
    elif name == "finetuned_full_gradient":
        import finetuned_gradient  # benchmarks/, next to this script

        from adafilter_keras.layers import gated_batch_norm

        adafilter_conv2d.mix_branches = finetuned_gradient.mix_with_full_finetuned_gradient
        gated_batch_norm.mix_normalized = (
            finetuned_gradient.mix_normalized_with_full_finetuned_gradient
        )
    elif name == "layer_shared_bias":
        gate_controller.GateController.__init__ = share_head_biases(
            gate_controller.GateController.__init__
        )
    elif name in ("layer_rate", "layer_rate_x10"):
        gate_controller.GateController.build = add_layer_rates(
            gate_controller.GateController.build, 10.0 if name.endswith("x10") else 1.0
        )
    return {}


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
    return json.loads(record["key"])["variant"] == WRAP_DEFAULTS


def main(argv=None):
    """Runs AdaFilter under the probe and prints the paired table."""
    args = build_parser().parse_args(argv)
    output, baseline = pathlib.Path(args.output_dir), pathlib.Path(args.baseline_runs)
    if not (baseline / benchmark_runs.RESULTS).exists():
        raise SystemExit(f"No runs.jsonl in --baseline-runs {baseline}: run the benchmark first.")
    copy_sources = not (output / "sources").exists()
    if copy_sources and not (baseline / "sources").is_dir():
        raise SystemExit(
            f"No sources/ in --baseline-runs {baseline}: copy in the source models its runs were "
            "made with (the benchmark writes them to <output-dir>/sources)."
        )
    output.mkdir(parents=True, exist_ok=True)
    if copy_sources:
        shutil.copytree(baseline / "sources", output / "sources")
    settings = benchmark_runs.BenchmarkSettings(
        tasks=tuple(args.tasks),
        regimes=tuple(args.regimes),
        methods=("adafilter",),
        optimizers=tuple(args.optimizers),
        variant=apply_probe(args.probe),
    )
    probe = benchmark_runs.Benchmark(settings, output).run()
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
            "probe's budget (larger regime: 4 epochs, seeds 0-4, the benchmark before session "
            "20): pair it with such a directory, e.g. benchmarks/results/transfer."
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
