"""CONTRIBUTING.md's plugin example is the code the tests run: the snippets match the files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "CONTRIBUTING.md").read_text()
FILE_SNIPPET = re.compile(r"<!-- file: (?P<path>\S+) -->\n```python\n(?P<code>.*?)```", re.S)
ENTRY_POINTS = re.compile(r"<!-- entry-points: (?P<path>\S+) -->\n```toml\n(?P<code>.*?)```", re.S)


def _snippets() -> list[tuple[str, str]]:
    return [(m["path"], m["code"]) for m in FILE_SNIPPET.finditer(GUIDE)]


def test_the_guide_shows_the_whole_example() -> None:
    shown = {path for path, _ in _snippets()}
    assert shown == {
        "tests/fake_plugin/sdl_example/bz2_codec.py",
        "tests/fake_plugin/sdl_example/fakemem.py",
        "tests/fake_plugin/kit_tests.py",
    }


@pytest.mark.parametrize(("path", "code"), _snippets(), ids=lambda value: str(value)[:40])
def test_code_snippets_are_the_files_verbatim(path: str, code: str) -> None:
    assert code == (ROOT / path).read_text()


def test_entry_point_snippet_matches_the_dist_info() -> None:
    match = ENTRY_POINTS.search(GUIDE)
    assert match is not None
    lines = match["code"].splitlines()
    assert lines[0] == "[project.entry-points.splitdataloader]"
    shown = dict(re.fullmatch(r'(\S+) = "(\S+)"', line).groups() for line in lines[1:])  # type: ignore[union-attr]
    installed_lines = (ROOT / match["path"]).read_text().splitlines()
    assert installed_lines[0] == "[splitdataloader]"
    installed = dict(line.split(" = ") for line in installed_lines[1:])
    assert shown == installed
    assert len(shown) == 2
