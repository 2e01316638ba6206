"""The filters the retrieval step measures: candidates on the demo schema's filterable fields
(`genres`, `release_year`), the ones whose share of the build's own attribute columns (measured with
the service's filter code) is closest to ~50% and ~1%, and a copy the build has not seen."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench")
TARGET_SHARES = {"50%": 0.5, "1%": 0.01}


def candidate_filters(attributes: Any) -> list[dict[str, Any]]:
    """Filters on genres and release_year whose shares cover 0.1%..90% in small steps."""
    from index_store.attributes import NumberColumn, ValuesColumn

    out: list[dict[str, Any]] = []
    years = attributes.columns.get("release_year")
    if isinstance(years, NumberColumn):
        x = years.x[~np.isnan(years.x)]
        for q in np.linspace(0.001, 0.9, 60):
            y = float(np.quantile(x, q))
            out.append({"release_year": {"lt": y}})
            out.append({"release_year": {"gte": y}})
    genres = attributes.columns.get("genres")
    if isinstance(genres, ValuesColumn):
        counts = np.diff(genres.ptr)
        order = [str(genres.values[i]) for i in np.argsort(-counts, kind="stable")]
        for n in range(1, len(order) + 1):
            out.append({"genres": {"any": order[:n]}})
        for g in order:  # one genre within a range of years: the selective end
            if isinstance(years, NumberColumn):
                x = years.x[~np.isnan(years.x)]
                for q in (0.05, 0.1, 0.2, 0.3):
                    out.append({"genres": {"any": [g]}, "release_year": {"lt": float(np.quantile(x, q))}})
    return out


def pick_filters(build_dir: Path, manifest: Any) -> dict[str, dict[str, Any]]:
    """For each target share, the candidate whose measured share is closest (in ratio)."""
    from index_store.attributes import ATTRIBUTES_FILE, from_bytes
    from index_store.filters import filter_mask

    built = json.loads((build_dir / "manifest.json").read_text())
    n = int(built["item_count"])
    attributes = from_bytes(
        (build_dir / ATTRIBUTES_FILE).read_bytes(), built["attributes"], n, str(build_dir)
    )
    measured = []
    for flt in candidate_filters(attributes):
        mask = filter_mask(flt, manifest.features.item, attributes, max_values=1000)
        assert mask is not None
        share = float(mask.mean())
        if share > 0:
            measured.append((flt, share))
    out = {}
    for label, target in TARGET_SHARES.items():
        flt, share = min(measured, key=lambda fs: abs(np.log(fs[1] / target)))
        out[label] = {"filter": flt, "share": share, "items": n}
        log.info("filter keeping ~%s: %s keeps %.2f%% of %d items", label, json.dumps(flt), share * 100, n)
    return out


def distinct(flt: dict[str, Any], j: int) -> dict[str, Any]:
    """`flt` with a bound on release_year that no item fails: the same rows, a filter the build has
    not seen."""
    year = dict(flt.get("release_year", {}))
    if "gt" not in year:
        year["gt"] = -10_000 - j
    else:
        year["lte"] = 10_000 + j
    return {**flt, "release_year": year}
