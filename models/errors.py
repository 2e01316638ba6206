"""The project's exception hierarchy, shared by models, index_store and app.

TwoTowerError
├── FeatureError          a feature value or name does not fit the schema (client input)
├── DataError             a data file is missing or malformed (names file and row)
├── SchemaError           a schema file is wrong (names file, field and problem)
├── ManifestError         a model or index manifest is missing a field or does not match
├── ArtifactError         a file is missing, truncated or fails its checksum
├── VersionExists         a model version tag is immutable once written
├── TowerRefused          an imported ONNX tower does not fit its schema (names the file and input)
├── UnknownVersion        no model version or alias by that name
├── UnknownItem           an item id the version's index does not hold (and no features were sent)
├── IndexNotReady         the version is known but has no loaded index yet
│   └── ReplicasBehind    ... on some live replica (an alias move would 404 there)
├── BuildRefused          an index build failed a check and was not published
└── StoreUnavailable      the feature store (Redis) cannot be reached
"""

from __future__ import annotations


class TwoTowerError(Exception):
    """Base class: every error this project raises on purpose."""


class FeatureError(TwoTowerError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DataError(TwoTowerError):
    pass


class ManifestError(TwoTowerError):
    pass


class ArtifactError(TwoTowerError):
    pass


class VersionExists(TwoTowerError):
    pass


class TowerRefused(TwoTowerError):
    pass


class UnknownVersion(TwoTowerError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown model version or alias: {name!r}")
        self.name = name


class UnknownItem(TwoTowerError):
    def __init__(self, item_id: str, version: str) -> None:
        super().__init__(f"item {item_id!r} is not in the index of model version {version!r}")
        self.item_id = item_id


class IndexNotReady(TwoTowerError):
    def __init__(self, version: str) -> None:
        super().__init__(f"model version {version!r} has no ready index yet")
        self.version = version


class ReplicasBehind(IndexNotReady):
    def __init__(self, version: str, behind: dict[str, str]) -> None:
        listed = ", ".join(f"{r} ({why})" for r, why in sorted(behind.items()))
        TwoTowerError.__init__(
            self,
            f"model version {version!r} is not served by every live replica yet: {listed}; retry later",
        )
        self.version = version
        self.behind = behind


class BuildRefused(TwoTowerError):
    pass


class StoreUnavailable(TwoTowerError):
    pass


class StorageFull(StoreUnavailable):
    """A durable write failed for lack of space (ENOSPC, EDQUOT, EFBIG): nothing was changed."""


class SchemaError(TwoTowerError):
    """A schema file is wrong: the message names the file, the field and the problem."""

    def __init__(self, path: str, field: str, message: str) -> None:
        super().__init__(f"{path}: {field}: {message}" if field else f"{path}: {message}")
        self.path = path
        self.field = field
        self.message = message
