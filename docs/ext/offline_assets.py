"""Fails the HTML build when a page would load anything from another host.

The documentation must render offline: MathJax, the theme's styles and its
fonts are served with the site (``sphinx-mathjax-offline`` ships MathJax).
After the build, every page's ``<script src>``, resource ``<link href>``
(stylesheets, icons, preloads), ``<img>``/``<iframe>``/``<source>``/
``<embed>``/``<object>`` and CSS ``url(...)``/``@import``, and every CSS file
under ``_static``, must name a file of the built site, and that file must
exist. Hyperlinks (``<a href>``) may point anywhere: they load nothing.

The checks are plain functions (:func:`page_problems`, :func:`css_problems`),
so ``tests/test_docs.py`` runs them without building the docs.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

# <link rel=...> values that make the browser fetch the target.
_FETCHING_RELS = {
    "stylesheet",
    "icon",
    "shortcut",
    "apple-touch-icon",
    "preload",
    "modulepreload",
    "prefetch",
    "manifest",
    "preconnect",
    "dns-prefetch",
}
_SOURCE_ATTRS = {
    "script": "src",
    "img": "src",
    "iframe": "src",
    "source": "src",
    "embed": "src",
    "audio": "src",
    "video": "src",
    "track": "src",
    "object": "data",
}
_CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]*)\1\s*\)|@import\s+(['"])([^'"]*)\3""")


def _remote(url: str) -> bool:
    return url.startswith("//") or bool(urlsplit(url).scheme)


def _local_path(url: str, base_dir: str) -> str:
    return os.path.normpath(os.path.join(base_dir, unquote(urlsplit(url).path)))


class _Resources(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str]] = []  # (what, url)
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "link":
            rels = set((attrs.get("rel") or "").lower().split())
            if rels & _FETCHING_RELS and attrs.get("href"):
                self.urls.append(
                    (f"<link rel={' '.join(sorted(rels))}>", attrs["href"])
                )
        elif tag in _SOURCE_ATTRS and attrs.get(_SOURCE_ATTRS[tag]):
            self.urls.append((f"<{tag}>", attrs[_SOURCE_ATTRS[tag]]))
        if attrs.get("style"):
            self.urls += [("style attribute", u) for u in _css_urls(attrs["style"])]
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.urls += [("<style>", u) for u in _css_urls(data)]


def _css_urls(css: str) -> list[str]:
    return [m.group(2) or m.group(4) for m in _CSS_URL.finditer(css)]


def _problems(found, base_dir: str, outdir: str) -> list[str]:
    problems = []
    for what, url in found:
        if url.startswith(("data:", "#")) or not urlsplit(url).path:
            continue
        if _remote(url):
            problems.append(f"{what} loads a remote {url}")
            continue
        path = _local_path(url, base_dir)
        if not path.startswith(os.path.normpath(outdir) + os.sep):
            problems.append(f"{what} loads {url}, outside the built site")
        elif not os.path.exists(path):
            problems.append(f"{what} loads {url}, which the build did not write")
    return problems


def page_problems(html: str, page_dir: str, outdir: str) -> list[str]:
    """What a page (its text, its folder) loads from outside ``outdir``."""
    parser = _Resources()
    parser.feed(html)
    return _problems(parser.urls, page_dir, outdir)


def css_problems(css: str, css_dir: str, outdir: str) -> list[str]:
    """What a stylesheet (its text, its folder) loads from outside ``outdir``."""
    return _problems([("CSS", u) for u in _css_urls(css)], css_dir, outdir)


def site_problems(outdir: str) -> list[str]:
    """Every problem of the built site, each prefixed by its file."""
    problems = []
    for root, _, files in os.walk(outdir):
        for name in files:
            # An .html under _static is a theme's Jinja macro file, not a page.
            in_static = os.path.relpath(root, outdir).split(os.sep)[0] == "_static"
            if not name.endswith(".css") and not (
                name.endswith(".html") and not in_static
            ):
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            check = page_problems if name.endswith(".html") else css_problems
            rel = os.path.relpath(path, outdir)
            problems += [f"{rel}: {p}" for p in check(text, root, outdir)]
    return sorted(problems)


def _check_build(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    problems = site_problems(app.outdir)
    if problems:
        from sphinx.errors import ExtensionError

        raise ExtensionError(
            "the HTML would not render offline:\n  " + "\n  ".join(problems)
        )


def setup(app) -> dict:
    # After the default priority (500): sphinx-mathjax-offline copies MathJax
    # into _static at build-finished, and the check needs those files there.
    app.connect("build-finished", _check_build, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
