"""Every public name is documented with a runnable example.

The examples themselves run as doctests (``--doctest-modules`` in
pyproject.toml); this test makes sure none is missing.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import pathlib
import re
import tomllib
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


# -- The built site: typed fields, aligned math, and nothing loaded remotely --

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
# The sdist carries the tests but not docs/.
needs_docs = pytest.mark.skipif(
    not (DOCS / "conf.py").exists(), reason="docs/ is not in this tree"
)


def _public_objects():
    import floodax.experiments
    import floodax.linen

    for module in (floodax, floodax.experiments):
        for name in module.__all__:
            yield f"{module.__name__}.{name}", getattr(module, name)
    yield "floodax.linen.TrainState", floodax.linen.TrainState


def _is_namedtuple(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")


def test_public_namedtuple_fields_have_real_types():
    # The API pages print each field's annotation as its "Type:".
    untyped = []
    for qualname, obj in _public_objects():
        if not _is_namedtuple(obj):
            continue
        annotations = inspect.get_annotations(obj)
        for field in obj._fields:
            annotation = str(annotations.get(field, "Any"))
            if re.search(r"\bAny\b", annotation):
                untyped.append(f"{qualname}.{field}: {annotation}")
    assert not untyped, untyped


def _math_blocks(doc: str):
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != ".. math::":
            continue
        indent = len(line) - len(line.lstrip())
        body = []
        for later in lines[i + 1 :]:
            if later.strip() and len(later) - len(later.lstrip()) <= indent:
                break
            body.append(later)
        yield "\n".join(body)


def test_multi_equation_math_blocks_align_every_line():
    # Sphinx's MathJax writer puts the blank-line-separated equations of one
    # ``.. math::`` block into ``\begin{aligned}``: an equation without ``&``
    # is right-aligned there, out of line with the others.
    misaligned = []
    for qualname, obj in _public_objects():
        for block in _math_blocks(inspect.getdoc(obj) or ""):
            equations = [e for e in re.split(r"\n\s*\n", block) if e.strip()]
            if len(equations) > 1:
                misaligned += [
                    f"{qualname}: {e.strip()}" for e in equations if "&" not in e
                ]
    assert not misaligned, misaligned


def _conf_value(name: str):
    tree = ast.parse((DOCS / "conf.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"docs/conf.py does not set {name}")


@needs_docs
def test_docs_serve_mathjax_themselves():
    mathjax_path = _conf_value("mathjax_path")
    assert "//" not in mathjax_path, mathjax_path  # not a CDN address
    extensions = _conf_value("extensions")
    assert "sphinx-mathjax-offline" in extensions  # copies MathJax to _static
    assert "offline_assets" in extensions  # fails a build that loads remotely
    with open(DOCS.parent / "pyproject.toml", "rb") as f:
        docs_extra = tomllib.load(f)["project"]["optional-dependencies"]["docs"]
    assert any(r.startswith("sphinx-mathjax-offline") for r in docs_extra)


@pytest.fixture(scope="module")
def offline_assets():
    if not (DOCS / "ext" / "offline_assets.py").exists():
        pytest.skip("docs/ is not in this tree")
    spec = importlib.util.spec_from_file_location(
        "offline_assets", DOCS / "ext" / "offline_assets.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def site(tmp_path):
    (tmp_path / "_static" / "fonts").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax.js").write_text("")
    (tmp_path / "_static" / "fonts" / "a.woff2").write_text("")
    (tmp_path / "api").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "tag",
    [
        '<script src="https://cdn.example.org/mathjax.js"></script>',
        '<script src="//cdn.example.org/mathjax.js"></script>',
        '<link rel="stylesheet" href="http://example.org/a.css">',
        '<link rel="preload" href="https://example.org/font.woff2">',
        '<img src="https://example.org/plot.png">',
        "<style>@font-face { src: url('https://example.org/f.woff2') }</style>",
        '<div style="background: url(https://example.org/b.png)"></div>',
    ],
)
def test_offline_check_flags_a_remote_load(offline_assets, site, tag):
    problems = offline_assets.page_problems(tag, str(site / "api"), str(site))
    assert len(problems) == 1 and "remote" in problems[0], problems


def test_offline_check_flags_a_missing_local_file(offline_assets, site):
    page = '<script src="../_static/missing.js?v=1"></script>'
    problems = offline_assets.page_problems(page, str(site / "api"), str(site))
    assert len(problems) == 1 and "did not write" in problems[0], problems
    page = '<script src="../../elsewhere.js"></script>'
    problems = offline_assets.page_problems(page, str(site / "api"), str(site))
    assert len(problems) == 1 and "outside the built site" in problems[0]


def test_offline_check_passes_local_files_and_hyperlinks(offline_assets, site):
    page = (
        '<script defer src="../_static/mathjax.js?digest=abc"></script>'
        '<link rel="stylesheet" href="data:text/css,">'
        '<a href="https://github.com/">links load nothing</a>'
        '<link rel="canonical" href="https://example.org/">'
        "<script>var inline = 1;</script>"
    )
    assert offline_assets.page_problems(page, str(site / "api"), str(site)) == []
    css = "@font-face { src: url('fonts/a.woff2') format('woff2') }"
    assert offline_assets.css_problems(css, str(site / "_static"), str(site)) == []
    css = '@import "https://fonts.example.org/css";'
    assert offline_assets.css_problems(css, str(site / "_static"), str(site))


@needs_docs
def test_every_tutorial_is_in_the_index_toctree():
    index = (DOCS / "index.md").read_text()
    listed = set(re.findall(r"^(tutorials/[\w-]+)$", index, flags=re.MULTILINE))
    pages = {f"tutorials/{p.stem}" for p in (DOCS / "tutorials").glob("*.md")}
    assert listed == pages
