"""trackop: provisions and wires the MLflow tracking stack on PostgreSQL, on Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trackop")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"
