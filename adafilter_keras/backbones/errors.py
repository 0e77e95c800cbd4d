"""The error raised when a backbone's pre-trained weights cannot be had."""


class WeightsUnavailableError(ValueError):
    """Pre-trained weights could not be loaded (absent, no network, or not this backbone's)."""
