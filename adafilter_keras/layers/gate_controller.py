"""GateController: the recurrent network that picks, per example and per filter, a branch."""

import math

import keras
import numpy as np
from keras import ops

from adafilter_keras import validation
from adafilter_keras.layers import settings as gate_settings
from adafilter_keras.layers.gate_sampling import (
    gate_probability,
    normalize_gradient,
    sample_gates,
    scale_gradient,
)

POLICIES = gate_settings.POLICIES
_DEFAULTS = gate_settings.DEFAULTS

# Per-layer running sums kept in training while statistics are on, in this order (`gate_report`).
_REPORT_SUMS = ("examples", "disagreement", "probability_spread", "agreement")


class _Statistics:
    """The statistics variables, held in a plain object so that the layer's tracker skips it.

    `gate_sums` holds every gated layer's per-filter sums end to end (layer `i` at
    `offsets[i]:offsets[i + 1]`), `report_sums` one row of `_REPORT_SUMS` per layer: one
    variable each, so a training step updates them with two assignments whatever the depth.
    `pending` collects `(index, gate, probability)` of the gated layers already called in the
    current forward pass, until the last one accumulates them all at once.
    """

    def __init__(self, gate_sums, report_sums, filters):
        self.gate_sums = gate_sums
        self.report_sums = report_sums
        self.offsets = np.cumsum([0, *filters]).tolist()
        self.pending = []
        self._averages = {}

    @property
    def variables(self):
        return [self.gate_sums, self.report_sums]

    def averaging(self, indices):
        """Two constants for the gated layers `indices` (in call order), built once per set.

        The `(their filters, all layers)` matrix whose column `i` averages layer `i`'s filters
        (zero for a layer not called), and the `(1, all layers)` row that is 1 for the layers
        called.
        """
        key = tuple(indices)
        if key not in self._averages:
            layers = len(self.offsets) - 1
            sizes = [self.offsets[i + 1] - self.offsets[i] for i in indices]
            matrix = np.zeros((sum(sizes), layers), dtype="float32")
            called = np.zeros((1, layers), dtype="float32")
            start = 0
            for index, size in zip(indices, sizes, strict=True):
                matrix[start : start + size, index] = 1.0 / size
                called[0, index] = 1.0
                start += size
            self._averages[key] = matrix, called
        return self._averages[key]


