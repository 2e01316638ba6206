"""Catalog encoding, Faiss index builds, the index store and atomically swapped snapshots."""

from index_store.build import BuiltIndex, IndexConfig, build_index
from index_store.directory import new_build_id
from index_store.encode import encode_catalog
from index_store.registry import SnapshotRegistry
from index_store.snapshot import Snapshot
from index_store.store import IndexStore
from index_store.threads import set_faiss_threads

__all__ = [
    "BuiltIndex",
    "IndexConfig",
    "IndexStore",
    "Snapshot",
    "SnapshotRegistry",
    "build_index",
    "encode_catalog",
    "new_build_id",
    "set_faiss_threads",
]
