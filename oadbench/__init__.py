"""oadbench: a benchmark harness for online, unsupervised anomaly detection and localization."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("oadbench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
