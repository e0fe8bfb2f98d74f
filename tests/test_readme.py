"""The README's module map (its Architecture section) lists exactly the modules flip has."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

_ENTRY = re.compile(r"(?P<indent> *)(?P<name>[\w.]+(?:/|\.py))(?:\s|$)")


def _module_map() -> set[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Architecture", 1)[1].split("```", 2)[1]
    listed, stack = set(), []
    for line in block.splitlines():
        match = _ENTRY.match(line)
        if not match or line[len(match.group("indent")) :].startswith(" "):
            continue  # a continuation line
        depth = len(match.group("indent")) // 2
        stack = stack[:depth] + [match.group("name")]
        if match.group("name").endswith(".py"):
            listed.add("".join(stack))
    return listed


@pytest.mark.unit
def test_every_module_is_in_the_module_map():
    actual = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "flip").rglob("*.py")
        if "__pycache__" not in p.parts
        and not p.relative_to(REPO / "flip").as_posix().startswith(("demo/app/", "demo/multistage/", "demo/flip_app/"))
    }
    listed = _module_map()
    assert sorted(listed - actual) == [], "listed in the README but not in flip/"
    assert sorted(p for p in actual - listed if not p.endswith("/__init__.py")) == [], "add to the README's map"
