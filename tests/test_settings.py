"""Renamed settings: the old names still configure the server, with a warning naming the
new one; the new name wins when both are set."""

from __future__ import annotations

import logging

import pytest

from clip_service.settings import RENAMED, get_settings


@pytest.fixture
def fresh(monkeypatch):
    for old, new in RENAMED.items():
        monkeypatch.delenv(old, raising=False)
        monkeypatch.delenv(new, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_old_names_are_read_with_a_warning(fresh, monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("LABEL_LISTS_DIR", str(tmp_path))
    monkeypatch.setenv("MAX_LABEL_LISTS", "3")
    monkeypatch.setenv("MAX_LIST_LABELS", "7")
    with caplog.at_level(logging.WARNING, "clip_service.settings"):
        settings = get_settings()
    assert (settings.custom_tables_dir, settings.max_custom_tables) == (tmp_path, 3)
    assert settings.max_custom_table_labels == 7
    assert [r.getMessage() for r in caplog.records] == [
        f"setting {old} is deprecated (read as {new}): rename it" for old, new in RENAMED.items()
    ]


def test_the_new_name_wins(fresh, monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("LABEL_LISTS_DIR", str(tmp_path / "old"))
    monkeypatch.setenv("CUSTOM_TABLES_DIR", str(tmp_path / "new"))
    with caplog.at_level(logging.WARNING, "clip_service.settings"):
        assert get_settings().custom_tables_dir == tmp_path / "new"
    assert "ignored: CUSTOM_TABLES_DIR" in caplog.text
