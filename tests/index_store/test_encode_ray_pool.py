"""The Ray engine's actor pool size: one actor per CPU of each node, each beside a read task."""

from __future__ import annotations

import pytest

from index_store.encode_ray import RayOptions, pool_size
from models.errors import BuildRefused


@pytest.mark.parametrize(
    ("cpus", "actors"),
    [
        ([1, 1], 2),  # the test cluster: one actor a node (two of 0.75 CPU never fit on one)
        ([2], 2),  # one node started by the build on this box
        ([16, 16, 1], 33),
        ([1, 0.5], 1),  # half a CPU holds a read task, not an actor
        ([1.5], 1),
    ],
)
def test_one_actor_per_cpu_beside_a_read_task(cpus: list[float], actors: int) -> None:
    assert pool_size(cpus, RayOptions()) == actors


def test_no_room_for_an_actor_is_refused_with_the_cpus() -> None:
    with pytest.raises(BuildRefused, match=r"no node has room for an actor .* \[0.0, 0.5\]"):
        pool_size([0.5, 0.0], RayOptions())


def test_an_explicit_pool_size_wins() -> None:
    assert pool_size([1, 1], RayOptions(actors=5)) == 5
