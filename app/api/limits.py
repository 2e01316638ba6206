"""Limits on what a client sends that the request models cannot state (they are settings): 422s
that name the field path, e.g. `body.items.3.item_id`."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import HTTPException

from app.settings import Limits


def _refuse(loc: list[str | int], msg: str) -> HTTPException:
    return HTTPException(422, [{"loc": ["body", *loc], "msg": msg, "type": "limit"}])


def check_id(limits: Limits, value: str | None, *loc: str | int) -> None:
    """An id longer than `max_id_length` (a key in Redis, a row in a map: bounded everywhere)."""
    if value is not None and len(value) > limits.max_id_length:
        raise _refuse(list(loc), f"at most {limits.max_id_length} characters")


def check_ids(limits: Limits, values: Iterable[str], *loc: str | int) -> None:
    for i, value in enumerate(values):
        check_id(limits, value, *loc, i)


def check_exclusions(limits: Limits, exclude: list[str]) -> None:
    """The client's explicit list may not exceed the exclusion budget alone (its history may: see
    Service.recall)."""
    if len(exclude) > limits.max_exclude:
        raise _refuse(["exclude_item_ids"], f"at most {limits.max_exclude} ids")
    check_ids(limits, exclude, "exclude_item_ids")


def resolve_k(limits: Limits, k: int | None) -> int:
    """The request's `k`, or the default; outside 1..max_k a 422 naming `k`."""
    k = k if k is not None else min(limits.default_k, limits.max_k)
    if not 1 <= k <= limits.max_k:
        raise HTTPException(
            422, [{"loc": ["body", "k"], "msg": f"must be in 1..{limits.max_k}", "type": "range"}]
        )
    return k
