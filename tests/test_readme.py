"""README.md runs as written."""

from __future__ import annotations

import re

import pytest

from tests.readme_blocks import README, python_blocks, run_blocks


def test_every_python_block_runs_in_order(tmp_path, monkeypatch, capsys):
    pytest.importorskip("flax")
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands here
    blocks = python_blocks()
    assert len(blocks) >= 12
    namespace = run_blocks(blocks)
    printed = capsys.readouterr().out
    # A few things the blocks claim, checked on what they computed.
    assert "near b = 0.05" in printed
    assert abs(float(namespace["loss"]) - 0.05) < 0.05
    assert 2.8 < namespace["report"].derivation_order < 3.2
    assert namespace["lr"] == pytest.approx(0.2)
    assert namespace["strength"] == pytest.approx(0.075)


def test_the_demo_flag_list_is_complete():
    from floodax._cli import _parser

    demo = _parser()._subparsers._group_actions[0].choices["demo"]
    flags = {
        option
        for action in demo._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    section = README.read_text().split("`floodax demo --help` shows", 1)[1]
    section = section.split("\n\n", 1)[0]
    listed = set(re.findall(r"`(--[a-z-]+)", section))
    assert listed == flags


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\nb\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]
