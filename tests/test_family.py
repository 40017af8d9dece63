"""The family's registry, its training through the NNX loop, and the harness
that compares it (floodax/experiments/family.py and compare.py)."""

from __future__ import annotations

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import floodax
import floodax.nnx
from floodax.experiments import (
    FAMILY,
    MLP,
    FamilyConfig,
    TrainConfig,
    make_synthetic,
    run_family,
    select_flood_level,
    sweep_flood_levels,
)
from floodax.experiments import compare as harness
from floodax.experiments.family import build_optimizer, set_hyperparameter
from floodax.experiments.training import History, SweepResult
from tests.helpers import assert_trees_allclose

LR, MOMENTUM = 0.1, 0.9


def _direct(name: str, h: float):
    """Each method written out from floodax's public calls, independently of
    the registry: ``(objective(losses) or None, optax chain)``."""
    sgd = optax.sgd(LR, momentum=MOMENTUM)
    plain = optax.with_extra_args_support(sgd)
    return {
        "erm": (lambda losses: losses.mean(), plain),
        "flood": (None, optax.chain(floodax.flood(h), sgd)),
        "iflood": (lambda losses: floodax.iflooded(losses, h), plain),
        "softad": (lambda losses: floodax.softad(losses, h), plain),
        "sam": (None, optax.chain(floodax.sam(h), sgd)),
        "asam": (None, optax.chain(floodax.sam(h, adaptive=True, eps=1e-16), sgd)),
        "gsam": (None, optax.chain(floodax.gsam(h, 0.1), sgd)),
        "gnp": (
            None,
            optax.chain(
                floodax.add_grad_norm_penalty(
                    0.05 * h, power=1, method="finite_difference", radius=0.05
                ),
                sgd,
            ),
        ),
        "penalty": (None, optax.chain(floodax.add_grad_norm_penalty(h), sgd)),
        "alternate": (
            None,
            optax.chain(optax.trace(decay=MOMENTUM), floodax.alternate(h, h / 10)),
        ),
        "erm_rate": (
            lambda losses: losses.mean(),
            optax.with_extra_args_support(optax.sgd(h, momentum=MOMENTUM)),
        ),
    }[name]


def _problem():
    key = jax.random.key(0)
    params = {
        "w": 0.5 * jax.random.normal(key, (3, 4), jnp.float64),
        "b": jnp.zeros(4, jnp.float64),
    }
    x = jax.random.normal(jax.random.key(1), (16, 3), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (16,), 0, 4)

    def losses(p):
        return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y)

    return params, losses


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", sorted(set(FAMILY) - {"adaflood"}))
def test_each_entry_steps_as_the_direct_floodax_call(name):
    """Two steps of the registry's entry at h (its grid's last value, not the
    one the optimizer is built with) equal two steps of the floodax call
    written out by hand; the second step of the alternating scheme ascends."""
    method = FAMILY[name]
    h = method.grid[-1]
    params, losses = _problem()
    tx = build_optimizer(
        method, optax.sgd(LR, momentum=MOMENTUM), optax.trace(decay=MOMENTUM)
    )
    state = set_hyperparameter(method, tx.init(params), h)
    objective, direct_tx = _direct(name, h)
    # Only SAM's kind takes value_fn; the alternating scheme steps across
    # calls, without it.
    takes = name in ("sam", "asam", "gsam", "gnp", "penalty")

    def fn(p):
        return method.objective(losses(p), jnp.asarray(h), None)

    def reference(p):
        return losses(p).mean() if objective is None else objective(losses(p))

    @jax.jit  # one program, not hundreds of dispatches
    def two_steps(state, direct_state):
        ours, theirs = params, params
        for _ in range(2):
            value, grads = jax.value_and_grad(fn)(ours)
            extra = {"value_fn": fn} if method.value_fn else {}
            updates, state = tx.update(grads, state, ours, value=value, **extra)
            ours = optax.apply_updates(ours, updates)
            value, grads = jax.value_and_grad(reference)(theirs)
            extra = {"value_fn": reference} if takes else {}
            direct, direct_state = direct_tx.update(
                grads, direct_state, theirs, value=value, **extra
            )
            theirs = optax.apply_updates(theirs, direct)
        return ours, theirs

    ours, theirs = two_steps(state, direct_tx.init(params))
    assert_trees_allclose(ours, theirs, rtol=1e-12, atol=1e-15)
    assert not np.allclose(ours["w"], params["w"])


