"""The settings tables of the docs are made from the settings table and kept current."""

from __future__ import annotations

import pytest

from pmx import settings_docs
from pmx.config import OPTIONS, SETTINGS

FILES = sorted({file for file, _ in settings_docs.TABLES.values()})


@pytest.mark.parametrize("name", FILES)
def test_the_committed_docs_are_what_the_settings_table_makes(name):
    text = (settings_docs.DOCS / name).read_text(encoding="utf-8")
    assert settings_docs.generate(name, text) == text, (
        f"docs/{name} differs from the settings table (pmx/config.py); regenerate it with "
        "'.venv/bin/python -m pmx.settings_docs' and commit the result."
    )


def test_a_changed_table_is_put_back():
    text = (settings_docs.DOCS / "cli.md").read_text(encoding="utf-8")
    drifted = text.replace("| `--backlog N` | `2048` |", "| `--backlog N` | `1024` |")
    assert drifted != text
    assert settings_docs.generate("cli.md", drifted) == text


def test_missing_markers_are_an_error():
    with pytest.raises(ValueError, match="docs/config.md has no '<!-- settings: file-keys -->'"):
        settings_docs.generate("config.md", "# no tables here\n")


def test_check_mode_reports_without_writing(tmp_path, monkeypatch, capsys):
    for name in FILES:
        text = (settings_docs.DOCS / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace("| `--backlog N` | `2048` |",
                                                  "| `--backlog N` | `1` |"))
    monkeypatch.setattr(settings_docs, "DOCS", tmp_path)
    before = (tmp_path / "cli.md").read_text()
    assert settings_docs.main(["--check"]) == 1
    assert capsys.readouterr().out.strip() == (
        "out of date: docs/cli.md; run: python -m pmx.settings_docs"
    )
    assert (tmp_path / "cli.md").read_text() == before
    assert settings_docs.main([]) == 0
    assert settings_docs.main(["--check"]) == 0


def test_every_setting_is_in_the_docs_tables():
    cli = (settings_docs.DOCS / "cli.md").read_text(encoding="utf-8")
    config = (settings_docs.DOCS / "config.md").read_text(encoding="utf-8")
    for row in OPTIONS:
        assert f"| `{row.key}` |" in config
        if row.flags:
            assert f"`{row.long_flag}" in cli
    for row in SETTINGS:
        assert f"| `{row.name}` |" in config
