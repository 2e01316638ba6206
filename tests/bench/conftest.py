"""The bench's tests run on the committed demo model (what `make bench` measures)."""

from __future__ import annotations

import pytest

from models.manifest import ModelManifest, list_versions, load_version
from tests.conftest import DEMO_STORE


@pytest.fixture(scope="session")
def manifest() -> ModelManifest:
    """The newest demo version (overrides the suite's test model for tests/bench)."""
    versions = list_versions(DEMO_STORE)
    if not versions:
        pytest.skip("no demo model version in models/demo")
    return load_version(DEMO_STORE, versions[-1])
