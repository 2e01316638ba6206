"""A request's `filter` -> the rows of the serving build it keeps (index_store.filters does the work)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from app.settings import Settings
from index_store.attributes import Attributes
from index_store.filters import filter_mask
from index_store.snapshot import Snapshot
from models.manifest import ModelManifest


def filter_rows(
    settings: Settings, manifest: ModelManifest, snap: Snapshot, raw: Mapping[str, Any] | None
) -> np.ndarray | None:
    """bool [N] over `snap`'s rows, or None for no filter; FeatureError (422) naming the path.

    A build from before filters has no columns: a filter on it names the field and says reindex."""
    attributes = snap.attributes or Attributes(snap.size)
    return filter_mask(raw, manifest.features.item, attributes, max_values=settings.filters.max_values)
