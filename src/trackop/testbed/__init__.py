"""A real local test bed: Kubernetes control plane, PostgreSQL and MinIO, without Docker."""

from .bed import Testbed

__all__ = ["Testbed"]
