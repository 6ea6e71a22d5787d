"""oadbench: a benchmark harness for online, unsupervised anomaly detection and localization."""

# the one definition of the version: pyproject.toml reads it from here (setuptools' dynamic `attr`)
__version__ = "0.1.0"

__all__ = ["__version__"]
