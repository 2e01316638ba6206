"""The reindex tests' fixtures: the shared two-node Ray cluster (tests/raycluster.py)."""

from tests.raycluster import ray_cluster

__all__ = ["ray_cluster"]
