"""Broken artifacts: refused at start and at swap with a log line naming the file, the last good state
keeps serving; a build is warmed before it takes traffic and a warm-up failure is never served."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.reindex.build import index_config
from app.settings import Settings
from index_store.directory import CURRENT, INDEX_FILE, VECTORS_FILE
from index_store.store import IndexStore
from tests.reliability.artifacts import (
    clone_version,
    copy_build,
    flip_bytes,
    garbage,
    ivf_nprobe_zero,
    manifest_field,
    nan_vectors,
    pickled_ids,
    publish,
    rehash_onnx,
    remove,
    truncate,
    write_atomic,
)
from tests.reliability.conftest import GoodIndex
from tests.reliability.procs import ADMIN, Load, Server, deadline_loop, fmt_counts, summary

pytestmark = pytest.mark.slow

RECALL = ("/recall", {"user_id": "1", "k": 10})
SCORE = ("/score", {"user_id": "2", "items": [{"item_id": "1"}, {"item_id": "2"}]})


def build_for(models: Path, root: Path, tag: str, data: Path) -> str:
    rows = [json.loads(line) for line in (data / "items.jsonl").read_text().splitlines()]
    cfg = index_config(Settings(model_store=models, index_store=root, data_dir=data))
    return IndexStore(root).build(models, tag, iter(rows), cfg)


def served_build(srv: Server, version: str | None = None) -> Any:
    body: dict[str, Any] = {"user_id": "1", "k": 5}
    if version:
        body["model_version"] = version
    return srv.post("/recall", json=body)


def test_broken_artifacts_refused_at_start(
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    own_models: Path,
    index_root: Path,
    good_index: GoodIndex,
    version: str,
    rel_data: Path,
    report: Callable[[str, str, str], None],
) -> None:
    root = index_root
    # The served version: its CURRENT build has a truncated index, the build before it is good.
    truncated = copy_build(root, version, good_index.build, truncate(INDEX_FILE))
    publish(root, version, truncated)
    # Other versions, each broken in one way. Tags sort before the demo tag: `default` stays on it.
    broken_index = "1999-index-flipped"
    clone_version(own_models, version, broken_index)
    flipped = build_for(own_models, root, broken_index, rel_data)
    flip_bytes(INDEX_FILE)(root / broken_index / flipped, {})
    index_dim = "1999-index-dim"
    clone_version(own_models, version, index_dim)
    dim_build = build_for(own_models, root, index_dim, rel_data)
    manifest_path = root / index_dim / dim_build / "manifest.json"
    m = json.loads(manifest_path.read_text())
    m["dim"] = 32
    manifest_path.write_text(json.dumps(m))
    publish(root, index_dim, dim_build)  # CURRENT agrees with the edited manifest: the dim check refuses it
    models = {
        "1999-onnx-flipped": (flip_bytes("item_tower.onnx"), r"item_tower\.onnx: sha256"),
        "1999-onnx-garbage": (rehash_onnx("user_tower.onnx"), r"user_tower\.onnx"),
        "1999-onnx-missing": (remove("user_tower.onnx"), r"user_tower\.onnx: missing"),
        "1999-manifest-other": (manifest_field("version", "2000-elsewhere"), r"does not match directory"),
    }
    for tag, (mutate, _) in models.items():
        clone_version(own_models, version, tag, mutate)

    env = {**base_env, "TWOTOWER_MODEL_STORE": str(own_models)}
    srv = spawn("serve", env, "api")
    srv.wait_ready()

    lines = {
        f"{version} current build, truncated index.faiss": srv.wait_log(
            rf"{re.escape(truncated)}/index\.faiss: truncated"
        ),
        f"{broken_index}, index.faiss bytes flipped": srv.wait_log(
            rf"{re.escape(flipped)}/index\.faiss: sha256 .* does not match"
        ),
        f"{index_dim}, index manifest dim 32": srv.wait_log(
            rf"{re.escape(dim_build)}/manifest\.json: dim 32"
        ),
    }
    for tag, (_, reason) in models.items():
        lines[tag] = srv.wait_log(rf"model version {tag} refused: .*{reason}")
    # The last good state serves: the build before the refused one (not an outage of the version).
    ok = served_build(srv)
    assert ok.status_code == 200, ok.text
    assert ok.json()["index_build"] == good_index.build and ok.json()["model_version"] == version
    assert srv.wait_log(rf"{version}.*previous build {re.escape(good_index.build)}")
    for tag in (broken_index, index_dim):  # nothing good to fall back on: 503, never a 500
        r = served_build(srv, tag)
        assert r.status_code == 503 and r.headers["retry-after"] and "no ready index" in r.json()["detail"]
    for tag in models:
        r = served_build(srv, tag)
        assert r.status_code == 404 and tag in r.json()["detail"], r.text
    versions = {v["model_version"]: v for v in srv.get("/admin/versions", headers=ADMIN).json()["versions"]}
    assert set(versions) == {version, broken_index, index_dim}
    assert versions[version]["index_build"] == good_index.build
    assert versions[broken_index]["state"] == versions[index_dim]["state"] == "no_index"
    # A good build published later is picked up without a restart.
    fixed = build_for(own_models, root, broken_index, rel_data)
    for _ in deadline_loop(30, f"{broken_index} to serve {fixed}"):
        r = served_build(srv, broken_index)
        if r.status_code == 200 and r.json()["index_build"] == fixed:
            break

    first = lines[f"{version} current build, truncated index.faiss"]
    example = first[first.index("refused") :].replace(str(root), "<index>")
    report(
        "Broken artifacts at start: truncated / flipped index.faiss, index manifest dim, ONNX flipped / "
        "garbage / missing, model manifest for another version",
        "the service starts; each is refused with a log line naming the file; the last good build serves",
        f"ready on {good_index.build[:19]}… (the build before the truncated one); "
        f"{len(lines)} refusals logged, e.g. `{example}`; "
        f"broken indexes 503, broken models 404; a later good build of {broken_index} served without restart",
    )


SWAP_VARIANTS: list[tuple[str, Any, bool, str | None, str]] = [
    ("index.faiss truncated", truncate(INDEX_FILE), False, None, r"index\.faiss: truncated"),
    ("index.faiss bytes flipped", flip_bytes(INDEX_FILE), False, None, r"index\.faiss: sha256"),
    ("vectors.npy missing", remove(VECTORS_FILE), False, None, r"vectors\.npy: missing"),
    ("index.faiss garbage, checksums updated", garbage(INDEX_FILE), True, None, r"not a Faiss index"),
    ("ids.npy an object array (pickle)", pickled_ids, True, None, r"ids\.npy: not a readable"),
    ("manifest dim 32", manifest_field("dim", 32), False, None, r"dim 32 does not match"),
    ("manifest of another version", manifest_field("model_version", "2000-x"), False, None, r"built for"),
    (
        "another item tower",
        manifest_field("item_tower_sha256", "0" * 64),
        False,
        None,
        r"different item tower",
    ),
    ("manifest edited after publish", None, False, "0" * 64, r"recorded in CURRENT"),
]


def test_broken_builds_refused_at_swap(
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    own_models: Path,
    index_root: Path,
    good_index: GoodIndex,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    env = {**base_env, "TWOTOWER_MODEL_STORE": str(own_models)}
    srv = spawn("serve", env, "api", worker=True)
    srv.wait_ready()
    good = good_index.build
    refused: list[str] = []
    with Load(srv.url, [RECALL, SCORE]) as load:
        for name, mutate, rehash, pointer_sha, reason in SWAP_VARIANTS:
            build = copy_build(index_root, version, good, mutate, rehash)
            publish(index_root, version, build, pointer_sha)
            srv.wait_log(rf"{re.escape(build)}.*{reason}")
            assert srv.build() == good, name
            refused.append(name)
        # An unreadable CURRENT pointer: logged, the current build keeps serving.
        write_atomic(index_root / version / CURRENT, b'{"build_id": ')
        srv.wait_log(r"index pointer of .* unreadable, current build keeps serving")
        assert srv.build() == good
        # A model file broken after start: the worker's build refuses it, the job fails, nothing changes.
        tower = own_models / version / "item_tower.onnx"
        original = tower.read_bytes()
        flip_bytes("item_tower.onnx")(tower.parent, {})
        job = srv.reindex()
        assert job["status"] == "failed" and "item_tower.onnx" in job["error"], job
        assert srv.build() == good
        tower.write_bytes(original)
        # Recovery without a restart: a good build (from the worker) is swapped in.
        job = srv.reindex()
        assert job["status"] == "succeeded", job
        srv.wait_build(job["index_build"])
        load.wait_count(load.count() + 20)
    outcomes = load.outcomes
    counts = summary(outcomes)
    assert set(counts) == {"200"}, counts
    assert {o.build for o in outcomes} <= {good, job["index_build"]}
    metrics = srv.get("/metrics").text
    assert f'twotower_index_loads_refused_total{{version="{version}"}} {len(SWAP_VARIANTS)}.0' in metrics

    report(
        "Broken builds published while serving (under load): "
        + "; ".join(refused)
        + "; CURRENT not JSON; item_tower.onnx corrupted before a worker build",
        "each refused with a log line naming build and file; the last good build keeps serving; "
        "zero failed requests; a good build later swaps in",
        f"{len(SWAP_VARIANTS)} builds refused (metric twotower_index_loads_refused = {len(SWAP_VARIANTS)}), "
        f"pointer error logged, build job failed naming item_tower.onnx; {fmt_counts(counts)}; "
        "only the good builds were ever served",
    )


def test_warm_up_refuses_useless_builds(
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    index_root: Path,
    good_index: GoodIndex,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    srv = spawn("serve", base_env, "api")
    srv.wait_ready()
    good = good_index.build
    seen: list[str] = []
    with Load(srv.url, [RECALL, SCORE]) as load:
        nan = copy_build(index_root, version, good, nan_vectors, rehash=True)
        publish(index_root, version, nan)
        seen.append(srv.wait_log(rf"{re.escape(nan)} refused.*warm-up"))
        ivf = copy_build(index_root, version, good, ivf_nprobe_zero, rehash=True)
        publish(index_root, version, ivf)
        seen.append(srv.wait_log(rf"{re.escape(ivf)} refused.*nprobe"))
        assert srv.build() == good
        fine = copy_build(index_root, version, good, rehash=True)
        publish(index_root, version, fine)
        srv.wait_build(fine)
        load.wait_count(load.count() + 20)
    counts = summary(load.outcomes)
    assert set(counts) == {"200"}, counts
    assert {o.build for o in load.outcomes} <= {good, fine}
    # Both broken builds passed every file check: only the warm-up (real searches) caught them.
    for b in (nan, ivf):
        assert f"loaded index build {version}/{b}" in srv.text()

    report(
        "Warm-up before traffic: a build of NaN vectors, and an IVF build whose search parameter makes "
        "every search raise (both with valid checksums)",
        "the warm-up (tower runs + searches) refuses both; neither ever serves a request",
        f"both loaded, then refused by the warm-up ({seen[0].split(': ')[-1]!r}; faiss `cur_nprobe > 0`); "
        f"{fmt_counts(counts)}, every response from {good[:19]}… or the next good build",
    )
