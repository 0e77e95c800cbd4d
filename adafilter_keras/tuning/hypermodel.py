"""TrainHyperModel: the training harness as a `keras_tuner.HyperModel`."""

import dataclasses

import keras_tuner

from adafilter_keras.tuning import space as spaces


class TrainHyperModel(keras_tuner.HyperModel):
    """A search over the settings of `adafilter_keras.training.train`.

    `build(hp)` returns the trial's `TrainConfig` (the harness builds, trains and scores the
    model itself); `fit(hp, config)` runs it and returns the best validation accuracy. The tuners
    of `adafilter_keras.tuning.search` call both for every trial.

    Args:
        base: The `TrainConfig` every trial starts from (dataset, method, epochs, seed, ...).
        space: The search space (`space.default_space(base.method)` when None).
    """

    def __init__(self, base, space=None):
        super().__init__(name=f"{base.method}_on_{base.dataset}", tunable=True)
        self.base = base
        self.space = spaces.validate(
            spaces.default_space(base.method) if space is None else dict(space)
        )

    def declare_hyperparameters(self, hp):
        for name, spec in self.space.items():
            _declare(hp, name, spec)

    def build(self, hp):
        """The trial's `TrainConfig`: `base` with the trial's values.

        Under Hyperband the trial's epoch budget (`tuner/epochs`) replaces `base.epochs`.
        """
        values = {name: _declare(hp, name, spec) for name, spec in self.space.items()}
        epochs = hp.values.get("tuner/epochs", self.base.epochs)
        return dataclasses.replace(self.base, **values).with_epochs(epochs)

    def fit(self, hp, model, *args, callbacks=(), verbose=0, **kwargs):
        """Trains `model` (a `TrainConfig` from `build`); returns `{"val_accuracy": best}`."""
        from adafilter_keras.training.runner import train

        results = train(model, verbose=verbose, callbacks=list(callbacks))
        return {"val_accuracy": float(results["best_validation_accuracy"])}


def _declare(hp, name, spec):
    kind = spec["type"]
    if kind == "float":
        return hp.Float(name, spec["min"], spec["max"], step=spec.get("step"),
                        sampling=spec.get("sampling", "linear"))  # fmt: skip
    if kind == "int":
        return hp.Int(name, spec["min"], spec["max"], step=spec.get("step", 1),
                      sampling=spec.get("sampling", "linear"))  # fmt: skip
    if kind == "choice":
        return hp.Choice(name, spec["values"])
    return hp.Fixed(name, spec["value"])
