"""SGD with per-group learning-rate multipliers and L2 decay, and a warm-up + decay schedule."""

import math
import re

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="adafilter_keras")
class SGDWithMultipliers(keras.optimizers.SGD):
    """SGD with momentum where groups of variables train at multiples of the learning rate.

    Before the update, each gradient gets `weight_decay * variable` added (for kernels: variables
    of rank >= 2, as `torch.optim.SGD`'s `weight_decay`) and is multiplied by the multiplier of the
    first pattern in `multipliers` that matches the variable's path (`re.search`), else by 1.
    With SGD this equals a per-group learning rate. It is written with `keras.ops` in `apply`, so it
    works on every backend.

    Args:
        learning_rate: Float or `keras.optimizers.schedules.LearningRateSchedule`.
        momentum: Momentum.
        weight_decay_l2: L2 decay coefficient on kernels (not Keras's decoupled `weight_decay`).
        multipliers: Dict `{regex: multiplier}`, matched in insertion order.
        **kwargs: Other `keras.optimizers.SGD` arguments.
    """

    def __init__(
        self, learning_rate=0.01, momentum=0.9, weight_decay_l2=0.0, multipliers=None, **kwargs
    ):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.weight_decay_l2 = float(weight_decay_l2)
        self.multipliers = dict(multipliers or {})
        self._patterns = [(re.compile(p), float(m)) for p, m in self.multipliers.items()]
        self._multipliers = {}  # by variable path: matched once, not at every step

    def multiplier_for(self, variable):
        """The learning-rate multiplier of `variable`."""
        path = variable.path
        if path not in self._multipliers:
            self._multipliers[path] = next(
                (m for pattern, m in self._patterns if pattern.search(path)), 1.0
            )
        return self._multipliers[path]

    def apply(self, grads, trainable_variables=None):
        variables = (
            list(trainable_variables)
            if trainable_variables is not None
            else list(self._trainable_variables)
        )
        scaled = []
        for grad, variable in zip(grads, variables, strict=True):
            if grad is not None:
                # NumPy gradients (as the tests pass) would meet torch tensors below.
                grad = ops.convert_to_tensor(grad)
                if self.weight_decay_l2 and len(variable.shape) >= 2:
                    grad = grad + ops.cast(self.weight_decay_l2, grad.dtype) * ops.cast(
                        variable, grad.dtype
                    )
                multiplier = self.multiplier_for(variable)
                if multiplier != 1.0:
                    grad = grad * ops.cast(multiplier, grad.dtype)
            scaled.append(grad)
        return super().apply(scaled, trainable_variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() != "torch":
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        # Keras gives its own SGD on PyTorch one `torch._foreach` update for all variables, but
        # a subclass gets the generic one: a handful of operations per variable, most of an
        # eager step's optimizer time for a gated model's many variables. The same update:
        import torch
        from keras.src.backend.torch.optimizers import torch_sgd

        with torch.no_grad():
            torch_sgd.SGD._parallel_update_step(self, grads, trainable_variables, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(weight_decay_l2=self.weight_decay_l2, multipliers=self.multipliers)
        return config


@keras.saving.register_keras_serializable(package="adafilter_keras")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to 0 or step decay.

    Args:
        peak: Peak learning rate.
        total_steps: Steps of the whole run.
        warmup_steps: Steps of linear warm-up from `peak / warmup_steps`.
        kind: `"cosine"` or `"step"`.
        boundaries: Steps where the step schedule multiplies the rate by `factor`.
        factor: Step-decay factor.
    """

    def __init__(self, peak, total_steps, warmup_steps=0, kind="cosine", boundaries=(), factor=0.1):
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.boundaries = [int(b) for b in boundaries]
        self.factor = float(factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            rate = 0.5 * self.peak * (1.0 + ops.cos(math.pi * progress))
        else:
            rate = ops.convert_to_tensor(self.peak, "float32")
            for boundary in self.boundaries:
                rate = ops.where(step >= boundary, rate * self.factor, rate)
        if self.warmup_steps:
            warm = self.peak * (step + 1.0) / self.warmup_steps
            rate = ops.where(step < self.warmup_steps, warm, rate)
        return rate

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "kind": self.kind,
            "boundaries": self.boundaries,
            "factor": self.factor,
        }