@pytest.mark.usefixtures("x64")
def test_adaflood_entry_is_iflood_at_adaflood_levels():
    params, losses = _problem()
    aux = jnp.linspace(0.1, 2.0, 16)
    method = FAMILY["adaflood"]
    gamma = 0.3

    def direct(p):
        return floodax.iflooded(losses(p), floodax.adaflood_levels(aux, gamma=gamma))

    np.testing.assert_allclose(
        jax.grad(lambda p: method.objective(losses(p), gamma, aux))(params)["w"],
        jax.grad(direct)(params)["w"],
        rtol=1e-13,
    )


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"datasets": ("imagenet",)}, ValueError, "`datasets` must name datasets"),
        ({"label_noises": (1.5,)}, ValueError, "`label_noises`"),
        ({"seeds": ()}, ValueError, "must each name at least one"),
        ({"seeds": (-1,)}, ValueError, "`seeds` must be an integer >= 0"),
        ({"model": "rnn"}, ValueError, "`model` must be one of"),
        ({"width": 0}, ValueError, "`width` must be an integer >= 1"),
        ({"epochs": 0}, ValueError, "`epochs` must be an integer >= 1"),
        ({"validation": "test"}, ValueError, "`validation` must be one of"),
        ({"learning_rate": -0.1}, ValueError, "`learning_rate`"),
        ({"seeds": (0, 1, 0)}, ValueError, "`seeds` must not repeat"),
        ({"methods": ("erm", "erm")}, ValueError, "`methods` must not repeat"),
        ({"label_noises": (0.2, 0.2)}, ValueError, "`label_noises` must not"),
        # The cache key writes 6 digits: it would be 0.2's.
        ({"label_noises": (0.2000001,)}, ValueError, "at most 6 significant"),
    ],
)
def test_bad_family_configs_are_refused_naming_the_field(change, error, message):
    with pytest.raises(error, match=message):
        FamilyConfig(**change)


def test_unknown_method_and_bad_levels_are_refused():
    with pytest.raises(ValueError, match=r"`method` must be one of \('erm'"):
        TrainConfig(method="sharp")
    with pytest.raises(ValueError, match="must include 'erm' and 'flood'"):
        FamilyConfig(methods=("sam",))
    with pytest.raises(ValueError, match="`method` must be one of"):
        FamilyConfig(methods=("erm", "flood", "nope"))


@pytest.fixture(scope="module")
def tiny():
    data = make_synthetic("gaussians", n_train=24, n_val=24, n_test=40, seed=1)
    model = MLP(10, 2, width=8, depth=1, rngs=nnx.Rngs(0))
    return data, model


