"""The studies of flooding's mechanism, at tiny settings."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flax.nnx")
from floodax._cli import main
from floodax.experiments import load_dataset, studies
from tests.helpers import assert_counts_every_unit, bars


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def every_run_is_long(monkeypatch):
    """Every study's estimate is over the threshold, so each says it."""
    monkeypatch.setattr(studies, "LONG_RUN_SECONDS", -1.0)


def _one_bar(terminal, desc: str, total: int) -> None:
    """The study drew one bar, ``desc``, counting ``total`` units one by one,
    and announced its estimate once."""
    drawn = bars(terminal.getvalue())
    assert list(drawn) == [desc]
    assert assert_counts_every_unit(drawn[desc], total) == {1}
    assert terminal.getvalue().count(f"note: {desc}: about ") == 1


def test_flatness_records_sharpness_along_training(tmp_path, terminal):
    config = studies.FlatnessConfig(
        seeds=1, epochs=4, width=8, probe_every=2, landscape_points=5
    )
    out, table, png = studies.run_study("flatness", config, out=tmp_path)
    _one_bar(terminal, "flatness: epochs", 1 * 2 * 4)  # seeds x levels x epochs
    assert _is_png(png)
    assert len(out["runs"]) == 2  # b = 0 and the flood level
    for run in out["runs"]:
        assert run["epochs"] == [0, 2, 4]
        assert all(
            p["top_eigenvalue"] > 0 and p["grad_norm"] > 0 for p in run["probes"]
        )
        # The landscape's origin is the training loss the last probe measured.
        np.testing.assert_allclose(
            run["landscape"][2], run["probes"][-1]["train_loss"], rtol=1e-5
        )
    assert "| b=0 |" in table and "| b=0.28 |" in table


def test_noisy_bayes_risk():
    # Deterministic clean labels: the binary entropy of the noise rate.
    data = load_dataset("sinusoid2d", seed=0, label_noise=0.2)
    expected = -(0.2 * np.log(0.2) + 0.8 * np.log(0.8))
    assert studies.noisy_bayes_risk(data, 0.2) == pytest.approx(expected, rel=1e-12)
    assert studies.noisy_bayes_risk(data, 0.0) == 0.0
    # Two Gaussians, no noise: the mean of log(1 + e^{-|z|})-like terms for the
    # logistic posterior; drawn here independently of the dataset: the logit
    # of a point of either class is N(±D/2, D) with D = 10.
    gaussians = load_dataset("gaussians", seed=0)
    rng = np.random.default_rng(0)
    z = rng.normal(5.0, np.sqrt(10.0), 400_000)  # by symmetry one class suffices
    p = 1 / (1 + np.exp(-z))
    entropy = -(p * np.log(p) + (1 - p) * np.log1p(-p))
    assert studies.noisy_bayes_risk(gaussians, 0.0) == pytest.approx(
        np.nanmean(entropy), rel=0.03
    )


def test_noise_study(tmp_path, terminal):
    config = studies.NoiseConfig(
        seeds=1,
        epochs=2,
        datasets=("sinusoid2d",),
        noises=(0.0, 0.3),
        grid=(0.0, 0.3),
        width=8,
    )
    out, table, png = studies.run_study("noise", config, out=tmp_path)
    _one_bar(terminal, "noise: epochs", 2 * 2 * 2)  # noises x levels x epochs
    assert _is_png(png)
    assert [r["noise"] for r in out["rows"]] == [0.0, 0.3]
    assert all(r["chosen"] in (0.0, 0.3) for r in out["rows"])
    assert table.count("| sinusoid2d |") == 2


def test_derivation_study_tracks_the_penalty_on_a_smooth_network(tmp_path, terminal):
    config = studies.DerivationConfig(
        seeds=1,
        pairs=3,
        width=32,
        record_every=1,
        rates=((0.01, 0.005),),
        models=("smooth",),
    )
    out, table, png = studies.run_study("derivation", config, out=tmp_path)
    _one_bar(terminal, "derivation: pairs of steps", 3)
    assert _is_png(png)
    record = out["runs"][0]["record"]
    assert record["pair"] == [1, 2, 3]
    # Second order: the penalised run is far closer than plain descent.
    penalty = np.array(record["to_penalty"]) / np.array(record["moved"])
    descent = np.array(record["to_gradient_descent"]) / np.array(record["moved"])
    assert np.all(penalty < 0.01) and np.all(penalty < descent / 10)
    assert "| smooth | 0.01, 0.005 |" in table


def test_second_descent_detection():
    epochs = np.arange(1, 201)
    # Down to a minimum, up to a peak, down again: detected after the peak.
    loss = np.concatenate(
        [
            np.linspace(1.0, 0.4, 40),
            np.linspace(0.4, 0.8, 60),
            np.linspace(0.8, 0.5, 100),
        ]
    )
    found = studies._second_descent_epoch(epochs, loss, 0.1)
    assert found is not None and 100 < found < 140
    # Rising for good, or noise around a level, is no second descent.
    assert (
        studies._second_descent_epoch(epochs, np.linspace(0.3, 0.9, 200), 0.1) is None
    )
    noisy = 0.5 + 0.02 * np.random.default_rng(0).standard_normal(200)
    assert studies._second_descent_epoch(epochs, noisy, 0.1) is None


def test_second_descent_study(tmp_path, terminal):
    config = studies.SecondDescentConfig(
        seeds=1,
        epochs=6,
        noises=(0.3,),
        flood_levels=(0.52,),
        batch_sizes=(None, 50),
        width=8,
        test_every=2,
    )
    out, table, png = studies.run_study("second_descent", config, out=tmp_path)
    # batch sizes x levels x epochs
    _one_bar(terminal, "second descent: epochs", 2 * 2 * 6)
    assert _is_png(png)
    assert len(out["runs"]) == 4
    assert all(r["epochs"] == [2, 4, 6] for r in out["runs"])
    assert table.count("| 0.3 |") == 4


def test_demo_study_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        studies,
        "short_config",
        lambda name: studies.NoiseConfig(
            seeds=1,
            epochs=2,
            datasets=("sinusoid2d",),
            noises=(0.1,),
            grid=(0.0, 0.2),
            width=8,
        ),
    )
    assert (
        main(["demo", "--study", "noise", "--out", str(tmp_path), "--no-progress"]) == 0
    )
    printed = capsys.readouterr().out
    assert "| sinusoid2d | 0.1 |" in printed
    assert _is_png(tmp_path / "study_noise.png")
    with pytest.raises(ValueError, match="`study` must be one of"):
        studies.run_study("sharpness")
