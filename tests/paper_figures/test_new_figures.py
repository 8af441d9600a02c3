"""The figures built for issue 17's missing experiments (003_curvature, 001_ablations, 001_stability,
002_smoothness, 001_generalization, 000_generalization): each ``judge`` on synthetic numbers in both
directions, the matched-loss reader, the frozen-curvature ablation, and MNIST-1D's offline generation."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from paper_figures import fig_000_generalization as g000  # noqa: E402
from paper_figures import fig_001_ablations as abl  # noqa: E402
from paper_figures import fig_001_generalization as gen  # noqa: E402
from paper_figures import fig_001_stability as stab  # noqa: E402
from paper_figures import fig_002_smoothness as smooth  # noqa: E402
from paper_figures import fig_003_curvature as curv  # noqa: E402
from paper_figures._common import VERDICTS  # noqa: E402

INF = float("inf")


def _one(verdicts, claim):
    (v,) = verdicts
    assert v.claim == claim and v.verdict in VERDICTS and v.criterion and v.evidence
    return v.verdict


# ----------------------------------------------------------------------------- 003_curvature
def _curv_final(own, ind):
    final = {}
    for dr in curv.DIRECTIONS:
        for v in curv.VARIANTS:
            final[(dr, v)] = [0.1, 0.1, 0.1]
        final[(dr, "Hessian, own batch")] = list(own)
        final[(dr, "Hessian, independent batch")] = list(ind)
    return final


def test_003_curvature_judge_both_ways():
    tcv = {dr: [0.5, 0.6, 0.7] for dr in curv.DIRECTIONS}
    assert _one(curv.judge(_curv_final([0.1] * 3, [0.2] * 3), tcv), "C4") == "supported"
    flat = {dr: [0.0, 0.01, 0.0] for dr in curv.DIRECTIONS}
    assert _one(curv.judge(_curv_final([0.3] * 3, [0.2, 0.2, INF]), flat), "C4") == "not supported"
    assert _one(curv.judge(_curv_final([0.3] * 3, [0.2] * 3), tcv), "C4") == "mixed"


# ----------------------------------------------------------------------------- 001_ablations
def _abl(full, h, p):
    final = {v: [0.05] * 3 for v in abl.VARIANTS}
    final["full (exact)"], final["curvature frozen (h = 0.1)"] = list(full), list(h)
    final["uncertainty frozen (p = 1/var_init)"] = list(p)
    return final, {v: [0.95] * 3 for v in abl.VARIANTS}


def test_001_ablations_judge_both_ways():
    assert _one(abl.judge(*_abl([0.05] * 3, [0.06] * 3, [0.1, 0.1, INF])), "C1") == "supported"
    assert _one(abl.judge(*_abl([0.05] * 3, [0.04] * 3, [0.03] * 3)), "C1") == "not supported"
    assert _one(abl.judge(*_abl([0.05] * 3, [0.06] * 3, [0.03] * 3)), "C1") == "mixed"


def test_frozen_curvature_keeps_h_and_is_undone():
    ar = pytest.importorskip("curvlab.methods.arturo")
    kernels = pytest.importorskip("curvlab.kernels")
    orig = kernels.rls_filter_update
    rng = np.random.default_rng(0)
    w = rng.standard_normal(50)
    opt = ar.ArTuRO(mode="exact", kl_bound=0.05)
    free_state, frozen_state = opt.init(w), opt.init(w)
    wf, wz = w.copy(), w.copy()
    with abl.frozen_curvature(0.1):
        assert kernels.rls_filter_update is not orig
        for _ in range(5):
            g = 3.0 * wz + rng.standard_normal(50)  # true curvature 3: a free filter would move h away from 0.1
            upd, frozen_state = opt.update(g, frozen_state, wz)
            wz = wz + upd
            assert np.all(frozen_state.h == 0.1) and np.all(frozen_state.P11 == 0) and np.all(frozen_state.P01 == 0)
    assert kernels.rls_filter_update is orig
    rng = np.random.default_rng(0)
    rng.standard_normal(50)
    for _ in range(5):
        g = 3.0 * wf + rng.standard_normal(50)
        upd, free_state = opt.update(g, free_state, wf)
        wf = wf + upd
    assert np.max(np.abs(free_state.h - 0.1)) > 1e-3  # without the patch the filter does learn h
    with pytest.raises(RuntimeError):
        with abl.frozen_curvature(0.1):
            raise RuntimeError("boom")
    assert kernels.rls_filter_update is orig  # restored after an exception too
    assert ar.ArTuRO.fused_steps is True


# ----------------------------------------------------------------------------- 001_stability
def _stab(ar_frac, ar_spread):
    per = {m: {"frac": [0.6, 0.6, 0.6], "spread": [0.5, 0.5, 0.5], "active": [math.nan] * 3} for m in stab.METHODS}
    for m in stab.AR:
        per[m] = {"frac": list(ar_frac), "spread": list(ar_spread), "active": [0.7] * 3}
    return per


def test_001_stability_judge_both_ways():
    assert _one(stab.judge(_stab([1.0] * 3, [0.1] * 3)), "C2") == "supported"
    assert _one(stab.judge(_stab([0.2] * 3, [0.9] * 3)), "C2") == "not supported"
    assert _one(stab.judge(_stab([1.0] * 3, [0.9] * 3)), "C2") == "mixed"


# ----------------------------------------------------------------------------- 002_smoothness
def test_002_smoothness_judge_both_ways():
    big = {"init": [300.0, 200.0, 400.0], "trained": [20.0, 15.0, 30.0]}
    small = {"init": [3.0, 2.0, 4.0], "trained": [2.0, 1.5, 3.0]}
    ev = ([0.3] * 3, [0.1] * 3)
    assert _one(smooth.judge(big, [3, 1, 2], ev), "C1") == "supported"
    assert _one(smooth.judge(small, [0, 0, 0], ev), "C1") == "not supported"
    assert _one(smooth.judge(big, [0, 0, 0], ev), "C1") == "mixed"


# ----------------------------------------------------------------------------- generalization
def test_at_matched_loss_interpolates_in_log_loss():
    loss = [1.0, 0.1, 0.01]
    acc = [0.1, 0.5, 0.9]
    ep, a = gen.at_matched_loss(loss, acc, math.sqrt(0.1 * 0.01))  # halfway in log between epochs 1 and 2
    assert ep == pytest.approx(1.5, abs=1e-12) and a == pytest.approx(0.7, abs=1e-12)
    assert gen.at_matched_loss(loss, acc, 1.0) == (0.0, 0.1)
    assert all(math.isnan(x) for x in gen.at_matched_loss(loss, acc, 0.001))
    assert gen.matched_level([[1.0, 0.2], [1.0, 0.05, 0.5]]) == 0.2


def _gen(ar_acc, ar_ep, adam_acc=0.90):
    per = {("digits", m): {"acc": [0.95, 0.95, 0.95], "epoch": [5.0, 5.0, 5.0], "gap": [0.1] * 3}
           for m in gen.METHODS}
    per[("digits", "Adam")]["acc"] = [adam_acc] * 3
    per[("digits", "arTuRO")] = {"acc": list(ar_acc), "epoch": list(ar_ep), "gap": [0.1] * 3}
    return per


def test_001_generalization_judge_both_ways():
    assert _one(gen.judge(_gen([0.95] * 3, [5.0] * 3), ["digits"]), "C4") == "supported"
    assert _one(gen.judge(_gen([0.90] * 3, [8.0] * 3), ["digits"]), "C4") == "not supported"
    assert _one(gen.judge(_gen([0.95] * 3, [8.0] * 3), ["digits"]), "C4") == "mixed"
    # Adam generalizes as well as SGD: the generalization half cannot discriminate, so never "supported"
    assert _one(gen.judge(_gen([0.95] * 3, [5.0] * 3, adam_acc=0.95), ["digits"]), "C4") == "mixed"
    assert gen.judge(_gen([0.95] * 3, [5.0] * 3, adam_acc=0.95), ["digits"])[0].evidence.count("does not enter") == 1


def test_000_generalization_judge_both_ways():
    names = ["Newton abs (λ=1, η=0.1)", "SGD B=1 (lr=0.1)", "Adam B=16 (lr=0.01)"]

    def per(acc):
        d = {m: {"acc": [0.92] * 3, "gap": [0.1] * 3, "level": [0.07] * 3} for m in names}
        d[names[0]]["acc"] = list(acc)
        return d

    assert _one(g000.judge(per([0.93, 0.91, 0.92]), names[0], names[1:]), "C6") == "supported"
    assert _one(g000.judge(per([0.85, 0.8, 0.95]), names[0], names[1:]), "C6") == "not supported"


# ----------------------------------------------------------------------------- MNIST-1D
def test_mnist1d_generates_offline_and_restores_the_global_rngs(monkeypatch):
    pytest.importorskip("mnist1d")
    import random

    import requests

    def no_network(*a, **k):
        raise AssertionError("MNIST-1D must be generated, not downloaded")

    monkeypatch.setattr(requests, "get", no_network)
    abl.load_mnist1d.cache_clear()
    np.random.seed(123)
    random.seed(123)
    expect_np, expect_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    ds = abl.load_mnist1d()
    assert (np.random.random(), random.random()) == (expect_np, expect_py)  # the package's set_seed(42) undone
    assert ds.X_train.shape == (4000, 40) and ds.X_test.shape == (1000, 40)
    assert ds.X_train.dtype == np.float64 and ds.y_train.dtype == np.int64
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert abs(float(np.concatenate([ds.X_train, ds.X_test]).std()) - 1.0) < 1e-9
