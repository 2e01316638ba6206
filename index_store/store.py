"""The index store: the builds of each model version under one root directory, loaded, built and
published, listed and pruned.

Its rooms: index_store.directory (the on-disk layout, the CURRENT pointer, listing, retention),
index_store.loading (a build verified and mapped into a Snapshot) and index_store.publish (a catalog
encoded, indexed, written and made current).
"""

from __future__ import annotations

from index_store.loading import BuildReader
from index_store.publish import BuildPublisher


class IndexStore(BuildReader, BuildPublisher):
    """Builds, persists, verifies and loads index builds under one root directory.

    store = IndexStore(Path("var/index"))
    build_id = store.build(model_store, "20261122T101500Z", catalog_rows, IndexConfig())
    snapshot = store.load("20261122T101500Z", model_manifest)
    """
