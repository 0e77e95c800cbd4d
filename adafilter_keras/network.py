"""A quick check that a download can start, so missing data fails in seconds, not minutes."""

import os
import socket

# TFDS fetches prepared data and many archives from Google Cloud Storage.
DEFAULT_PROBE = "storage.googleapis.com:443"
PROBE_ENV = "ADAFILTER_KERAS_NETWORK_PROBE"


def probe_address():
    """The `(host, port)` probed; `$ADAFILTER_KERAS_NETWORK_PROBE` (`host:port`) overrides it."""
    host, _, port = os.environ.get(PROBE_ENV, DEFAULT_PROBE).rpartition(":")
    return host, int(port)


def network_available(timeout=5.0):
    """Whether a TCP connection to the probe address opens within `timeout` seconds."""
    return connection_error(probe_address(), timeout) is None


def connection_error(address, timeout=5.0):
    """None if a TCP connection to `(host, port)` opens within `timeout` seconds, else the error."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return None
    except OSError as error:
        return error