def test_vmapped_grid_takes_the_steps_of_a_hand_written_nnx_loop(tiny):
    """One vmapped program over SAM's grid (full batch, two epochs: two
    steps) gives, for a value, the run of the NNX loop of the README at that
    value (floodax.nnx.value_and_grad, optimizer.update(..., value_fn=)), to
    float32 rounding, and another run for the other value: the value reaches
    each run as SAM's radius."""
    data, model = tiny
    config = TrainConfig(epochs=2, learning_rate=LR, method="sam")
    grid = (0.05, 0.5)
    sweep = sweep_flood_levels(
        model, data, config, grid, vectorized=True, progress=False
    )
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

    def loss_fn(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    @nnx.jit
    def step(model, optimizer):
        loss, grads, value_fn = floodax.nnx.value_and_grad(loss_fn, model, x, y)
        optimizer.update(model, grads, value=loss, value_fn=value_fn)

    h = grid[1]  # not the value the optimizer is built with
    mine = nnx.clone(model)
    mine.train()
    optimizer = nnx.Optimizer(mine, _direct("sam", h)[1], wrt=nnx.Param)
    for _ in range(2):
        step(mine, optimizer)
    mine.eval()
    val = loss_fn(mine, jnp.asarray(data.x_val), jnp.asarray(data.y_val))
    np.testing.assert_allclose(sweep.history.val_loss[1, -1], val, rtol=1e-5)
    assert abs(np.diff(sweep.history.val_loss[:, -1])[0]) > 1e-4


def _sweep(val_accuracy, test_accuracy, val_loss=None):
    k = len(val_accuracy)
    column = np.asarray(val_accuracy, np.float64)[:, None]
    loss = np.zeros((k, 1)) if val_loss is None else np.asarray(val_loss)[:, None]
    history = History(*[None] * 12)._replace(val_accuracy=column, val_loss=loss)
    levels = np.arange(1.0, k + 1)
    best = select_flood_level(history, levels, validation="noisy")
    return SweepResult(
        levels,
        history,
        np.zeros(k),
        np.asarray(test_accuracy),
        np.zeros(k),
        best,
        float(levels[best]),
        "noisy",
        False,
    )


def test_the_value_best_on_validation_wins_though_its_test_score_is_worst():
    record = harness.record_from_sweep(
        _sweep([0.5, 0.9, 0.7], [0.95, 0.6, 0.8]), seconds=1.0
    )
    assert record["chosen_index"] == 1
    assert record["chosen"] == 2.0
    assert record["chosen_test_accuracy"] == 0.6
    assert record["chosen_val_accuracy"] == 0.9


def _fake_cell(config, dataset, noise, method, seed, *, cells, progress):
    """A cell whose numbers are known: accuracy by method and seed."""
    del progress
    if method == harness.RULE:
        return {
            "flood_level": 0.1 * (seed + 1),
            "epoch": 3,
            "validation_loss_rises": seed != 0,
            "test_accuracy": 0.70 + 0.01 * seed,
            "seconds": 1.0,
        }
    if method == harness.RULE_LOGGED:
        return {
            "flood_level": 0.2 * (seed + 1),
            "epoch": 2,
            "validation_loss_rises": True,
            "test_accuracy": 0.73 + 0.02 * seed,
            "seconds": 1.5,
        }
    base = {"erm": 0.70, "flood": 0.72, "sam": 0.69, "alternate": 0.75}
    base = base.get(method, 0.74)  # erm_rate
    acc = base + 0.01 * seed + (0.005 * seed**2 if method == "flood" else 0.0)
    # Flooding's first value diverges on seed 1; every SAM run on seed 2.
    val_loss = [1.0, 0.9]
    if (method, seed) == ("flood", 1):
        val_loss = [math.inf, 0.9]
    if (method, seed) == ("sam", 2):
        val_loss = [math.nan, math.nan]
    grid = list(config.grid(method))  # ERM's one value, the others' two
    record = {
        "grid": grid,
        "val_accuracy": [0.5, 0.6][-len(grid) :],
        "val_loss": val_loss[-len(grid) :],
        "test_accuracy": [0.0, acc][-len(grid) :],
        "chosen_index": len(grid) - 1,
        "chosen": 0.2 + seed,
        "chosen_test_accuracy": acc,
        "chosen_val_accuracy": 0.6,
        "seconds": 2.0 + seed,
    }
    if method == "erm":
        record["train_loss"], record["curve_val_loss"] = [1.0, 0.5], [1.0, 1.1]
        record["step_loss"] = [1.2, 0.6]
    return record


FAKE = FamilyConfig(
    datasets=("digits",),
    label_noises=(0.2,),
    methods=("erm", "flood", "sam"),
    seeds=(0, 1, 2),
    grids=tuple((m, (0.1, 0.2)) for m in ("flood", "sam", "alternate", "erm_rate")),
)


def _no_estimate(config, pending):
    return 0.0


def test_tables_report_the_harness_numbers(tmp_path):
    results = run_family(
        FAKE,
        str(tmp_path),
        progress=False,
        train_cell=_fake_cell,
        estimator=_no_estimate,
    )
    cells = json.load(open(tmp_path / "cache.json"))["cells"]
    # (as text: NaN, a diverged run's loss, is not equal to itself)
    assert json.dumps(cells) == json.dumps(results["cells"])

    def accuracy(method):
        return np.array(
            [
                cells[f"digits|0.2|{method}|{s}"]["chosen_test_accuracy"]
                for s in range(3)
            ]
        )

    lines = results["table"].splitlines()
    for row, line in zip(results["rows"], lines[2:], strict=True):
        acc = accuracy(row["method"])
        assert row["mean"] == pytest.approx(acc.mean())
        assert row["std"] == pytest.approx(acc.std(ddof=1))
        fields = [f.strip() for f in line.strip("|").split("|")]
        assert fields[3] == f"{100 * acc.mean():.1f} ± {100 * acc.std(ddof=1):.1f}"
        if row["method"] != "erm":
            diff = acc - accuracy("erm")
            assert fields[4].startswith(
                f"{100 * diff.mean():.1f} ± {100 * diff.std(ddof=1):.1f}"
            )
        diverged = {"erm": "0 of 3", "flood": "1 of 6"}.get(
            row["method"], "2 of 6 (all, on 1 seeds: accuracy meaningless)"
        )
        assert fields[8] == diverged
        assert fields[6] == "–"  # no control was run
    sam = next(r for r in results["rows"] if r["method"] == "sam")
    assert (sam["diverged"], sam["runs"], sam["chosen_diverged"]) == (2, 6, 1)
    # SAM is 1 point below ERM on every seed: the interval excludes 0.
    assert sam["verdict_erm"] == "hurts"
    assert "SAM (digits, noise 0.2)" in open(results["markdown"]).read()
    flood_acc = accuracy("flood")
    rules = results["rule_rows"]
    assert [r["rule"] for r in rules] == [harness.RULE, harness.RULE_LOGGED]
    lines = results["rule_table"].splitlines()[2:]
    for rule, line, rule_acc, b, rises, seconds in zip(
        rules,
        lines,
        [0.70 + 0.01 * np.arange(3), 0.73 + 0.02 * np.arange(3)],
        [0.1 * np.arange(1, 4), 0.2 * np.arange(1, 4)],
        [2, 3],
        [3 * 1.0, 3 * 1.5],
        strict=True,
    ):
        assert rule["rule_b"][0] == pytest.approx(b.mean())
        assert rule["seeds_within"] == int(
            (np.abs(rule_acc - flood_acc) <= flood_acc.std(ddof=1)).sum()
        )
        assert rule["within_one_std"] == bool(
            abs(rule_acc.mean() - flood_acc.mean()) <= flood_acc.std(ddof=1)
        )
        diff = rule_acc - flood_acc
        fields = [f.strip() for f in line.strip("|").split("|")]
        assert fields[7].startswith(
            f"{100 * diff.mean():.1f} ± {100 * diff.std(ddof=1):.1f}"
        )
        assert rule["rises"] == rises
        erm_seconds = sum(2.0 + s for s in range(3))
        assert rule["rule_seconds"] == pytest.approx(erm_seconds + seconds)
    assert os.path.getsize(results["png"]) > 0
    # Every cell's own time: ERM 2 + s, the rules 1 and 1.5, by seed.
    assert results["seconds_all"] == pytest.approx(
        sum(3 * (2.0 + s) + 1.0 + 1.5 for s in range(3))
    )
    took = f"The 15 cells took {results['seconds_all']:.0f} s of training"
    assert took in open(results["markdown"]).read()


def test_the_cache_skips_finished_cells_and_refuses_another_protocol(tmp_path):
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1:])
        return _fake_cell(*args, **kwargs)

    kwargs = {"progress": False, "train_cell": counted, "estimator": _no_estimate}
    small = FamilyConfig(**{**FAKE.__dict__, "seeds": (0,)})
    run_family(small, str(tmp_path), **kwargs)
    assert len(calls) == 5  # three methods and the two rules, seed 0
    second = run_family(FAKE, str(tmp_path), **kwargs)
    assert len(calls) == 15 and all(c[3] != 0 for c in calls[5:])
    assert len(second["trained"]) == 10
    assert run_family(FAKE, str(tmp_path), **kwargs)["trained"] == []
    # A report of part of the cache, under its own name, trains nothing.
    part = run_family(small, str(tmp_path), name="seed0", **kwargs)
    assert part["trained"] == [] and part["markdown"] == str(tmp_path / "seed0.md")
    assert os.path.exists(tmp_path / "seed0.png")
    other = FamilyConfig(**{**FAKE.__dict__, "epochs": 7})
    with pytest.raises(ValueError, match=r"another protocol \(differs in \['epochs'\]"):
        run_family(other, str(tmp_path), **kwargs)
    # "auto" sweeps one value after another on a CPU and under vmap on an
    # accelerator: a CPU's cache is not resumed there.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jax, "default_backend", lambda: "gpu")
        with pytest.raises(ValueError, match=r"differs in \['backend', 'vectorized'\]"):
            run_family(FAKE, str(tmp_path), **kwargs)
    # A grid is checked cell by cell: another flooding grid is refused,
    # naming the cell, and a method added later trains only its own cells.
    regrid = FamilyConfig(
        **{
            **FAKE.__dict__,
            "grids": tuple({**dict(FAKE.grids), "flood": (0.1, 0.3)}.items()),
        }
    )
    with pytest.raises(
        ValueError, match=r"'digits\|0.2\|flood\|0' trained on the grid"
    ):
        run_family(regrid, str(tmp_path), **kwargs)
    more = FamilyConfig(**{**FAKE.__dict__, "methods": (*FAKE.methods, "alternate")})
    added = run_family(more, str(tmp_path), **kwargs)
    assert added["trained"] == [f"digits|0.2|alternate|{s}" for s in range(3)]


