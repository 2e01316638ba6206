"""The README's configuration table is the Settings class, not a copy that drifts."""

from __future__ import annotations

from pathlib import Path

from app.settings_doc import rows, table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_is_current() -> None:
    assert table() in README.read_text(), "run `python -m app.settings_doc --write`"


def test_every_setting_is_described() -> None:
    from app.settings import Settings
    from app.settings_doc import DESCRIPTIONS

    assert {key for key, _ in rows(Settings)} == set(DESCRIPTIONS)
