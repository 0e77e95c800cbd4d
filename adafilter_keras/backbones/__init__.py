"""Where a backbone comes from and how its inputs are normalized.

`models`: `keras.applications` models by name, `SmallResNet`, and keras-hub presets (`hub`), with
their pre-trained weights; `normalization`: the per-channel input normalization each expects.
Below `data` and `training`, which both read it.
"""