def test_a_method_is_compared_with_its_control(tmp_path):
    """The alternating scheme's paired difference against ERM with its grid
    as the rate (its control), beside those against ERM and flooding."""
    config = FamilyConfig(
        **{**FAKE.__dict__, "methods": ("erm", "flood", "alternate", "erm_rate")}
    )
    results = run_family(
        config,
        str(tmp_path),
        progress=False,
        train_cell=_fake_cell,
        estimator=_no_estimate,
    )
    rows = {r["method"]: r for r in results["rows"]}
    lines = {
        r["method"]: [f.strip() for f in line.strip("|").split("|")]
        for r, line in zip(
            results["rows"], results["table"].splitlines()[2:], strict=True
        )
    }
    # 0.75 against 0.74 on every seed: +1 point, no spread.
    mean, std = rows["alternate"]["vs_control"]
    assert (mean, std) == (pytest.approx(0.01), pytest.approx(0.0, abs=1e-12))
    assert lines["alternate"][6] == "1.0 ± 0.0 (helps) against ERM, rate swept"
    assert lines["erm_rate"][6] == lines["erm"][6] == "–"
    # The figure colours a bar by its verdict against ERM; with no ERM run,
    # no bar takes ERM's grey.
    grey = harness._VERDICT_COLOURS["erm"]
    assert harness._bar_colours(results["rows"])[0] == grey
    assert harness._bar_colours(results["rows"][1:]).count(grey) == 0
    no_erm = [
        {k: v for k, v in r.items() if k != "verdict_erm"} for r in results["rows"][1:]
    ]
    assert grey not in harness._bar_colours(no_erm)


