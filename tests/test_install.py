"""The notebook's install cell picks the right way to install floodax.

floodax is not on a package index yet, so the cell installs the checkout it
sits in, and elsewhere stops with one line that says what to do (instead of
failing two cells later on ``import jax``). pip itself is not run here: the
command it would run is recorded.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "tpu_colab.ipynb"


def _run_install_cell():
    """Runs the cell tagged ``install`` as is and returns its namespace; here,
    where floodax and Flax are installed, it does nothing."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (source,) = (
        c.source for c in notebook.cells if "install" in c.metadata.get("tags", [])
    )
    namespace: dict = {}
    exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    return namespace


@pytest.fixture
def cell(monkeypatch):
    """The install cell's function, with nothing importable and pip recorded."""
    namespace = _run_install_cell()
    calls = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a[0]))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return namespace["install_floodax"], calls


def test_in_a_checkout_it_installs_that_checkout(cell, tmp_path):
    install, calls = cell
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "floodax"\n')
    (tmp_path / "examples").mkdir()
    assert install(tmp_path / "examples") == tmp_path
    assert calls == [
        [sys.executable, "-m", "pip", "install", "-q", "-e", f"{tmp_path}[demo]"]
    ]
    assert sys.path[0] == str(tmp_path)


def test_outside_a_checkout_it_stops_with_one_line(cell, tmp_path):
    install, calls = cell
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n')
    with pytest.raises(SystemExit) as stop:
        install(tmp_path)
    message = str(stop.value)
    assert "\n" not in message and "not on PyPI yet" in message
    assert 'pip install -e ".[demo]"' in message
    assert calls == []


def test_installed_it_does_nothing(cell, tmp_path, monkeypatch):
    install, calls = cell
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert install(tmp_path) is None
    assert calls == []


def test_the_repository_is_found_from_its_examples_folder():
    namespace = _run_install_cell()
    assert namespace["floodax_checkout"](NOTEBOOK.parent) == NOTEBOOK.parents[1]


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_install_instructions_name_this_version_and_no_index(page):
    import floodax

    text = (NOTEBOOK.parents[1] / page).read_text()
    wheels = set(re.findall(r"dist/floodax-([^-]+)-py3-none-any\.whl", text))
    assert wheels == {floodax.__version__}
    # `pip install floodax` appears only with the caveat that it is unpublished.
    assert "`pip install floodax` works only once" in text
