"""The settings tables of docs/cli.md and docs/config.md, made from the settings table.

Each generated table sits between two markers in its file::

    <!-- settings: run-options -->
    | Option | Default | Meaning |
    ...
    <!-- /settings: run-options -->

``python -m pmx.settings_docs`` rewrites them in place; ``--check`` only says whether
they are up to date (tests/test_settings_docs.py runs it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from pmx.config import OPTIONS, SETTINGS
from pmx.settings import Scope, Setting

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _toml_default(row: Setting) -> str:
    if row.default_doc:
        return row.default_doc
    value = row.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`" if value is not None else ""


def _python(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _flags(row: Setting, metavar: bool) -> str:
    """``-i``, ``--workers N|max`` or ``--access-log / --no-access-log``."""
    if not row.flags:
        return "TARGET"
    long = row.long_flag
    if row.is_flag:
        return f"`{long} / --no-{long[2:]}`"
    shorts = [f"`{flag}`" for flag in row.flags if flag != long]
    meta = row.shown_metavar or "|".join(row.kind.choices)
    shown = f"`{long} {meta}`" if metavar and meta else f"`{long}`"
    return ", ".join([*shorts, shown])


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cells in rows:
        lines.append(" ".join(["|", *(f"{c.replace('|', chr(92) + '|')} |" if c else "|"
                                      for c in cells)]))
    return "\n".join(lines)


def run_options() -> str:
    rows = [[_flags(r, True), r.shown_default, r.doc or r.help]
            for r in OPTIONS if r.flags and Scope.RUN in r.scope]
    rows.append(["`-h`, `--help`", "", "Show the help and exit."])
    return _table(["Option", "Default", "Meaning"], rows)


def start_options() -> str:
    rows = [[_flags(r, True), r.shown_default, r.doc or r.help]
            for r in OPTIONS if r.flags and Scope.START in r.scope and Scope.RUN not in r.scope]
    rows.append(["`--json`", "off", "Print the status of the started apps as "
                 "[JSON](#json-schema) instead of the table."])
    return _table(["Option", "Default", "Meaning"], rows)


def file_keys() -> str:
    rows = []
    for r in OPTIONS:
        if Scope.FILE not in r.scope:
            continue
        option = _flags(r, False)
        if r.is_flag:
            option = f"`{r.long_flag}` / `--no-{r.long_flag[2:]}`"
        elif r.kind.multiple:
            option += " (repeated)"
        rows.append([f"`{r.key}`", r.kind.toml_doc, _toml_default(r), option])
    return _table(["Key", "TOML type", "Default", "Command-line equivalent"], rows)


def fields() -> str:
    rows = []
    for r in SETTINGS:
        default = "(required)" if r.required else f"`{_python(r.default)}`"
        if r.default_doc and not r.required:
            default += f" ({r.default_doc})"
        option = _flags(r, False)
        if Scope.RUN not in r.scope:
            option += " (`pmx start` only)"
        rows.append([f"`{r.name}`", r.kind.type_doc, default, option, f"`{r.key}`"])
    return _table(["Field", "Type", "Default", "Option", "Config key"], rows)


TABLES: dict[str, tuple[str, Callable[[], str]]] = {
    "run-options": ("cli.md", run_options),
    "start-options": ("cli.md", start_options),
    "file-keys": ("config.md", file_keys),
    "fields": ("config.md", fields),
}


def generate(name: str, text: str) -> str:
    """``text`` (a docs file) with every table it marks regenerated."""
    for table, (file, render) in TABLES.items():
        if file != name:
            continue
        pattern = re.compile(
            rf"(<!-- settings: {table} -->\n).*?(\n<!-- /settings: {table} -->)", re.DOTALL
        )
        match = pattern.search(text)
        if not match:
            raise ValueError(f"docs/{name} has no '<!-- settings: {table} -->' markers.")
        text = text[: match.end(1)] + render() + text[match.start(2) :]
    return text


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in sorted({file for file, _ in TABLES.values()}):
        path = DOCS / name
        text = path.read_text(encoding="utf-8")
        new = generate(name, text)
        if new != text:
            stale.append(f"docs/{name}")
            if not check:
                path.write_text(new, encoding="utf-8")
    if check and stale:
        print(f"out of date: {', '.join(stale)}; run: python -m pmx.settings_docs")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
