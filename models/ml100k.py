"""MovieLens-100k: fetched from the recbole wheel on PyPI and written as the project's files.

`twotower data ml-100k --out DIR` writes users.jsonl, items.jsonl and interactions.csv (header
user_id,item_id,rating,timestamp); examples/movielens/schema.toml describes them. This module and
that file are the only places that know MovieLens' fields.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from models.errors import DataError

USERS = "users.jsonl"
ITEMS = "items.jsonl"
INTERACTIONS = "interactions.csv"
SOURCE = "SOURCE.json"
INTERACTION_HEADER = ("user_id", "item_id", "rating", "timestamp")

RECBOLE = "recbole==1.2.1"
_PREFIX = "recbole/dataset_example/ml-100k/ml-100k"
# Recorded once from the recbole 1.2.1 wheel on PyPI; a mismatch means the source changed under us.
ML100K_SHA256 = {
    "inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)")


class Rating(NamedTuple):
    user_id: str
    item_id: str
    rating: float
    timestamp: int


def fetch_ml100k(out: Path) -> None:
    """Download the recbole wheel, verify the bundled ml-100k atomic files, write the project format.

    `out` appears complete or not at all: the files are written to a temporary sibling and renamed.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not empty; choose another --out or remove it")
    with tempfile.TemporaryDirectory(prefix="twotower-recbole-") as dl:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", RECBOLE, "--no-deps", "--quiet", "-d", dl],
            capture_output=True,
            text=True,
        )
        wheels = sorted(Path(dl).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DataError(f"pip download {RECBOLE} failed: {proc.stderr.strip()[-500:]}")
        raw = read_recbole_wheel(wheels[0])
    write_project_format(out, raw, source={"package": RECBOLE, "wheel": wheels[0].name})


def read_recbole_wheel(wheel: Path) -> dict[str, bytes]:
    """The three ml-100k atomic files from the wheel, checked against the recorded sha256."""
    raw: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as zf:
        for ext, digest in ML100K_SHA256.items():
            name = f"{_PREFIX}.{ext}"
            try:
                data = zf.read(name)
            except KeyError as exc:
                raise DataError(f"{wheel.name}: has no {name}") from exc
            actual = hashlib.sha256(data).hexdigest()
            if actual != digest:
                raise DataError(f"{wheel.name}:{name}: sha256 {actual} != recorded {digest}")
            raw[ext] = data
    return raw


def _atomic_rows(text: str, name: str) -> Iterator[tuple[int, list[str]]]:
    lines = text.splitlines()
    for lineno, line in enumerate(lines[1:], start=2):
        if line.strip():
            yield lineno, line.split("\t")


def convert_recbole(
    raw: Mapping[str, bytes],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Rating]]:
    """RecBole atomic files -> project rows. RecBole strips the year from titles; it is put back."""
    users: list[dict[str, Any]] = []
    for lineno, p in _atomic_rows(raw["user"].decode("utf-8"), "ml-100k.user"):
        if len(p) != 5:
            raise DataError(f"ml-100k.user:{lineno}: expected 5 columns, got {len(p)}")
        users.append({"user_id": p[0], "age": int(p[1]), "gender": p[2], "occupation": p[3], "zip": p[4]})
    items: list[dict[str, Any]] = []
    for lineno, p in _atomic_rows(raw["item"].decode("utf-8", errors="replace"), "ml-100k.item"):
        if len(p) != 4:
            raise DataError(f"ml-100k.item:{lineno}: expected 4 columns, got {len(p)}")
        item_id, title, year_tok, classes = p
        year: int | None = None
        if year_tok.isdigit():
            year = int(year_tok)
            title = f"{title} ({year_tok})"
        elif title == "unkonwn":  # item 267 is unknown in the original data too (RecBole's typo)
            title = "unknown"
        else:
            # e.g. item 1412: the original "... (1995) (V)" was split at the wrong parenthesis
            title = f"{title} ({year_tok})"
            m = _YEAR_IN_TITLE.search(title)
            year = int(m.group(1)) if m else None
        genres = [g for g in classes.split(" ") if g]
        items.append({"item_id": item_id, "title": title, "genres": genres, "release_year": year})
    inter: list[Rating] = []
    for lineno, p in _atomic_rows(raw["inter"].decode("utf-8"), "ml-100k.inter"):
        if len(p) != 4:
            raise DataError(f"ml-100k.inter:{lineno}: expected 4 columns, got {len(p)}")
        inter.append(Rating(p[0], p[1], float(p[2]), int(float(p[3]))))
    inter.sort(key=lambda r: (r.timestamp, r.user_id, r.item_id))
    return users, items, inter


def write_project_format(out: Path, raw: Mapping[str, bytes], source: Mapping[str, Any]) -> None:
    users, items, inter = convert_recbole(raw)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_dataset(tmp, users, items, inter)
        meta = {
            "dataset": "MovieLens-100k (GroupLens), as bundled in the RecBole wheel",
            **source,
            "files": {f"{_PREFIX}.{ext}": digest for ext, digest in ML100K_SHA256.items()},
            "counts": {"users": len(users), "items": len(items), "interactions": len(inter)},
            "license": "MovieLens terms of use: https://files.grouplens.org/datasets/movielens/ml-100k-README.txt",
        }
        (tmp / SOURCE).write_text(json.dumps(meta, indent=2) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the data is meant to be read by the service
        if out.exists():
            out.rmdir()  # checked empty above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_dataset(
    out: Path, users: list[dict[str, Any]], items: list[dict[str, Any]], interactions: list[Rating]
) -> None:
    """Write the three project files into an existing directory (used by fetch and by tests)."""
    with open(out / USERS, "w") as f:
        for u in users:
            f.write(json.dumps(u) + "\n")
    with open(out / ITEMS, "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    with open(out / INTERACTIONS, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(INTERACTION_HEADER)
        for r in sorted(interactions, key=lambda r: (r.timestamp, r.user_id, r.item_id)):
            rating = int(r.rating) if float(r.rating).is_integer() else r.rating
            w.writerow([r.user_id, r.item_id, rating, r.timestamp])
