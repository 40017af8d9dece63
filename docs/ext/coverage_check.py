"""Fails the documentation build when a public name has no API entry.

Every name in the ``__all__`` of ``floodax``, ``floodax.experiments``,
``floodax.linen`` and ``floodax.nnx`` must be documented by an autodoc
directive somewhere in the docs, as optax's ``docs/ext/coverage_check.py``
requires of optax's names.
"""

from __future__ import annotations

import importlib

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

MODULES = {
    "floodax": None,
    "floodax.experiments": None,
    "floodax.linen": None,
    "floodax.nnx": None,
}


def public_names() -> set[str]:
    names = set()
    for module_name, explicit in MODULES.items():
        module = importlib.import_module(module_name)
        for name in explicit or module.__all__:
            names.add(f"{module_name}.{name}")
    return names


def check(app: Sphinx, env) -> None:
    documented = set(env.get_domain("py").objects)
    missing = sorted(public_names() - documented)
    if missing:
        raise ExtensionError(
            "public names without an API entry (add them to docs/api/): "
            + ", ".join(missing)
        )


def setup(app: Sphinx) -> dict:
    app.connect("env-check-consistency", check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
