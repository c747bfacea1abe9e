"""`fedsim fairness-bounds`: the accuracy–fairness program (AGLFOP) against hand-derived values and an independent
multistart SLSQP, its grid's monotonicity, K clients, the counts of a configured federation, the command's files, and
run folders marked against the bound."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.optimize import linprog, minimize
from scipy.special import xlogy

from fedsim.cli import main
from fedsim.config import compose_experiment
from fedsim.fairness_bounds import (
    CellCounts,
    TradeOff,
    budget_axes,
    disparities,
    fairness_bounds,
    federation_counts,
    group_entropies,
    solve_grid,
)

# Two clients whose group mix differs. Client 0: z=0 6 rows (5 with Y=1), z=1 2 rows (0); client 1: z=0 2 rows (1),
# z=1 6 rows (1). N = 16.
SKEWED = CellCounts(np.array([[6, 2], [2, 6]]), np.array([[5, 0], [1, 1]]))
# Two clients with the same group mix (Z ⊥ S): 4 rows per cell; positives 3, 1 in client 0 and 1, 2 in client 1.
MIXED = CellCounts(np.array([[4, 4], [4, 4]]), np.array([[3, 1], [1, 2]]))
SOLVER_TOLERANCE = 1e-6
QUICK = ("dataset=fair_synthetic", "dataset.num_samples=600", "dataset.correlation=0.6", "num_clients=3",
         "partition=iid")


def _correct_at_rate(rows: np.ndarray, positives: np.ndarray, rate: float) -> float:
    """Correct predictions when each cell predicts a share `rate` positive, true positives first."""
    predicted = rate * rows
    return float(np.sum(np.minimum(positives, predicted) + (rows - positives) - np.maximum(0, predicted - positives)))


def test_zero_budgets_give_the_hand_derived_accuracy():
    """Z ⊥ Ŷ in a client means one positive rate r_k for both its groups; the best correct count at a rate puts
    predicted positives on true positives first, piecewise linear in r with kinks at each cell's μ/N.
    SKEWED, local budget 0: client 0 peaks at r = 5/6 with 5 + 1 + 2 − 5/3 = 19/3 correct, client 1 at r = 1/6 with
    1/3 + 1 + 6 = 22/3; accuracy 41/48. Both budgets 0: the clients' group mixes differ, so the pooled constraint
    Σ_k P(k|z) r_k equal for both z forces r_0 = r_1; one rate for all four cells peaks at 11 correct (flat on
    [1/6, 1/2]): 11/16. Global budget 0 alone: pool by group (z=0: 8 rows, 6 positive; z=1: 8, 1), one rate: 11/16.
    MIXED, global budget 0 alone: groups 8 rows with 4 and 3 positives, best 15 of 16; local 0: 6 + 7 = 13 of 16,
    and with Z ⊥ S local independence implies global, so both 0 gives 13/16 too."""
    assert max(_correct_at_rate(SKEWED.rows[0], SKEWED.positives[0], r) for r in np.linspace(0, 1, 601)) == \
        pytest.approx(19 / 3)
    loose = 1.0
    skewed, mixed = TradeOff(SKEWED), TradeOff(MIXED)
    expected = {(skewed, 0, 0): 11 / 16, (skewed, loose, 0): 41 / 48, (skewed, 0, loose): 11 / 16,
                (skewed, loose, loose): 1.0, (mixed, 0, loose): 15 / 16, (mixed, loose, 0): 13 / 16,
                (mixed, 0, 0): 13 / 16}
    for (trade_off, eps_global, eps_local), accuracy in expected.items():
        bound = trade_off.solve(eps_global, eps_local)
        assert bound.accuracy == pytest.approx(accuracy, abs=SOLVER_TOLERANCE), (eps_global, eps_local)
        achieved_global, achieved_local = bound.achieved
        assert achieved_global <= eps_global + SOLVER_TOLERANCE and achieved_local <= eps_local + SOLVER_TOLERANCE


def _bits(joint: np.ndarray) -> tuple[float, float]:
    """I(Z;Ŷ) and I(Z;Ŷ|S) in bits of a (K, 2, 2) joint, written out independently of fedsim."""
    zy = joint.sum(0)
    global_nats = np.sum(xlogy(zy, zy)) - np.sum(xlogy(zy.sum(1), zy.sum(1))) - np.sum(xlogy(zy.sum(0), zy.sum(0)))
    s, sz, sy = joint.sum((1, 2)), joint.sum(2), joint.sum(1)
    local_nats = np.sum(xlogy(joint, joint)) + np.sum(xlogy(s, s)) - np.sum(xlogy(sz, sz)) - np.sum(xlogy(sy, sy))
    return global_nats / np.log(2), local_nats / np.log(2)


def _slsqp_best(counts: CellCounts, eps_global: float, eps_local: float, starts: int = 25) -> float:
    """The best accuracy multistart SLSQP finds over (TP, FP) per cell, as the reference solves the program."""
    n, mu = counts.rows / counts.rows.sum(), counts.positives / counts.rows.sum()
    size = n.size

    def joint(x: np.ndarray) -> np.ndarray:
        positive = x[:size].reshape(n.shape) + x[size:].reshape(n.shape)
        return np.stack([n - positive, positive], axis=-1)

    def error(x: np.ndarray) -> float:
        return float(np.sum(mu) - np.sum(x[:size]) + np.sum(x[size:]))

    constraints = [{"type": "ineq", "fun": lambda x: eps_global - _bits(joint(x))[0]},
                   {"type": "ineq", "fun": lambda x: eps_local - _bits(joint(x))[1]}]
    upper = np.concatenate([mu.ravel(), (n - mu).ravel()])
    rng = np.random.default_rng(0)
    best = 0.0
    for _ in range(starts):
        result = minimize(error, rng.uniform(0, 1, 2 * size) * upper, method="SLSQP",
                          bounds=list(zip(np.zeros(2 * size), upper, strict=True)), constraints=constraints,
                          options={"maxiter": 500, "ftol": 1e-12})
        x = np.clip(result.x, 0, upper)
        achieved = _bits(joint(x))
        if achieved[0] <= eps_global + 1e-7 and achieved[1] <= eps_local + 1e-7:
            best = max(best, 1 - error(x))
    return best


@pytest.mark.parametrize("budgets", [(0.05, 0.02), (0.02, 0.1), (0.15, 0.05)])
def test_the_convex_solution_matches_multistart_slsqp(budgets):
    """The exact program is never beaten by SLSQP (it is the optimum) and SLSQP's best start reaches it."""
    bound = TradeOff(SKEWED).solve(*budgets)
    achieved = _bits(bound.joint)
    assert achieved[0] <= budgets[0] + SOLVER_TOLERANCE and achieved[1] <= budgets[1] + SOLVER_TOLERANCE
    assert disparities(bound.joint) == pytest.approx(achieved, abs=1e-9)
    slsqp = _slsqp_best(SKEWED, *budgets)
    assert slsqp <= bound.accuracy + SOLVER_TOLERANCE
    assert slsqp == pytest.approx(bound.accuracy, abs=2e-4)
    assert 11 / 16 < bound.accuracy < 1  # interior budgets: strictly between the zero-budget value and 1


