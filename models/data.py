"""MovieLens-100k fetching and the project's data format (users.jsonl, items.jsonl, interactions.csv)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
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


class Interaction(NamedTuple):
    user_id: str
    item_id: str
    rating: float
    timestamp: int


@dataclass(frozen=True)
class Dataset:
    """Users and items keyed by id (raw feature dicts), interactions sorted by time."""

    users: Mapping[str, dict[str, Any]]
    items: Mapping[str, dict[str, Any]]
    interactions: list[Interaction] = field(default_factory=list)

    def histories(self) -> dict[str, list[Interaction]]:
        """Each user's interactions in timestamp order (ties keep file order)."""
        out: dict[str, list[Interaction]] = {}
        for it in self.interactions:
            out.setdefault(it.user_id, []).append(it)
        for rows in out.values():
            rows.sort(key=lambda r: r.timestamp)
        return out


# --------------------------------------------------------------------------- fetch


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
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Interaction]]:
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
    inter: list[Interaction] = []
    for lineno, p in _atomic_rows(raw["inter"].decode("utf-8"), "ml-100k.inter"):
        if len(p) != 4:
            raise DataError(f"ml-100k.inter:{lineno}: expected 4 columns, got {len(p)}")
        inter.append(Interaction(p[0], p[1], float(p[2]), int(float(p[3]))))
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
    out: Path, users: list[dict[str, Any]], items: list[dict[str, Any]], interactions: list[Interaction]
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


# --------------------------------------------------------------------------- load


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream (line number, object) from a JSON-lines file; a bad line is a DataError naming both."""
    if not path.is_file():
        raise DataError(f"{path}: not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, row


def _read_jsonl(path: Path, id_key: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for lineno, row in iter_jsonl(path):
        rid = row.get(id_key)
        if not isinstance(rid, str) or not rid:
            raise DataError(f"{path}:{lineno}: {id_key!r} must be a non-empty string, got {rid!r}")
        if rid in out:
            raise DataError(f"{path}:{lineno}: duplicate {id_key} {rid!r}")
        _check_types(row, path, lineno)
        out[rid] = row
    return out


_TYPES: dict[str, tuple[type, ...]] = {
    "age": (int, float),
    "release_year": (int, float),
    "gender": (str,),
    "occupation": (str,),
    "zip": (str,),
    "title": (str,),
    "genres": (list,),
}


def _check_types(row: Mapping[str, Any], path: Path, lineno: int) -> None:
    for key, types in _TYPES.items():
        v = row.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, types):
            raise DataError(f"{path}:{lineno}: {key!r} has type {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            raise DataError(f"{path}:{lineno}: {key!r} must be finite")
        if isinstance(v, list) and not all(isinstance(g, str) for g in v):
            raise DataError(f"{path}:{lineno}: 'genres' must be a list of strings")


def load_dataset(data_dir: Path) -> Dataset:
    """Read and validate a dataset in the project format."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory (run `twotower data ml-100k --out {data_dir}`)")
    users = _read_jsonl(data_dir / USERS, "user_id")
    items = _read_jsonl(data_dir / ITEMS, "item_id")
    path = data_dir / INTERACTIONS
    if not path.is_file():
        raise DataError(f"{path}: not found")
    inter: list[Interaction] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != INTERACTION_HEADER:
            raise DataError(f"{path}:1: header must be {','.join(INTERACTION_HEADER)}, got {header!r}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 4:
                raise DataError(f"{path}:{lineno}: expected 4 columns, got {len(row)}")
            uid, iid, rating_s, ts_s = row
            if uid not in users:
                raise DataError(f"{path}:{lineno}: unknown user_id {uid!r} (not in {USERS})")
            if iid not in items:
                raise DataError(f"{path}:{lineno}: unknown item_id {iid!r} (not in {ITEMS})")
            try:
                rating = float(rating_s)
                ts = int(ts_s)
            except ValueError as exc:
                raise DataError(f"{path}:{lineno}: bad rating/timestamp {rating_s!r},{ts_s!r}") from exc
            if not math.isfinite(rating):
                raise DataError(f"{path}:{lineno}: rating must be finite")
            inter.append(Interaction(uid, iid, rating, ts))
    if not inter:
        raise DataError(f"{path}: no interactions")
    return Dataset(users=users, items=items, interactions=inter)


def vocabularies(data: Dataset) -> dict[str, tuple[str, ...]]:
    """The vocabularies `default_schema` needs, from the whole catalogue and user table."""
    from models.features import vocab_from

    return {
        "user_id": vocab_from(data.users),
        "item_id": vocab_from(data.items),
        "gender": vocab_from(str(u["gender"]) for u in data.users.values() if u.get("gender") is not None),
        "occupation": vocab_from(
            str(u["occupation"]) for u in data.users.values() if u.get("occupation") is not None
        ),
        "genre": vocab_from(g for i in data.items.values() for g in i.get("genres") or ()),
    }
