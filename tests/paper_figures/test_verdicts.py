"""The verdict of every paper figure: helpers, and each figure's ``judge`` on synthetic numbers in both
directions (a claim the numbers support, and one they contradict)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import paper_figures  # noqa: E402
from paper_figures import FIGURE_NAMES  # noqa: E402
from paper_figures._common import CLAIMS, VERDICTS, Verdict, combine, edge_note, pm, vote  # noqa: E402

INF = float("inf")


def _v(verdicts, claim):
    (v,) = [x for x in verdicts if x.claim == claim]
    assert v.verdict in VERDICTS and v.criterion and v.evidence
    return v.verdict


# ----------------------------------------------------------------------------- helpers
def test_vote_and_combine():
    assert vote([True, True, False]) == "supported"
    assert vote([False, False, True]) == "not supported"
    assert vote([True, False]) == "mixed"
    assert vote([True, False, True, False, True]) == "mixed"  # 3/5 < 2/3
    assert vote([]) == "inconclusive in this surrogate"
    assert combine("supported", "supported") == "supported"
    assert combine("not supported", "not supported") == "not supported"
    assert combine("supported", "not supported") == "mixed"


def test_verdict_vocabulary_is_enforced():
    with pytest.raises(ValueError, match="verdict must be one of"):
        Verdict("C1", "probably", "x", "y")
    with pytest.raises(ValueError, match="criterion and evidence"):
        Verdict("C1", "supported", "", "y")


def test_pm_and_edge_note():
    assert pm([1.0, 1.0, 1.0]).startswith("1 ± 0")
    assert "1 diverged" in pm([1.0, INF, 3.0]) and "n = 2" in pm([1.0, INF, 3.0])
    assert pm([INF]) == "diverged in all 1"
    assert "upper edge" in edge_note(0.3, [0.003, 0.03, 0.3], "lr")
    assert "lower edge" in edge_note(1.0, [1.0, 10.0], "s")
    assert edge_note(0.03, [0.003, 0.03, 0.3], "lr") == ""


def test_every_paper_figure_quotes_its_claims():
    for n in FIGURE_NAMES:
        spec = paper_figures.load(n).SPEC
        for c, q in spec.claim_quotes().items():
            assert q == CLAIMS[spec.paper][c] and '"' in q  # the abstract's own words, quoted


# ----------------------------------------------------------------------------- per figure, both outcomes
def test_000_exactness():
    judge = paper_figures.load("000_exactness").judge
    good = dict.fromkeys(("layer block", "eigenvalues", "Newton raw", "Newton abs"), 1e-14)
    assert {v.verdict for v in judge(good, 10)} == {"supported"}
    bad = dict(good, eigenvalues=1e-3)
    assert _v(judge(bad, 10), "C2") == "not supported" and _v(judge(bad, 10), "C3") == "supported"


def test_000_training():
    judge = paper_figures.load("000_training").judge
    d = {"abs_loss": [0.05, 0.06, 0.05], "abs_acc": [0.95, 0.96, 0.95], "abs_init": 2.3, "raw_acc": [0.1, 0.1, 0.2],
         "neg_frac": 0.2, "base_name": "SGD", "base_loss": [0.05, 0.05, 0.05], "acc_name": "SGD",
         "base_acc": [0.95, 0.95, 0.95]}
    assert {v.verdict for v in judge(d)} == {"supported"}
    worse = dict(d, abs_loss=[0.2, 0.3, 0.2], abs_acc=[0.8, 0.85, 0.8], raw_acc=[0.8, 0.85, 0.8])
    assert [v.verdict for v in judge(worse)] == ["not supported"] * 3
    diverged = dict(d, abs_loss=[INF, 0.05, 0.05])
    assert _v(judge(diverged), "C4") == "not supported"


def test_000_lambda():
    judge = paper_figures.load("000_lambda").judge
    lams, etas = (0.1, 1.0, 3.0), (0.1, 0.3)
    assert _v(judge(lams, etas, [[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]), "C1") == "supported"
    assert _v(judge(lams, etas, [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), "C1") == "mixed"
    assert _v(judge(lams, etas, [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "C1") == "not supported"


def test_000_flatness():
    judge = paper_figures.load("000_flatness").judge
    base = {"SGD": [1.0, 1.1, 0.9], "Adam": [2.0, 2.0, 2.0]}
    flat = dict(base, **{"Newton abs (λ=1)": [0.5, 0.5, 0.6], "Newton cap κmax=0.1": [0.9, 0.9, 0.9]})
    assert _v(judge(flat, "Newton abs (λ=1)", ["SGD", "Adam"], 1.0, 0.1), "C5") == "supported"
    sharp = dict(base, **{"Newton abs (λ=1)": [4.0, 3.5, 4.2], "Newton cap κmax=0.1": [0.8, 0.85, 0.8]})
    out = judge(sharp, "Newton abs (λ=1)", ["SGD", "Adam"], 3.0, 0.3)
    assert _v(out, "C5") == "mixed" and "SGD step with lr in" in out[0].evidence
    no = dict(base, **{"Newton abs (λ=1)": [4.0, 3.5, 4.2], "Newton cap κmax=10": [3.0, 3.0, 3.0]})
    assert _v(judge(no, "Newton abs (λ=1)", ["SGD", "Adam"], 1.0, 0.1), "C5") == "not supported"


def test_001_filter_tracking():
    mod = paper_figures.load("001_filter_tracking")
    H = mod.H
    exact = np.tile(H, (3, 1))
    assert _v(mod.judge(exact, exact * 1.1, H), "C3") == "supported"
    assert _v(mod.judge(exact, exact + 1.5, H), "C3") == "mixed"
    assert _v(mod.judge(exact * 2, exact * 3, H), "C3") == "not supported"


def test_001_trust_region():
    judge = paper_figures.load("001_trust_region").judge
    act = np.zeros(100, bool)
    good = {"exact": [(np.ones(100), act)] * 3, "reference": [(np.full(100, 0.99), act)] * 3}
    assert [v.verdict for v in judge(good)] == ["supported", "supported"]
    loose = {"exact": [(np.ones(100), act)] * 3, "reference": [(np.linspace(0.5, 2.0, 100), act)] * 3}
    assert [v.verdict for v in judge(loose)] == ["mixed", "mixed"]
    bad = {m: [(np.full(100, 3.0), act)] * 3 for m in ("exact", "reference")}
    assert [v.verdict for v in judge(bad)] == ["not supported", "not supported"]


def test_001_benchmark():
    mod = paper_figures.load("001_benchmark")

    def per(ar_acc, ar_e95, base_acc=0.95, base_e95=3.0):
        p = {}
        for dn in ("digits", "mnist"):
            for m in mod.METHODS:
                a = m.startswith("arTuRO")
                p[(dn, m)] = {"acc": [ar_acc if a else base_acc] * 3, "e95": [ar_e95 if a else base_e95] * 3,
                              "div": 0}
        return p

    assert [v.verdict for v in mod.judge(per(0.96, 2.0), ["digits", "mnist"])] == ["supported", "supported"]
    assert [v.verdict for v in mod.judge(per(0.90, 6.0), ["digits", "mnist"])] == ["not supported", "not supported"]
    assert _v(mod.judge(per(0.96, 6.0), ["digits", "mnist"]), "C4") == "mixed"


def test_002_training():
    judge = paper_figures.load("002_training").judge
    d = {"init": 2.3, "one_layer": [True] * 3, "greedy": [0.1, 0.1, 0.1], "cyclic": [0.2, 0.2, 0.2], "s": 10.0,
         "best_dsgd": "DSGD", "best_dsgd_loss": [0.1, 0.1, 0.1], "gd_loss": [0.08, 0.08, 0.08]}
    assert [v.verdict for v in judge(d)] == ["supported"] * 3
    bad = dict(d, one_layer=[False] * 3, greedy=[0.3, 0.3, 0.3], best_dsgd_loss=[0.3, 0.3, 0.3],
               gd_loss=[0.01, 0.01, 0.01])
    assert [v.verdict for v in judge(bad)] == ["not supported"] * 3


def test_002_layer_choice():
    judge = paper_figures.load("002_layer_choice").judge
    spread = {("spectral", 1.0, s): [10, 50, 140] for s in range(3)}
    assert [v.verdict for v in judge(spread, [0.1] * 3, [0.2] * 3)] == ["supported", "supported"]
    output_only = {("frobenius", 1.0, s): [0, 0, 200] for s in range(3)}
    assert [v.verdict for v in judge(output_only, [0.3] * 3, [0.01] * 3)] == ["not supported", "not supported"]


def test_002_constants():
    judge = paper_figures.load("002_constants").judge
    holds = {("spectral", s): 1.5 for s in range(3)}
    assert [v.verdict for v in judge(holds, [1e3, 1e3, 1e3], [0.3] * 3, [1e-6] * 3)] == ["supported"] * 2
    broken = {("spectral", s): 0.4 for s in range(3)}
    assert [v.verdict for v in judge(broken, [1.0], [0.3] * 3, [0.3] * 3)] == ["not supported"] * 2


def test_003_regimes():
    judge = paper_figures.load("003_regimes").judge
    finals = {0.5: [0.2] * 3, 1.0: [0.1] * 3, 2.0: [0.05] * 3, 2.5: [INF] * 3}
    assert [v.verdict for v in judge(finals, 2.3, {0.5: [0.01] * 3})] == ["supported", "supported"]
    same = {lam: [0.1] * 3 for lam in (0.5, 1.0, 2.0)}
    out = judge(same, 2.3, {})
    assert _v(out, "C5") == "not supported" and _v(out, "C3") == "mixed"
    none = {lam: [INF] * 3 for lam in (0.5, 1.0)}
    assert [v.verdict for v in judge(none, 2.3, {})] == ["not supported", "not supported"]


def test_003_fidelity():
    judge = paper_figures.load("003_fidelity").judge
    ok = judge({0.5: [1.0, 1.1, 0.9], 1.0: [1.2, 1.1, 1.0], 1.5: [1.6] * 3}, [0.5] * 3, [-0.6] * 3)
    assert [v.verdict for v in ok] == ["supported", "supported"]
    bad = judge({0.5: [5.0] * 3, 1.0: [0.1] * 3}, [0.01] * 3, [0.2] * 3)
    assert [v.verdict for v in bad] == ["not supported", "not supported"]


def test_003_decay():
    judge = paper_figures.load("003_decay").judge

    def sens(method_div, base_div):
        out = {}
        for k, nd in (("rescaled", method_div), ("SGD", base_div), ("Adam", base_div)):
            out[k] = {m: [INF if i < nd and m in (0.1, 10.0) else 0.1 for i in range(3)] for m in (0.1, 0.3, 1.0, 3.0, 10.0)}
        return out

    d = {"method": [0.1, 0.1, 0.1], "init": 2.3, "base": {"SGD": [0.1, 0.11, 0.09], "Adam": [0.12, 0.1, 0.14]},
         "sens": sens(0, 1)}
    assert [v.verdict for v in judge(d)] == ["supported"] * 3
    bad_sens = sens(0, 0)
    bad_sens["rescaled"][0.3] = [INF] * 3
    bad_sens["rescaled"][10.0] = [INF] * 3
    bad = {"method": [0.6, 0.6, 0.6], "init": 2.3, "base": {"SGD": [0.1] * 3, "Adam": [0.1] * 3}, "sens": bad_sens}
    assert [v.verdict for v in judge(bad)] == ["not supported"] * 3


def test_003_cost():
    judge = paper_figures.load("003_cost").judge
    good = [{"adjoint": (1.5, 1.6), "forward": (2.1, 1.0), "hvp": (3.0, 2.4)}] * 3
    assert [v.verdict for v in judge(good)] == ["supported", "supported"]
    bad = [{"adjoint": (4.0, 3.0), "forward": (5.0, 2.0), "hvp": (3.0, 2.4)}] * 3
    assert [v.verdict for v in judge(bad)] == ["not supported", "not supported"]


def test_000_batch_modes():
    mod = paper_figures.load("000_batch_modes")
    d = {"t_eq": 1.0, "newton_name": "Newton average (B=16)", "newton_at": [0.1, 0.1, 0.12], "first_name": "Adam",
         "first_at": [0.1, 0.1, 0.1], "newton_acc": [0.95] * 3, "first_acc": [0.95] * 3, "newton_acc_name": "N",
         "first_acc_name": "SGD", "time_ratio": 2.0}
    assert [v.verdict for v in mod.judge(d)] == ["supported", "supported"]
    bad = dict(d, newton_at=[2.2] * 3, newton_acc=[0.8] * 3)
    assert [v.verdict for v in mod.judge(bad)] == ["not supported", "not supported"]
    # loss reached after t CPU seconds: interpolated inside the run, the last value after it
    cpu, loss = np.array([0.0, 1.0, 2.0]), [2.0, 1.0, 0.5]
    assert mod.loss_at(cpu, loss, 0.5) == pytest.approx(1.5) and mod.loss_at(cpu, loss, 9.0) == 0.5


def test_001_hessian_diag():
    mod = paper_figures.load("001_hessian_diag")
    rng = np.random.default_rng(0)
    diag = np.exp(rng.standard_normal(500))
    good = {(p, s): mod.compare(diag * np.exp(0.1 * rng.standard_normal(500)), diag) for p in ("a", "b")
            for s in range(3)}
    assert _v(mod.judge(good), "C3") == "supported"
    prior = {(p, s): mod.compare(20 * np.median(diag) * np.exp(0.1 * rng.standard_normal(500)), diag)
             for p in ("a", "b") for s in range(3)}
    assert _v(mod.judge(prior), "C3") == "not supported"


def test_001_hessian_diag_exact_diagonal():
    mod = paper_figures.load("001_hessian_diag")
    from paper_figures._common import make_mlp

    model = make_mlp((5, 4, 3), "tanh")
    rng = np.random.default_rng(1)
    p = model.init_params(rng)
    X, y = rng.standard_normal((7, 5)), rng.integers(0, 3, 7)
    H = model.dense_hessian(p, X, y)
    np.testing.assert_allclose(mod.exact_diagonal(model, p, X, y, block=4), np.diag(H), rtol=1e-12, atol=1e-14)


def test_002_rates():
    mod = paper_figures.load("002_rates")
    good = mod.judge([0.5, 0.6, 0.55], {16: [0.3] * 3, 64: [0.2] * 3, 256: [0.19] * 3}, 2.3)
    assert [v.verdict for v in good] == ["supported", "supported"]
    bad = mod.judge([1.5, 2.0, 1.2], {16: [2.5] * 3, 64: [2.4] * 3}, 2.3)
    assert [v.verdict for v in bad] == ["not supported", "not supported"]
    assert _v(mod.judge([0.5] * 3, {16: [0.2] * 3, 64: [0.3] * 3}, 2.3), "C5") == "mixed"


def test_002_rates_bound_follows_from_the_guarantee():
    """If every step decreases f by at least max_i score_i, the measure never exceeds the bound."""
    mod = paper_figures.load("002_rates")

    class H:
        pass

    rng = np.random.default_rng(0)
    h = H()
    h.scores = rng.uniform(0.01, 0.1, (50, 3))
    dec = h.scores.max(1) * rng.uniform(1.0, 2.0, 50)
    h.loss = np.concatenate([[10.0], 10.0 - np.cumsum(dec)])
    m, b = mod.rate_curves(h)
    assert np.all(m <= b + 1e-12)
    h.loss = np.concatenate([[10.0], 10.0 - np.cumsum(0.5 * h.scores.max(1))])  # only half the guarantee
    m, b = mod.rate_curves(h)
    assert np.any(m > b)


def test_002_all_layer_spectral_descent_moves_each_layer_by_its_polar_factor():
    mod = paper_figures.load("002_training")
    from paper_figures._common import dataset, make_mlp

    ds = dataset("digits")
    model = make_mlp(mod.SIZES, "tanh")
    p0 = model.init_params(np.random.default_rng(0))
    _, g = model.loss_and_grad(p0, ds.X_train, ds.y_train)
    t = 0.05
    p1 = p0.copy()
    for l, G in enumerate(model.layout.unpack(g)):
        U, _, Vt = np.linalg.svd(G, full_matrices=False)
        p1[model.layout.slice(l)] -= t * (U @ Vt).ravel()
    losses, _ = mod.spectral_run.__wrapped__(1, 0, t)
    assert losses[1] == pytest.approx(model.loss(p1, ds.X_train, ds.y_train), rel=1e-12)
    assert losses[1] < losses[0]