TINY = FamilyConfig(
    datasets=("digits",),
    label_noises=(0.2,),
    methods=("erm", "flood"),
    seeds=(0,),
    epochs=4,
    width=8,
    depth=1,
    grids=(("flood", (0.3, 1.5)),),
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("family")
    return out, run_family(TINY, str(out), progress=False, estimator=_no_estimate)


def _without_seconds(cells):
    return {k: {f: v for f, v in c.items() if f != "seconds"} for k, c in cells.items()}


def test_real_cells_choose_on_validation_and_the_rule_reads_erm(uninterrupted):
    _, results = uninterrupted
    cells = results["cells"]
    for seed in TINY.seeds:
        flood = cells[f"digits|0.2|flood|{seed}"]
        order = np.lexsort(
            (flood["grid"], flood["val_loss"], -np.asarray(flood["val_accuracy"]))
        )
        assert flood["chosen_index"] == order[0]
        assert flood["chosen_test_accuracy"] == flood["test_accuracy"][order[0]]
        erm = cells[f"digits|0.2|erm|{seed}"]
        for name, curve in (("rule", "train_loss"), ("rule_logged", "step_loss")):
            suggestion = floodax.suggest_flood_level(erm[curve], erm["curve_val_loss"])
            rule = cells[f"digits|0.2|{name}|{seed}"]
            assert rule["flood_level"] == suggestion.flood_level
            assert len(erm[curve]) == TINY.epochs
        # The two readings differ: in the first epoch the logged mean
        # includes the untrained model's losses.
        assert erm["step_loss"][0] > erm["train_loss"][0]


def test_a_resumed_run_equals_an_uninterrupted_one(uninterrupted, tmp_path):
    out, results = uninterrupted
    shutil.copy(out / "cache.json", tmp_path / "cache.json")
    cache = json.load(open(tmp_path / "cache.json"))
    dropped = ["digits|0.2|flood|0"]
    for key in dropped:
        del cache["cells"][key]
    json.dump(cache, open(tmp_path / "cache.json", "w"))
    resumed = run_family(TINY, str(tmp_path), progress=False, estimator=_no_estimate)
    assert resumed["trained"] == dropped
    assert _without_seconds(resumed["cells"]) == _without_seconds(results["cells"])
    assert [r["mean"] for r in resumed["rows"]] == [r["mean"] for r in results["rows"]]


def test_estimate_counts_each_methods_runs_and_gradients(monkeypatch):
    """One timing per dataset; per cell one compile, then each run's epochs
    times its method's gradients per step."""
    monkeypatch.setattr(harness, "cell_timing", lambda config, dataset: (2.0, 0.01))
    config = FamilyConfig(methods=("erm", "flood", "sam", "adaflood"))
    methods = ("erm", "flood", "sam", "adaflood", "rule", "rule_logged")
    cells = [("digits", 0.0, m, 0) for m in methods]
    # ERM 1 run; flooding 10; SAM 6 at two gradients; AdaFlood 7 + 5 folds;
    # each rule 1; 60 epochs a run at 0.01 s, and 2 s to compile each cell.
    runs = 1 + 10 + 12 + 12 + 1 + 1
    assert harness.estimate(config, cells) == pytest.approx(6 * 2.0 + runs * 0.6)


def test_cell_timing_times_the_compiled_epoch():
    """The setup loads the data and compiles; the epochs after the first
    reuse the program, so they are faster, and their time is what a run's
    every epoch costs."""
    setup_s, epoch_s = harness.cell_timing(TINY, "digits")
    assert setup_s > epoch_s > 0


def test_demo_compare_prints_the_tables_and_writes_the_png(
    uninterrupted, tmp_path, monkeypatch, capsys
):
    from floodax._cli import main

    out, results = uninterrupted
    shutil.copy(out / "cache.json", tmp_path / "cache.json")
    monkeypatch.setattr(harness, "compare_config", lambda seed=0: TINY)
    assert main(["demo", "--compare", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "0 of 4 cells to train" in printed
    assert results["table"] in printed and results["rule_table"] in printed
    assert (tmp_path / "family.png").exists()
    md = (tmp_path / "family.md").read_text()
    assert "`floodax demo --compare --seed 0 --out" in md


def test_demo_compare_refuses_the_flags_it_does_not_take(tmp_path, capsys):
    from floodax._cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--compare", "--epochs", "3", "--out", str(tmp_path)])
    assert "drop --epochs" in capsys.readouterr().err


def test_a_cnn_cell_trains_the_cnn_it_names():
    """``model="cnn"`` reaches the cell: its ERM record is a CNN's run, the
    one ``train`` gives the CNN ``make_model`` builds, not the MLP's."""
    from floodax.experiments import CNN, load_dataset, make_model, train

    config = FamilyConfig(**{**TINY.__dict__, "epochs": 2, "model": "cnn", "width": 4})
    record = harness.run_cell(config, "digits", 0.2, "erm", 0)
    data = load_dataset("digits", seed=0, label_noise=0.2)
    for kind, same in (("cnn", True), ("mlp", False)):
        model = make_model(data, kind, width=4, depth=1, seed=0)
        assert isinstance(model, CNN) == same
        result = train(
            model,
            data,
            harness._train_config(config, "erm", 0),
            test_every=2,
            progress=False,
        )
        loss = result.history.val_loss[-1]
        assert (abs(record["val_loss"][0] - loss) < 1e-6) == same
