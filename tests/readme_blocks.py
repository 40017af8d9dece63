"""README.md's Python blocks, for the tests that run them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str | None = None) -> list[str]:
    """Every fenced ```python block of README.md, in order."""
    text = README.read_text() if text is None else text
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def run_blocks(blocks: list[str]) -> dict:
    """Runs the blocks in order in one namespace, as a reader would paste them."""
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md, Python block {i + 1}", "exec"), namespace)
    return namespace
