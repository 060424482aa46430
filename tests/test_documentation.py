"""The documentation points only inside the repository, and every test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "documentation").rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)((?:::\w+)?)`")


def _local_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text(encoding="utf-8"))
            if not t.startswith(("http://", "https://", "mailto:", "#"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_local_links_resolve_inside_the_repository(page: Path):
    broken = []
    for target in _local_links(page):
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert broken == []


def test_every_test_named_in_reliability_md_exists():
    text = (ROOT / "documentation" / "reliability.md").read_text(encoding="utf-8")
    named = TEST_REFERENCE.findall(text)
    assert len(named) > 30
    missing = []
    for path, function in named:
        source = ROOT / path
        if not source.is_file():
            missing.append(path)
        elif function and not re.search(rf"^def {function[2:]}\(", source.read_text(encoding="utf-8"), re.M):
            missing.append(path + function)
    assert missing == []