@keras.saving.register_keras_serializable(package="adafilter_keras")
class GateController(keras.layers.Layer):
    """Computes the gates of every gated layer with one LSTM cell shared across depth.

    One controller serves all `n = len(filters)` gated layers of a model and is called once per
    gated layer, in a fixed order, threading the LSTM state from call to call:

        gate_0, h, c = controller(x_0, index=0)               # zero initial state
        gate_1, h, c = controller(x_1, states=[h, c], index=1)
        ...

    where `x_i` is the tensor that enters gated layer `i`, shape `(batch, height, width,
    input_channels[i])`. For call `i` the controller global-average-pools `x_i` (and, with
    `normalize_inputs`, standardizes it), projects it with `projections[i]` (a `Dense(units)`) to
    the common width, runs the shared `LSTMCell(units)`, and
    maps the new hidden state through `heads[i]` (a `Dense(filters[i])`) to one logit per filter.
    Gates are exactly 0 or 1 (1 picks the fine-tuned filter): in training by the straight-through
    binary Gumbel estimator at `temperature` (a gate is 1 with probability `sigmoid(logit)`);
    at inference by the rule `inference` (`"expected"`: `sigmoid(logit)`, the training gate's
    mean; `"threshold"`: `1[logit > 0]`). Without `states` the call starts from the zero state,
    sized from the batch, so the state is reset for every batch.

    Three settings make the controller learn from the first steps (research/controller_defaults
    has the measurements behind their defaults):

    * `initial_rate`: the heads' bias starts at `logit(initial_rate)`, so each gate starts as a
      coin that picks the fine-tuned filter with that probability.
    * `gradient_scale`: the gradient that reaches the controller's weights is multiplied by this
      factor (the forward pass is unchanged); with `normalize_gradient`, it is the size the
      gradient is normalized to instead. With SGD this is a learning-rate multiplier for
      the controller that works with any optimizer a user compiles with. The controller reads
      the backbone's activations without sending gradient back into them.
    * `warmup_steps`: for the first training steps every gate is forced to 1 (plain fine-tuning,
      so the fine-tuned filters move away from the pre-trained ones and the gates get a
      gradient), while the controller already learns from the straight-through gradient.

    With `policy="random"` the controller has no weights: in training every gate is 1 with
    probability `random_rate`, independently; at inference the gate is the constant `random_rate`
    (the expected mix of the two branches). This is the "is the learned policy any good?"
    ablation (stochastic fine-tuning); the state is passed through unchanged.

    Gate statistics cost nothing unless asked for. `adafilter_keras.gate_report(model, x)` computes
    them on demand from a batch or dataset. To follow the gates during training instead, the
    `GateStatistics` callback calls `start_statistics()`: from then on (once the model re-makes its
    train function) every training step accumulates, per layer and per filter, how often the
    fine-tuned branch was chosen, read by `gate_statistics()` and `gate_report()` and cleared by
    `reset_gate_statistics()`; `stop_statistics()` removes them. They are never saved with the
    model.

    Every gate argument defaults to `wrap()`'s value, read from `GateSettings` (`units` is its
    `controller_units`, `warmup_steps` its `gate_warmup_steps`, `normalize_inputs` and
    `normalize_gradient` its `normalize_controller_inputs` and `normalize_controller_gradient`),
    and is checked by the same rule, so a model assembled by hand gets the gates `wrap()` builds.

    Args:
        filters: List with the number of filters of each gated layer, in controller order.
        input_channels: List with the number of input channels of each gated layer.
        units: Width of the projections and of the LSTM cell.
        temperature: Temperature of the relaxed gate used for the gradient in training (> 0).
        seed: Optional int seed of the gate noise.
        layer_names: Optional list with a name for each gated layer (for summaries and logs);
            defaults to `"gated_layer_{i}"`.
        policy: `"learned"` (the recurrent gate network) or `"random"` (see above).
        random_rate: Probability of a fine-tuned gate under `policy="random"`, in (0, 1), or a
            list of one such probability per gated layer (to draw random gates at the rates
            a learned controller reached: `gate_report`'s `fraction_finetuned`).
        initial_rate: Initial probability of a fine-tuned gate under `policy="learned"`, in
            (0, 1).
        gradient_scale: Factor (> 0) on the gradient reaching the controller's weights.
        inference: `"expected"` or `"threshold"`, the inference rule of learned gates.
        warmup_steps: Training steps (calls with `training=True` of gated layer 0) during which
            every learned gate is forced to 1. Only then does the controller keep a step count
            (the non-trainable weight `training_steps`; otherwise `training_steps` is None).
        normalize_inputs: If True, each pooled input is standardized per channel before its
            projection: over the batch in training, with moving statistics (momentum 0.9) at
            inference. The pooled activations of a pre-trained network share a large common
            part; without this the logits barely vary across examples.
        normalize_gradient: If True, the gradient reaching each gated layer's logits is
            normalized so that the head's bias receives a gradient of RMS `gradient_scale` at
            every step (`gate_sampling.normalize_gradient`), whatever the size of the loss
            gradient: the controller then learns at one rate on any backbone (the loss gradient
            per filter shrinks with the layer's width and grows as the fine-tuned filters move
            away from the pre-trained ones). If False, the gradient is multiplied by
            `gradient_scale`.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(
        self,
        filters,
        input_channels,
        units=_DEFAULTS.controller_units,
        temperature=_DEFAULTS.temperature,
        seed=None,
        layer_names=None,
        policy=_DEFAULTS.policy,
        random_rate=_DEFAULTS.random_rate,
        initial_rate=_DEFAULTS.initial_rate,
        gradient_scale=_DEFAULTS.gradient_scale,
        inference=_DEFAULTS.inference,
        warmup_steps=_DEFAULTS.gate_warmup_steps,
        normalize_inputs=_DEFAULTS.normalize_controller_inputs,
        normalize_gradient=_DEFAULTS.normalize_controller_gradient,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = _int_list("filters", filters)
        self.input_channels = _int_list("input_channels", input_channels)
        if len(self.filters) != len(self.input_channels):
            raise ValueError(
                "`filters` and `input_channels` must have one entry per gated layer each. "
                f"Received: len(filters)={len(self.filters)}, "
                f"len(input_channels)={len(self.input_channels)}"
            )
        check = gate_settings.check
        self.units = check("controller_units", units, name="units")
        self.temperature = check("temperature", temperature)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
        self.seed = seed
        if layer_names is None:
            layer_names = [f"gated_layer_{i}" for i in range(len(self.filters))]
        if isinstance(layer_names, str) or len(layer_names) != len(self.filters):
            raise ValueError(
                "`layer_names` must be a list with one name per gated layer. "
                f"Received: layer_names={layer_names!r} for {len(self.filters)} gated layers"
            )
        self.layer_names = [str(name) for name in layer_names]
        self.policy = check("policy", policy)
        self.random_rate = check("random_rate", random_rate)
        if isinstance(self.random_rate, list) and len(self.random_rate) != len(self.filters):
            raise ValueError(
                "`random_rate` must be one rate, or a list of one rate per gated layer. "
                f"Received: {len(self.random_rate)} rates for {len(self.filters)} gated layers"
            )
        self.initial_rate = check("initial_rate", initial_rate)
        self.gradient_scale = check("gradient_scale", gradient_scale)
        self.inference = check("inference", inference)
        self.warmup_steps = check("gate_warmup_steps", warmup_steps, name="warmup_steps")
        self.normalize_inputs = check(
            "normalize_controller_inputs", normalize_inputs, name="normalize_inputs"
        )
        self.normalize_gradient = check(
            "normalize_controller_gradient", normalize_gradient, name="normalize_gradient"
        )
        self.training_steps = None  # a weight only with a gate warm-up (see `build`)
        self._statistics = None  # see `start_statistics`
        if self.policy == "random":
            self.projections, self.cell, self.heads, self.normalizations = [], None, [], []
            return
        self.normalizations = [
            # Momentum 0.9: the statistics settle within the few hundred steps of a short
            # fine-tuning (Keras's 0.99 would still be 22 % at its zero start after 150).
            keras.layers.BatchNormalization(
                momentum=0.9,
                center=False,
                scale=False,
                name=f"normalization_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(len(self.filters))
            if self.normalize_inputs
        ]
        self.projections = [
            keras.layers.Dense(self.units, name=f"projection_{i}", dtype=self.dtype_policy)
            for i in range(len(self.filters))
        ]
        self.cell = keras.layers.LSTMCell(self.units, name="cell", dtype=self.dtype_policy)
        bias = math.log(self.initial_rate / (1.0 - self.initial_rate))
        self.heads = [
            keras.layers.Dense(
                count,
                name=f"head_{i}",
                bias_initializer=keras.initializers.Constant(bias),
                dtype=self.dtype_policy,
            )
            for i, count in enumerate(self.filters)
        ]

    @property
    def num_gated_layers(self):
        """The number of gated layers this controller serves."""
        return len(self.filters)

    def build(self, input_shape):
        if self.policy == "learned":
            for i, channels in enumerate(self.input_channels):
                self.projections[i].build((None, channels))
                if self.normalize_inputs:
                    self.normalizations[i].build((None, channels))
            self.cell.build((None, self.units))
            for head in self.heads:
                head.build((None, self.units))
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="gate_noise_seed")
        # The step count exists only for the gate warm-up, the one thing that reads it.
        if self.policy == "learned" and self.warmup_steps:
            self.training_steps = self.add_weight(
                name="training_steps", shape=(), initializer="zeros", trainable=False
            )

    def _check_call(self, inputs, index):
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not (0 <= index < self.num_gated_layers)
        ):
            raise ValueError(
                f"`index` must be an int in [0, {self.num_gated_layers}), the position of the "
                f"gated layer in controller order. Received: index={index!r}"
            )
        channels = inputs.shape[-1]
        if channels != self.input_channels[index]:
            raise ValueError(
                f"Gated layer {index} of controller '{self.name}' expects inputs with "
                f"{self.input_channels[index]} channels. Received: inputs.shape={inputs.shape}"
            )

    def call(self, inputs, states=None, index=0, training=None):
        self._check_call(inputs, index)
        # The controller reads the activations; its (scaled) gradient does not flow back into them.
        pooled = ops.stop_gradient(ops.mean(inputs, axis=tuple(range(1, len(inputs.shape) - 1))))
        if self.policy == "random":
            gate, hidden, cell_state = self._random_gate(pooled, states, index, training)
            logits = None
        else:
            # The sublayers (built in `build`, run in this layer's dtype scope) are run by their
            # `call`: `__call__`'s bookkeeping, repeated for each gated layer, made most of an
            # eager PyTorch step's controller time (measured: 2.3 of 4.4 ms per gated layer).
            if self.normalize_inputs:
                pooled = self.normalizations[index].call(pooled, training=training)
            projected = self.projections[index].call(pooled)
            if states is None:
                zeros = ops.zeros_like(projected)
                states = [zeros, zeros]
            hidden, (hidden, cell_state) = self.cell.call(
                projected, list(states), training=bool(training)
            )
            logits = self.heads[index].call(hidden)
            if self.normalize_gradient:
                logits = normalize_gradient(logits, self.gradient_scale)
            else:
                logits = scale_gradient(logits, self.gradient_scale)
            gate = sample_gates(
                logits,
                temperature=self.temperature,
                seed=self.seed_generator,
                training=training,
                inference=self.inference,
            )
            if training and self.training_steps is not None:
                warm = ops.cast(self.training_steps < self.warmup_steps, "float32")
                gate = gate + warm * ops.stop_gradient(1.0 - gate)
                if index == 0:
                    self.training_steps.assign_add(1.0)
        if training and self._statistics is not None:
            # Only here: an eager backend would otherwise compute it in every step for nothing.
            if logits is None:
                probability = ops.full(ops.shape(gate), self._rate_of(index), dtype="float32")
            else:
                probability = gate_probability(logits)
            self._collect(index, ops.stop_gradient(gate), ops.stop_gradient(probability))
        return gate, hidden, cell_state

    def _collect(self, index, gate, probability):
        """Keeps gated layer `index`'s gates until the last gated layer of the pass.

        The last one adds the statistics of them all to the sums in one computation: one per
        layer made the instruments cost more than the controller on an eager backend.
        """
        pending = self._statistics.pending
        if index == 0 or (pending and pending[-1][0] >= index):
            pending.clear()  # a new forward pass
        pending.append((index, gate, probability))
        if index == self.num_gated_layers - 1:
            self._accumulate(pending)
            pending.clear()

    def _accumulate(self, pending):
        statistics = self._statistics
        indices = [index for index, _, _ in pending]
        gate = ops.concatenate([g for _, g, _ in pending], axis=1)
        probability = ops.concatenate([p for _, _, p in pending], axis=1)
        batch = ops.cast(ops.shape(gate)[0], "float32")
        decisions = ops.cast(probability > 0.5, "float32")
        thresholded = self.policy == "learned" and self.inference == "threshold"
        inferred = decisions if thresholded else probability
        decided = ops.mean(decisions, axis=0)
        # The standard deviation over the batch, written out: PyTorch's `std` over the batch axis
        # took 0.66 ms for 2048 filters (this: 0.15 ms).
        centred = probability - ops.mean(probability, axis=0)
        per_filter = ops.stack(
            [
                2.0 * decided * (1.0 - decided),  # disagreement
                ops.sqrt(ops.mean(centred * centred, axis=0)),  # spread
                1.0 - ops.mean(ops.abs(gate - inferred), axis=0),  # agreement
            ]
        )
        averaging, called = statistics.averaging(indices)
        per_layer = ops.matmul(per_filter, averaging)  # (3, gated layers), 0 where not called
        rows = ops.concatenate([ops.convert_to_tensor(called), per_layer], axis=0) * batch
        sums = ops.sum(gate, axis=0)
        if len(indices) < self.num_gated_layers:  # a model that skips some gated layers
            pieces, start = [], 0
            for index, size in enumerate(self.filters):
                if index in indices:
                    pieces.append(sums[start : start + size])
                    start += size
                else:
                    pieces.append(ops.zeros((size,)))
            sums = ops.concatenate(pieces, axis=0)
        statistics.gate_sums.assign_add(sums)
        statistics.report_sums.assign_add(ops.transpose(rows))

    def _random_gate(self, pooled, states, index, training):
        shape = (ops.shape(pooled)[0], self.filters[index])
        if training:
            uniform = keras.random.uniform(shape, dtype="float32", seed=self.seed_generator)
            gate = ops.cast(uniform < self._rate_of(index), "float32")
        else:
            gate = ops.full(shape, self._rate_of(index), dtype="float32")
        if states is None:
            zeros = ops.zeros((ops.shape(pooled)[0], self.units), dtype=self.compute_dtype)
            states = [zeros, zeros]
        return gate, states[0], states[1]

    def _rate_of(self, index):
        """The random gates' rate of gated layer `index`."""
        if isinstance(self.random_rate, list):
            return self.random_rate[index]
        return self.random_rate

    def compute_output_spec(self, inputs, states=None, index=0, training=None):
        self._check_call(inputs, index)
        batch = inputs.shape[0]
        state = keras.KerasTensor((batch, self.units), dtype=self.compute_dtype)
        gate = keras.KerasTensor((batch, self.filters[index]), dtype="float32")
        return gate, state, keras.KerasTensor(state.shape, dtype=state.dtype)

    @property
    def statistics_enabled(self):
        """Whether training steps accumulate gate statistics (see `start_statistics`)."""
        return self._statistics is not None

    @property
    def statistics_variables(self):
        """The variables of the gate statistics: empty unless `statistics_enabled`."""
        return [] if self._statistics is None else self._statistics.variables

    def start_statistics(self):
        """Makes every later training step accumulate gate statistics, from zero.

        Creates the statistics variables (non-trainable weights of this layer, never saved) or,
        if they exist, sets them to zero. A model that has already made its train function must
        make it again to run the accumulation: call `model.make_train_function(force=True)`, or
        use the `GateStatistics` callback, which does both.

        Raises:
            ValueError: If the controller is not built yet.
        """
        if not self.built:
            raise ValueError(
                f"GateController '{self.name}' must be built before its statistics start. "
                f"Received: built={self.built}"
            )
        if self._statistics is not None:
            self.reset_gate_statistics()
            return
        self._tracker.unlock()  # adding state after `build`, as Keras's own `quantize` does
        try:
            self._statistics = _Statistics(
                gate_sums=self.add_weight(
                    name="gate_sums", shape=(sum(self.filters),), initializer="zeros",
                    trainable=False,
                ),
                report_sums=self.add_weight(
                    name="report_sums",
                    shape=(self.num_gated_layers, len(_REPORT_SUMS)),
                    initializer="zeros",
                    trainable=False,
                ),
                filters=self.filters,
            )  # fmt: skip
        finally:
            self._tracker.lock()

    def stop_statistics(self):
        """Removes the statistics variables; later training steps accumulate nothing.

        A model that has made its train function with statistics on must make it again (set
        `model.train_function = None`, or call `model.make_train_function(force=True)`).
        """
        if self._statistics is None:
            return
        for variable in self._statistics.variables:
            self._untrack_variable(variable)
        self._statistics = None

    def _require_statistics(self, method):
        if self._statistics is None:
            raise ValueError(
                f"`{method}()` reads the gate statistics accumulated in training, which are kept "
                f"only after `start_statistics()` (the `GateStatistics` callback calls it); "
                "`adafilter_keras.gate_report(model, x)` computes them on demand. Received: "
                f"statistics_enabled={self.statistics_enabled} on GateController '{self.name}'"
            )

    def gate_statistics(self):
        """Per gated layer, how often each filter used the fine-tuned branch in training.

        Returns:
            A list with one NumPy array of shape `(filters[i],)` per gated layer, in controller
            order: the fraction of training examples, since `start_statistics()` or the last
            reset, whose gate picked the fine-tuned filter (NaN for a layer that has seen no
            example).

        Raises:
            ValueError: If statistics are not on (see `start_statistics`).
        """
        self._require_statistics("gate_statistics")
        rates = []
        for (count, *_), total in self._read_statistics():
            rates.append(total / count if count else total * float("nan"))
        return rates

    def _read_statistics(self):
        """Per gated layer: its row of `_REPORT_SUMS` sums and its per-filter gate sums."""
        statistics = self._statistics
        gate_sums = ops.convert_to_numpy(statistics.gate_sums)
        report_sums = ops.convert_to_numpy(statistics.report_sums).tolist()
        offsets = statistics.offsets
        return [
            (report_sums[i], gate_sums[offsets[i] : offsets[i + 1]])
            for i in range(self.num_gated_layers)
        ]

    def gate_report(self):
        """Per gated layer, what the gates did in training since statistics started or were reset.

        Returns:
            A list with one dict per gated layer, in controller order, with keys
            `fraction_finetuned` (mean training gate), `disagreement` (how much the inference
            decision `1[p > 0.5]` depends on the input: the chance that two examples of a batch
            get different decisions for the same filter, averaged over filters, 0 to 0.5),
            `probability_spread` (the standard deviation across a batch of the gate probability
            `p = sigmoid(logit)`, averaged over filters), and `train_inference_agreement`
            (`1 - mean |training gate - inference gate|`: 1 when inference gives the gates that
            training sampled). Values are NaN for a layer that has seen no training example.
            All are computed per training batch, with the training-mode probabilities, and
            averaged over examples.

        Raises:
            ValueError: If statistics are not on (see `start_statistics`).
        """
        self._require_statistics("gate_report")
        reports = []
        for (examples, disagreement, spread, agreement), gate_sum in self._read_statistics():
            scale = 1.0 / examples if examples else float("nan")
            reports.append(
                {
                    "fraction_finetuned": float(gate_sum.mean()) * scale,
                    "disagreement": disagreement * scale,
                    "probability_spread": spread * scale,
                    "train_inference_agreement": agreement * scale,
                }
            )
        return reports

    def reset_gate_statistics(self):
        """Sets the accumulated gate statistics to zero (not the warm-up step count).

        Raises:
            ValueError: If statistics are not on (see `start_statistics`).
        """
        self._require_statistics("reset_gate_statistics")
        for variable in self._statistics.variables:
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def save_own_variables(self, store):
        # Only the warm-up step count: the statistics are instruments, not model state.
        if self.training_steps is not None:
            store["0"] = self.training_steps

    def load_own_variables(self, store):
        saved = len(store.keys())
        expected = 0 if self.training_steps is None else 1
        # Saved before the statistics stopped being weights: gate_sum_i, gate_count_i and
        # report_sums_i for every gated layer, then training_steps.
        legacy = 3 * self.num_gated_layers + 1
        if saved == legacy:
            step_count = store[str(legacy - 1)]
        elif saved == expected:
            step_count = store["0"] if expected else None
        else:
            raise ValueError(
                f"GateController '{self.name}' loads {expected} own variable(s) (the warm-up step "
                f"count when warmup_steps > 0), or {legacy} from a model saved with gate "
                f"statistics inside. Received: {saved} variables"
            )
        if self.training_steps is not None:
            self.training_steps.assign(step_count)

    @classmethod
    def from_config(cls, config):
        # A model saved before `normalize_gradient` existed multiplied the gradient by
        # `gradient_scale`: it loads as it was saved, whatever today's default.
        return super().from_config({"normalize_gradient": False, **config})

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": list(self.filters),
                "input_channels": list(self.input_channels),
                "units": self.units,
                "temperature": self.temperature,
                "seed": self.seed,
                "layer_names": list(self.layer_names),
                "policy": self.policy,
                "random_rate": self.random_rate
                if not isinstance(self.random_rate, list)
                else list(self.random_rate),
                "initial_rate": self.initial_rate,
                "gradient_scale": self.gradient_scale,
                "inference": self.inference,
                "warmup_steps": self.warmup_steps,
                "normalize_inputs": self.normalize_inputs,
                "normalize_gradient": self.normalize_gradient,
            }
        )
        return config


def _int_list(name, values):
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or not len(values):
        raise ValueError(
            f"`{name}` must be a non-empty list of positive integers, one per gated layer. "
            f"Received: {name}={values!r}"
        )
    return [validation.positive_int(f"{name}[{i}]", value) for i, value in enumerate(values)]
