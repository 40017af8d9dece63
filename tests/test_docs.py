"""Every public name is documented with a runnable example.

The examples themselves run as doctests (``--doctest-modules`` in
pyproject.toml); this test makes sure none is missing.
"""

from __future__ import annotations

import inspect
import pathlib
import re
import types

import pytest

import floodax


@pytest.mark.parametrize("name", floodax.__all__)
def test_public_name_has_an_example(name):
    obj = getattr(floodax, name)
    doc = inspect.getdoc(obj) or ""
    assert "Examples:" in doc and ">>>" in doc, f"floodax.{name} has no example"


def test_all_lists_every_public_name():
    # Sub-packages (floodax.experiments) are attributes once imported.
    public = {
        n
        for n in dir(floodax)
        if not n.startswith("_")
        and not isinstance(getattr(floodax, n), types.ModuleType)
    }
    assert public == set(floodax.__all__)


def test_every_tutorial_is_in_the_index_toctree():
    docs = pathlib.Path(__file__).parent.parent / "docs"
    index = (docs / "index.md").read_text()
    listed = set(re.findall(r"^(tutorials/[\w-]+)$", index, flags=re.MULTILINE))
    pages = {f"tutorials/{p.stem}" for p in (docs / "tutorials").glob("*.md")}
    assert listed == pages
