"""Where a dataset's tables live and which columns hold the ids: the `[data]`/`[interactions]` part
of a schema file, shared by the readers, the trainer and the manifest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FORMATS = (".parquet", ".csv", ".jsonl")


@dataclass(frozen=True)
class DataLayout:
    """Table stems (resolved in the data directory: `<stem>.parquet|.csv|.jsonl`) and id columns.

    The defaults are what a schema file without `[data]`/`[interactions]` means, and what the
    service's in-process store reads when it is given no schema.
    """

    users: str = "users"
    items: str = "items"
    interactions: str = "interactions"
    user_id: str = "user_id"  # id column of the users table (`[user] id`)
    item_id: str = "item_id"  # id column of the items table (`[item] id`)
    inter_user: str = "user_id"  # columns of the interactions table
    inter_item: str = "item_id"
    timestamp: str | None = "timestamp"  # None: file order is time order
    history: tuple[str, ...] = ("history",)  # user keys filled from the interactions (sources)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": {"users": self.users, "items": self.items, "interactions": self.interactions},
            "interactions": {"user": self.inter_user, "item": self.inter_item, "timestamp": self.timestamp},
            "user_id": self.user_id,
            "item_id": self.item_id,
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DataLayout:
        data = raw.get("data", {})
        inter = raw.get("interactions", {})
        d = cls()
        ts = inter.get("timestamp", d.timestamp)
        return cls(
            users=str(data.get("users", d.users)),
            items=str(data.get("items", d.items)),
            interactions=str(data.get("interactions", d.interactions)),
            user_id=str(raw.get("user_id", d.user_id)),
            item_id=str(raw.get("item_id", d.item_id)),
            inter_user=str(inter.get("user", d.inter_user)),
            inter_item=str(inter.get("item", d.inter_item)),
            timestamp=None if ts is None else str(ts),
            history=tuple(str(h) for h in raw.get("history", d.history)),
        )
