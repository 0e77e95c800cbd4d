"""GateController: the recurrent network that picks, per example and per filter, a branch."""

import math

import keras
from keras import ops

from adafilter_keras import validation
from adafilter_keras.layers.gate_sampling import (
    INFERENCE_RULES,
    gate_probability,
    normalize_gradient,
    sample_gates,
    scale_gradient,
)

POLICIES = ("learned", "random")

# Per-layer running sums kept in training, in this order (see `gate_report`).
_REPORT_SUMS = ("examples", "disagreement", "probability_spread", "agreement")


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

    In training, the controller also accumulates per layer and per filter how often the fine-tuned
    branch was chosen; `gate_statistics()` reads these and `reset_gate_statistics()` clears them.

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
            every learned gate is forced to 1.
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
        units=64,
        temperature=1.0,
        seed=None,
        layer_names=None,
        policy="learned",
        random_rate=0.5,
        initial_rate=0.5,
        gradient_scale=1.0,
        inference="expected",
        warmup_steps=0,
        normalize_inputs=False,
        normalize_gradient=False,
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
        self.units = validation.positive_int("units", units)
        self.temperature = validation.positive_float("temperature", temperature)
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
        self.policy = validation.one_of("policy", policy, POLICIES)
        self.random_rate = validation.rates("random_rate", random_rate)
        if isinstance(self.random_rate, list) and len(self.random_rate) != len(self.filters):
            raise ValueError(
                "`random_rate` must be one rate, or a list of one rate per gated layer. "
                f"Received: {len(self.random_rate)} rates for {len(self.filters)} gated layers"
            )
        self.initial_rate = validation.rate("initial_rate", initial_rate)
        self.gradient_scale = validation.positive_float("gradient_scale", gradient_scale)
        self.inference = validation.one_of("inference", inference, INFERENCE_RULES)
        self.warmup_steps = validation.non_negative_int("warmup_steps", warmup_steps)
        self.normalize_inputs = validation.boolean("normalize_inputs", normalize_inputs)
        self.normalize_gradient = validation.boolean("normalize_gradient", normalize_gradient)
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
        self.gate_sums = [
            self.add_weight(
                name=f"gate_sum_{i}", shape=(count,), initializer="zeros", trainable=False
            )
            for i, count in enumerate(self.filters)
        ]
        self.gate_counts = [
            self.add_weight(name=f"gate_count_{i}", shape=(), initializer="zeros", trainable=False)
            for i in range(len(self.filters))
        ]
        self.report_sums = [
            self.add_weight(
                name=f"report_sums_{i}",
                shape=(len(_REPORT_SUMS),),
                initializer="zeros",
                trainable=False,
            )
            for i in range(len(self.filters))
        ]
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
            probability = ops.full(ops.shape(gate), self._rate_of(index), dtype="float32")
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
            probability = gate_probability(logits)
            if training and self.warmup_steps:
                warm = ops.cast(self.training_steps < self.warmup_steps, "float32")
                gate = gate + warm * ops.stop_gradient(1.0 - gate)
        if training:
            self._accumulate(index, ops.stop_gradient(gate), ops.stop_gradient(probability))
        return gate, hidden, cell_state

    def _accumulate(self, index, gate, probability):
        batch = ops.cast(ops.shape(gate)[0], "float32")
        self.gate_sums[index].assign_add(ops.sum(gate, axis=0))
        self.gate_counts[index].assign_add(batch)
        decisions = ops.cast(probability > 0.5, "float32")
        thresholded = self.policy == "learned" and self.inference == "threshold"
        inferred = decisions if thresholded else probability
        decided = ops.mean(decisions, axis=0)
        disagreement = ops.mean(2.0 * decided * (1.0 - decided))
        # The standard deviation over the batch, written out: PyTorch's `std` over the batch axis
        # took 0.66 ms for 2048 filters, most of the instruments' time (this: 0.15 ms).
        centred = probability - ops.mean(probability, axis=0)
        spread = ops.mean(ops.sqrt(ops.mean(centred * centred, axis=0)))
        agreement = 1.0 - ops.mean(ops.abs(gate - inferred))
        batch_sums = ops.stack([ops.ones(()), disagreement, spread, agreement]) * batch
        self.report_sums[index].assign_add(batch_sums)
        if index == 0:
            self.training_steps.assign_add(1.0)

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

    def gate_statistics(self):
        """Per gated layer, how often each filter used the fine-tuned branch in training.

        Returns:
            A list with one NumPy array of shape `(filters[i],)` per gated layer, in controller
            order: the fraction of training examples, since the last reset, whose gate picked the
            fine-tuned filter (NaN for a layer that has seen no example).
        """
        rates = []
        for gate_sum, gate_count in zip(self.gate_sums, self.gate_counts, strict=True):
            count = float(ops.convert_to_numpy(gate_count))
            total = ops.convert_to_numpy(gate_sum)
            rates.append(total / count if count else total * float("nan"))
        return rates

    def gate_report(self):
        """Per gated layer, what the gates did in training since the last reset.

        Returns:
            A list with one dict per gated layer, in controller order, with keys
            `fraction_finetuned` (mean training gate), `disagreement` (how much the inference
            decision `1[p > 0.5]` depends on the input: the chance that two examples of a batch
            get different decisions for the same filter, averaged over filters, 0 to 0.5),
            `probability_spread` (the standard deviation across a batch of the gate probability
            `p = sigmoid(logit)`, averaged over filters), and `train_inference_agreement`
            (`1 - mean |training gate - inference gate|`: 1 when inference gives the gates that
            training sampled). Values are NaN for a layer that has seen no training example.
        """
        reports = []
        for gate_sum, sums in zip(self.gate_sums, self.report_sums, strict=True):
            examples, disagreement, spread, agreement = ops.convert_to_numpy(sums).tolist()
            scale = 1.0 / examples if examples else float("nan")
            reports.append(
                {
                    "fraction_finetuned": float(ops.convert_to_numpy(gate_sum).mean()) * scale,
                    "disagreement": disagreement * scale,
                    "probability_spread": spread * scale,
                    "train_inference_agreement": agreement * scale,
                }
            )
        return reports

    def reset_gate_statistics(self):
        """Sets the accumulated gate statistics to zero (not the warm-up step count)."""
        for variable in (*self.gate_sums, *self.gate_counts, *self.report_sums):
            variable.assign(ops.zeros(variable.shape, variable.dtype))

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