def _grid_accuracy(counts: CellCounts, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    eps_global, eps_local = budget_axes(counts, size)
    grid = solve_grid(TradeOff(counts), eps_global, eps_local)
    return eps_global, eps_local, np.array([[bound.accuracy for bound in row] for row in grid])


@pytest.mark.parametrize("counts", [SKEWED, MIXED], ids=["skewed", "mixed"])
def test_accuracy_rises_with_each_budget_and_reaches_the_unconstrained_optimum(counts):
    eps_global, eps_local, accuracy = _grid_accuracy(counts, 8)
    entropies = group_entropies(counts)
    assert eps_global[-1] == pytest.approx(entropies["H_Z"]) and eps_local[-1] == pytest.approx(
        entropies["H_Z_given_S"])
    assert np.diff(accuracy, axis=0).min() >= -SOLVER_TOLERANCE  # non-decreasing in ε_g
    assert np.diff(accuracy, axis=1).min() >= -SOLVER_TOLERANCE  # non-decreasing in ε_l
    assert accuracy[-1, -1] == pytest.approx(1.0, abs=SOLVER_TOLERANCE)
    assert accuracy[0, 0] == pytest.approx(11 / 16 if counts is SKEWED else 13 / 16, abs=SOLVER_TOLERANCE)
    assert accuracy[0, 0] < accuracy[-1, -1] - 0.1  # the budgets bind


def test_clients_holding_one_group_each_have_no_local_disparity_to_bound():
    """Client 0 holds z=0 only (4 rows, 3 positive), client 1 z=1 only (4 rows, 1 positive): I(Z;Ŷ|S) = 0 for any
    classifier, so the local axis cannot bind and Ŷ = Y is locally fair. The global budget 0 leaves one positive
    rate r for both groups; correct = min(3, 4r) + 1 − max(0, 4r − 3) + min(1, 4r) + 3 − max(0, 4r − 1) = 6 of 8 on
    [1/4, 3/4]."""
    counts = CellCounts(np.array([[4, 0], [0, 4]]), np.array([[3, 0], [0, 1]]))
    eps_global, eps_local, accuracy = _grid_accuracy(counts, 3)
    assert eps_local[-1] == pytest.approx(0.01) and eps_global[-1] == pytest.approx(1.0)
    assert accuracy[0] == pytest.approx([0.75] * 3, abs=SOLVER_TOLERANCE)
    assert accuracy[-1] == pytest.approx([1.0] * 3, abs=SOLVER_TOLERANCE)  # at ε_l = 0 too


def test_five_clients_solve_and_zero_budgets_match_a_linear_program():
    """K = 5. At zero budgets the program is linear in per-client rates r_k (Z ⊥ Ŷ in each client) and per-cell
    true positives: an independent LP (HiGHS) over those variables gives the same accuracy."""
    rng = np.random.default_rng(3)
    rows = rng.integers(20, 200, size=(5, 2))
    counts = CellCounts(rows, (rows * rng.uniform(0.05, 0.95, size=(5, 2))).astype(int))
    eps_global, eps_local, accuracy = _grid_accuracy(counts, 4)
    assert np.diff(accuracy, axis=0).min() >= -SOLVER_TOLERANCE and np.diff(accuracy, axis=1).min() >= -1e-6
    assert accuracy[-1, -1] == pytest.approx(1.0, abs=SOLVER_TOLERANCE)
    # variables: r (5), tp (5 x 2); correct = Σ tp + Σ (N − μ − (r N − tp)) = const + 2 Σ tp − Σ r N
    n, mu = counts.rows.astype(float), counts.positives.astype(float)
    cost = np.concatenate([n.sum(1), -2 * np.ones(10)])
    upper_tp = [np.concatenate([-n[:, z] * (np.arange(5) == k), np.eye(10)[2 * k + z]]) for k in range(5)
                for z in (0, 1)]  # tp_kz ≤ r_k N_kz
    upper_fp = [np.concatenate([n[:, z] * (np.arange(5) == k), -np.eye(10)[2 * k + z]]) for k in range(5)
                for z in (0, 1)]  # fp_kz = r_k N_kz − tp_kz ≤ N_kz − μ_kz
    bounds_fp = [n[k, z] - mu[k, z] for k in range(5) for z in (0, 1)]
    pooled = np.concatenate([n[:, 0] / n[:, 0].sum() - n[:, 1] / n[:, 1].sum(), np.zeros(10)])
    result = linprog(cost, A_ub=np.array(upper_tp + upper_fp), b_ub=np.concatenate([np.zeros(10), bounds_fp]),
                     A_eq=pooled[None], b_eq=[0], method="highs",
                     bounds=[(0, 1)] * 5 + [(0, mu[k, z]) for k in range(5) for z in (0, 1)])
    assert result.status == 0
    correct = (n - mu).sum() - result.fun
    assert accuracy[0, 0] == pytest.approx(correct / n.sum(), abs=SOLVER_TOLERANCE)


def test_counts_cover_every_row_each_client_holds():
    experiment = compose_experiment(list(QUICK))
    counts = federation_counts(experiment)
    validation = federation_counts(experiment, "validation")
    assert counts.rows.shape == (3, 2) and counts.rows.sum() == 480  # 600 rows, 20% held out as the test split
    assert validation.rows.sum() == pytest.approx(0.2 * 480, abs=3)
    assert (validation.rows <= counts.rows).all() and (counts.positives <= counts.rows).all()
    # fair_synthetic: P(Y=1 | A=0) = 0.8, P(Y=1 | A=1) = 0.2, so about 0.28 bits between the label and A
    assert disparities(counts.label_joint())[0] == pytest.approx(1 - 0.7219, abs=0.06)


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return int(stopped.value.code)


def test_the_command_writes_csv_json_and_plot(tmp_path, capsys):
    out = tmp_path / "bounds"
    main(["fairness-bounds", *QUICK, "--grid", "3", "--out", str(out)])
    captured = capsys.readouterr()
    assert "best accuracy under" in captured.out and str(out / "bounds.png") in captured.out
    assert captured.err.count("budget rows solved") == 3
    with open(out / "bounds.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 9 and {"eps_global", "eps_local", "accuracy", "global", "local"} <= set(rows[0])
    for row in rows:  # each solution's decomposition (fedsim.disparity): global = U + R, local = U + M
        unique, redundant, masked = (float(row[key]) for key in ("unique", "redundant", "masked"))
        assert unique + redundant == pytest.approx(float(row["global"]), abs=1e-4)
        assert unique + masked == pytest.approx(float(row["local"]), abs=1e-4)
        assert float(row["global"]) <= float(row["eps_global"]) + 1e-5
        assert float(row["local"]) <= float(row["eps_local"]) + 1e-5
    report = json.loads((out / "bounds.json").read_text())
    assert report["dataset"] == "fair_synthetic" and report["num_clients"] == 3
    assert report["accuracy"][-1][-1] == pytest.approx(1.0, abs=SOLVER_TOLERANCE)
    assert float(rows[0]["accuracy"]) == pytest.approx(report["accuracy"][0][0], abs=1e-5)
    assert (out / "bounds.png").read_bytes()[:4] == b"\x89PNG"


def test_a_data_set_without_a_sensitive_attribute_is_refused_in_one_line(tmp_path, capsys):
    assert _exit_code(["fairness-bounds", "dataset=digits", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "digits" in err[0] and "fair_synthetic" in err[0] and "adult" in err[0]
    assert not (tmp_path / "b").exists()


def _run_folder(folder: Path, overrides: list[str], strategy: str, audit: dict[str, float]) -> Path:
    """A finished run's two files as the recorder writes them: the composed config and a summary with the audit."""
    folder.mkdir(parents=True)
    experiment = compose_experiment(overrides)
    (folder / "config.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    summary = {"final_accuracy": audit["accuracy"], "seed": experiment["seed"], "complete": True,
               "choices": {**experiment["choices"], "strategy": strategy},
               "fairness": {"test_spd": 0.1, "test_eod": 0.1, "clients": {}, "disparity": audit}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_runs_are_marked_with_the_bound_at_their_disparities(tmp_path):
    """Two FedAvg seeds and one FairFed run, as a compare folder: each run gets the bound at its disparities on its
    own draw (seed 1's data and partition differ from the overrides' seed 0), each strategy the mean over its runs."""
    compare = tmp_path / "compare"
    for name, strategy, seed, audit in [("a", "fedavg", 0, (0.06, 0.02, 0.70)), ("b", "fedavg", 1, (0.10, 0.04, 0.80)),
                                        ("c", "fairfed", 0, (0.01, 0.01, 0.65))]:
        _run_folder(compare / "runs" / strategy / f"seed={seed}" / name, [*QUICK, f"seed={seed}"], strategy,
                    dict(zip(("global", "local", "accuracy"), audit, strict=True)))
    warnings: list[str] = []
    report = fairness_bounds(compose_experiment(list(QUICK)), 3, run_paths=[compare], warn=warnings.append)
    assert len(warnings) == 1 and "1 of 3 runs differ" in warnings[0] and "seed" in warnings[0]
    assert [row["strategy"] for row in report["strategies"]] == ["fairfed", "fedavg"]
    seed_0 = TradeOff(federation_counts(compose_experiment(list(QUICK))))
    seed_1 = TradeOff(federation_counts(compose_experiment([*QUICK, "seed=1"])))
    own = [seed_0.solve(0.06, 0.02).accuracy, seed_1.solve(0.10, 0.04).accuracy]
    assert abs(own[1] - seed_0.solve(0.10, 0.04).accuracy) > 1e-4  # the draws' bounds differ: which one is used shows
    by_folder = {Path(run["folder"]).name: run for run in report["runs"]}
    assert by_folder["a"]["bound"] == pytest.approx(own[0], abs=SOLVER_TOLERANCE) and by_folder["a"]["own_draw"] == []
    assert by_folder["b"]["bound"] == pytest.approx(own[1], abs=SOLVER_TOLERANCE) and by_folder["b"]["own_draw"] == [
        "seed"]
    fedavg = report["strategies"][1]
    assert fedavg["runs"] == 2 and fedavg["global"] == pytest.approx(0.08) and fedavg["accuracy"] == pytest.approx(0.75)
    assert fedavg["bound"] == pytest.approx(np.mean(own), abs=SOLVER_TOLERANCE)
    assert fedavg["gap"] == pytest.approx(np.mean(own) - 0.75, abs=SOLVER_TOLERANCE)
    assert report["strategies"][0]["bound"] < fedavg["bound"]  # a tighter point, a lower bound


def test_the_command_marks_runs_and_refuses_another_partition(tmp_path, capsys):
    run = _run_folder(tmp_path / "run", list(QUICK), "fedavg", {"global": 0.05, "local": 0.02, "accuracy": 0.7})
    main(["fairness-bounds", *QUICK, "--grid", "2", "--runs", str(run), "--out", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert "runs against the bound" in out and "fedavg" in out
    assert json.loads((tmp_path / "b" / "bounds.json").read_text())["strategies"][0]["accuracy"] == 0.7
    other = _run_folder(tmp_path / "other", [*QUICK[:-1], "partition=dirichlet"], "fedavg",
                        {"global": 0.05, "local": 0.02, "accuracy": 0.7})
    assert _exit_code(["fairness-bounds", *QUICK, "--runs", str(other), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "partition" in err[0] and str(other) in err[0]


def test_a_real_run_is_marked_below_its_bound(run_quietly):
    """A two-round FedAvg run's own audit: its accuracy cannot beat the best classifier within its disparities on
    the same validation rows."""
    overrides = [*QUICK, "num_rounds=2", "model=logreg"]
    summary, folder = run_quietly(*overrides)
    assert "disparity" in summary["fairness"]
    report = fairness_bounds(compose_experiment(overrides), 2, rows="validation", run_paths=[folder])
    (run,) = report["runs"]
    assert run["accuracy"] == pytest.approx(summary["fairness"]["disparity"]["accuracy"])
    assert 0.5 < run["accuracy"] <= run["bound"] + SOLVER_TOLERANCE
