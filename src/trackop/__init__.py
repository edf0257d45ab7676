"""trackop: provisions and wires the MLflow tracking stack on PostgreSQL, on Kubernetes."""

__version__ = "0.1.0"
