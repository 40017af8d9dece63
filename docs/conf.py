"""Sphinx configuration of floodax's documentation.

Build:  sphinx-build -W -b html docs docs/_build/html
The tutorials are MyST notebooks executed at build time (myst-nb); the API
reference comes from the docstrings (autodoc, napoleon), and
``ext/coverage_check.py`` fails the build when a public name is undocumented,
and ``ext/offline_assets.py`` when a page would load a script, a stylesheet or
a font from another host (the site must render offline).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath("ext"))

import floodax

project = "floodax"
author = "The floodax authors"
copyright = "2026, the floodax authors"
release = floodax.__version__
version = floodax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # Ships MathJax 3 and copies it into _static: the math renders offline.
    "sphinx-mathjax-offline",
    "sphinx.ext.intersphinx",
    "myst_nb",
    "coverage_check",
    "offline_assets",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
# "**/screenshots": _static/screenshots (how the site looks, for reviewers)
# stays out of the built site; html_static_path honours these patterns too.
exclude_patterns = [
    "_build",
    "jupyter_execute",
    "**.ipynb_checkpoints",
    "**/screenshots",
]
root_doc = "index"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
# Keep chex's and optax's aliases by name instead of expanding their unions.
autodoc_type_aliases = {
    "chex.Numeric": "chex.Numeric",
    "chex.Array": "chex.Array",
    "chex.ArrayTree": "chex.ArrayTree",
    "optax.ScalarOrSchedule": "optax.ScalarOrSchedule",
    "optax.Params": "optax.Params",
    "optax.Updates": "optax.Updates",
}
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# The copy sphinx-mathjax-offline puts in _static, not the CDN's.
mathjax_path = "mathjax/tex-chtml.js"

myst_enable_extensions = ["dollarmath", "colon_fence"]
nb_execution_mode = "cache"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

intersphinx_mapping = {}

html_theme = "sphinx_book_theme"
html_title = f"floodax {release}"
html_static_path = ["_static"]
html_css_files = ["floodax.css"]
# The page's contents list "learning_rate" under "EquivalentPenalty", not
# "EquivalentPenalty.learning_rate": the nesting already names the class.
toc_object_entries_show_parents = "hide"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
}

# NamedTuple fields render as plain attributes; their docstrings document them.
nitpicky = False
