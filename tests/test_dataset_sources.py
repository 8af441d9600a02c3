"""Curvature over a whole dataset (curvlab.batches, MLPCurvature on batches).

A dataset bound as 8 batches of unequal sizes -- as a list, a tuple, a re-iterable, a
callable returning fresh iterators -- gives the numbers of one batch holding all samples
(loss, gradient, H V, GGN V, Fisher V, dᵀHd in both modes, eigsh top-5); bad data fails
naming ``data``/``num_data``; the determinism check catches a reshuffling iterable; the
progress bar is silent by default.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

import curvlab
from curvlab.batches import Batches, as_batches
from curvlab.data import load_digits
from curvlab.models import MLP, MLPCurvature

SIZES = (60, 311, 97, 250, 128, 7, 330, 255)  # 8 unequal batches, 1438 samples


@pytest.fixture(scope="module")
def digits():
    ds = load_digits(dtype=np.float64)
    X, y = ds.X_train, ds.y_train
    assert X.shape[0] == sum(SIZES)
    return X, y


def _split(X, y):
    cuts = np.cumsum(SIZES)[:-1]
    return list(zip(np.split(X, cuts), np.split(y, cuts)))


class Reiterable:
    """A re-iterable of batches that is not a list (like a DataLoader): counts its passes."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(list(self.batches))

    def __len__(self):
        return len(self.batches)


def _model(loss):
    return MLP([64, 12, 10 if loss == "cross_entropy" else 3], activation="tanh", loss=loss)


def _targets(y, loss):
    if loss == "cross_entropy":
        return y
    rng = np.random.default_rng(5)
    return rng.standard_normal((y.shape[0], 3)) + y[:, None] / 10.0


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


FORMS = {
    "list": lambda parts: parts,
    "tuple": lambda parts: tuple(parts),
    "reiterable": lambda parts: Reiterable(parts),
    "callable": lambda parts: (lambda: (b for b in parts)),
    "Batches": lambda parts: Batches(parts, num_data=sum(SIZES)),
}


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("form", list(FORMS))
def test_dataset_equals_one_batch_holding_all_samples(digits, loss, form):
    X, y = digits
    y = _targets(y, loss)
    model = _model(loss)
    p = model.init_params(np.random.default_rng(1))
    full = MLPCurvature(model, p, (X, y))
    data = MLPCurvature(model, p, FORMS[form](_split(X, y)))
    rng = np.random.default_rng(2)
    V = rng.standard_normal((p.size, 3))
    d = V[:, 0].copy()
    tol = 1e-12
    assert abs(data.loss() - full.loss()) <= tol * abs(full.loss())
    (f1, g1), (f0, g0) = data.gradient(), full.gradient()
    assert abs(f1 - f0) <= tol * abs(f0) and _rel(g1, g0) <= tol
    for name in ("hessian", "ggn", "fisher"):
        A1, A0 = getattr(data, name)(), getattr(full, name)()
        assert _rel(A1 @ V, A0 @ V) <= tol, name
        assert _rel(A1 @ d, A0 @ d) <= tol, name
        assert A1.symmetric and A1.psd == A0.psd
    assert _rel(data.fisher("true") @ V, full.ggn() @ V) <= tol
    for mode in ("forward", "adjoint"):
        c1, c0 = data.directional_curvature(d, mode=mode), full.directional_curvature(d, mode=mode)
        assert abs(c1 - c0) <= tol * abs(c0), mode
    (fa, ga, ca), (fb, gb, cb) = data.grad_and_curvature(d), full.grad_and_curvature(d)
    assert abs(fa - fb) <= tol * abs(fb) and _rel(ga, gb) <= tol and abs(ca - cb) <= tol * abs(cb)
    assert _rel(data.per_sample_gradients(), full.per_sample_gradients()) <= tol
    for l1, l0 in zip(data.layer_structure(), full.layer_structure()):
        assert l1.name == l0.name and l1.inputs.shape == l0.inputs.shape == (X.shape[0], l0.inputs.shape[1])
        for a in ("inputs", "output_grads", "output_hessians"):
            assert _rel(getattr(l1, a), getattr(l0, a)) <= tol
    assert data.n_samples == X.shape[0]


def test_the_per_batch_weights_matter(digits):
    """Regression guard: an unweighted mean of the batch means is measurably different
    (so the 1e-12 agreement above is a test of the weighting)."""
    X, y = digits
    model = _model("cross_entropy")
    p = model.init_params(np.random.default_rng(1))
    parts = _split(X, y)
    unweighted = np.mean([model.loss(p, Xb, yb) for Xb, yb in parts])
    full = MLPCurvature(model, p, (X, y)).loss()
    assert abs(unweighted - full) > 1e-6 * abs(full)
    assert abs(MLPCurvature(model, p, parts).loss() - full) <= 1e-12 * abs(full)


def test_eigsh_top5_on_the_dataset_hessian_equals_one_batch(digits):
    X, y = digits
    model = _model("cross_entropy")
    p = model.init_params(np.random.default_rng(1))
    H1 = MLPCurvature(model, p, Reiterable(_split(X, y)), check_deterministic=True).hessian()
    H0 = MLPCurvature(model, p, (X, y)).hessian()
    v0 = np.random.default_rng(3).standard_normal(p.size)
    r1 = curvlab.eigsh(H1, k=5, tol=1e-12, v0=v0)
    r0 = curvlab.eigsh(H0, k=5, tol=1e-12, v0=v0)
    assert np.all(r0.converged) and np.all(r1.converged)
    np.testing.assert_allclose(r1.eigenvalues, r0.eigenvalues, rtol=1e-10, atol=0)


def test_one_batch_is_bitwise_unchanged_and_a_list_of_one_batch_too(digits):
    X, y = digits
    model = _model("cross_entropy")
    p = model.init_params(np.random.default_rng(1))
    V = np.random.default_rng(4).standard_normal((p.size, 2))
    one = MLPCurvature(model, p, (X[:50], y[:50]))
    lst = MLPCurvature(model, p, [(X[:50], y[:50])])
    assert one.batches.single and not lst.batches.single
    assert one.loss() == model.loss(p, X[:50], y[:50]) == lst.loss()
    assert (one.hessian() @ V).tobytes() == (lst.hessian() @ V).tobytes() == model.hvp_matmat(p, X[:50], y[:50], V).tobytes()
    assert one.gradient()[1].tobytes() == lst.gradient()[1].tobytes()
    assert repr(one).endswith("on 50 samples, P=910)")
    assert repr(MLPCurvature(model, p, _split(X, y))).endswith("on 1438 samples in 8 batches, P=910)")


def test_num_data_is_checked_against_the_samples_seen(digits):
    X, y = digits
    model = _model("cross_entropy")
    p = model.init_params(np.random.default_rng(1))
    parts = _split(X, y)
    with pytest.raises(ValueError, match="num_data=1000 but data holds 1438 samples in 8 batches"):
        MLPCurvature(model, p, parts, num_data=1000)
    src = MLPCurvature(model, p, Reiterable(parts), num_data=1439)  # a stream: checked on its first pass
    with pytest.raises(ValueError, match="num_data=1439 but a pass over data gave 1438 samples in 8 batches"):
        src.loss()
    ok = MLPCurvature(model, p, Reiterable(parts), num_data=1438)
    assert ok.hessian().description.endswith("on 1438 samples in 8 batches, P=910")
    for bad, exc in ((0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="num_data must be"):
            MLPCurvature(model, p, parts, num_data=bad)


def test_one_shot_iterators_are_refused_and_callables_give_fresh_ones(digits):
    X, y = digits
    model = _model("cross_entropy")
    p = model.init_params(np.random.default_rng(1))
    parts = _split(X, y)
    for one_shot in ((b for b in parts), iter(parts), map(tuple, parts)):
        with pytest.raises(TypeError, match="data is a one-shot iterator.*zero-argument callable"):
            MLPCurvature(model, p, one_shot)
    calls = []

    def fresh():
        calls.append(1)
        return (b for b in parts)

    src = MLPCurvature(model, p, fresh)
    assert calls == [] and src.n_samples is None  # nothing read when bound
    f = src.loss()
    H = src.hessian()
    H @ np.ones(p.size)
    H @ np.ones((p.size, 2))
    assert len(calls) == 3 and src.n_samples == 1438
    assert f == MLPCurvature(model, p, parts).loss()
    with pytest.raises(TypeError, match="the callable returned int, expected an iterator of batches"):
        MLPCurvature(model, p, lambda: 3).loss()
    with pytest.raises(ValueError, match="data yielded no batches"):
        MLPCurvature(model, p, lambda: iter([])).loss()


def test_bad_data_fails_naming_data(digits):
    X, y = digits
    model = _model("cross_entropy")
    p = model.init_params(np.random.default_rng(1))
    for bad in (X, None, "digits", {"X": X, "y": y}, (X,), (X, y, y), 3):
        with pytest.raises(TypeError, match="data must be one batch"):
            MLPCurvature(model, p, bad)
    with pytest.raises(ValueError, match="data is an empty list of batches"):
        MLPCurvature(model, p, [])
    parts = _split(X, y)
    with pytest.raises(TypeError, match=r"data: batch 2 must be a pair \(inputs, targets\), got tuple of length 3"):
        MLPCurvature(model, p, Reiterable(parts[:2] + [(X, y, y)])).loss()
    bad_labels = [(Xb, yb.copy()) for Xb, yb in parts]
    bad_labels[5][1][0] = 10
    with pytest.raises(ValueError, match="y labels must lie in"):  # a list: checked when bound
        MLPCurvature(model, p, bad_labels)
    src = MLPCurvature(model, p, Reiterable(bad_labels))  # a stream: when the batch is read
    with pytest.raises(ValueError, match="y labels must lie in"):
        src.hessian() @ np.ones(p.size)
    with pytest.raises(ValueError, match=r"X must have shape \(B, 64\)"):
        MLPCurvature(model, p, [(X[:5, :3], y[:5]), (X[:5], y[:5])])


def test_labels_are_checked_once_for_a_list_and_once_per_batch_per_pass_for_a_stream(digits, monkeypatch):
    X, y = digits
    model = _model("cross_entropy")
    p = model.init_params(np.random.default_rng(1))
    calls = []
    real = model._check_labels
    monkeypatch.setattr(model, "_check_labels", lambda yy: (calls.append(1), real(yy))[1])
    parts = _split(X, y)
    src = MLPCurvature(model, p, parts)
    assert len(calls) == 8
    src.loss(), src.hessian() @ np.ones(p.size), src.at(params=p * 0.5).gradient()
    assert len(calls) == 8
    calls.clear()
    stream = MLPCurvature(model, p, Reiterable(parts))
    assert len(calls) == 0
    stream.loss(), stream.hessian() @ np.ones(p.size)
    assert len(calls) == 16


def test_determinism_check_catches_a_reshuffling_iterable(digits):
    X, y = digits
    model = _model("cross_entropy")
    p = model.init_params(np.random.default_rng(1))

    class Shuffling:
        def __init__(self):
            self.rng = np.random.default_rng(0)

        def __iter__(self):
            perm = self.rng.permutation(X.shape[0])
            return iter(_split(X[perm], y[perm]))

    src = MLPCurvature(model, p, Shuffling(), check_deterministic=True)
    src.loss()  # the first pass is recorded
    with pytest.raises(ValueError, match=r"data is not deterministic: pass 2 gave a different first batch.*shuffle=True"):
        src.loss()
    loose = MLPCurvature(model, p, Shuffling())  # off by default: same sample count, no error
    loose.loss(), loose.loss()
    sizes = iter([SIZES, SIZES[:5] + (337, 255)])  # the same first batch, merged later ones
    reordered = MLPCurvature(model, p, lambda: iter(_split_as(X, y, next(sizes))), check_deterministic=True)
    reordered.loss()
    with pytest.raises(ValueError, match="data is not deterministic: pass 2 gave batch sizes"):
        reordered.loss()
    counts = iter([1438, 1400])

    def shrinking_batches():
        n = next(counts)
        return iter([(X[:n], y[:n])])

    shrinking = MLPCurvature(model, p, shrinking_batches)  # the count is compared even without the check
    shrinking.loss()
    with pytest.raises(ValueError, match="pass 2 gave 1400 samples, pass 1 gave 1438"):
        shrinking.loss()


def _split_as(X, y, sizes):
    cuts = np.cumsum(sizes)[:-1]
    return list(zip(np.split(X, cuts), np.split(y, cuts)))


def test_progress_is_silent_by_default_and_a_bar_when_asked(digits, capfd):
    X, y = digits
    model = _model("cross_entropy")
    p = model.init_params(np.random.default_rng(1))
    src = MLPCurvature(model, p, Reiterable(_split(X, y)))
    src.loss(), src.hessian() @ np.ones(p.size)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    buf = io.StringIO()
    opts = {"file": buf, "desc": "digits", "leave": True}
    shown = MLPCurvature(model, p, Reiterable(_split(X, y)), progress=opts)
    shown.loss()
    assert "digits" in buf.getvalue() and "8/8" in buf.getvalue()
    assert shown.at(params=p * 0.5).batches.progress == opts
    assert shown.at(data=_split(X, y)).batches.progress == opts
    with pytest.raises(TypeError, match="progress must be a bool or a dict"):
        MLPCurvature(model, p, _split(X, y), progress="yes")


def test_at_rebinds_data_between_one_batch_and_a_dataset(digits):
    X, y = digits
    model = _model("cross_entropy")
    p = model.init_params(np.random.default_rng(1))
    V = np.random.default_rng(6).standard_normal((p.size, 2))
    one = MLPCurvature(model, p, (X[:40], y[:40]))
    ds = one.at(data=Reiterable(_split(X, y)))
    assert not ds.batches.single and ds.model is model
    full = MLPCurvature(model, p, (X, y))
    assert _rel(ds.hessian() @ V, full.hessian() @ V) <= 1e-12
    back = ds.at(data=(X[:40], y[:40]))
    assert back.batches.single and (back.hessian() @ V).tobytes() == (one.hessian() @ V).tobytes()
    moved = ds.at(params=p * 0.5)
    assert moved.batches is ds.batches
    assert _rel(moved.gradient()[1], full.at(params=p * 0.5).gradient()[1]) <= 1e-12
    nd = ds.at(data=Batches(_split(X, y), num_data=1438))
    assert nd.batches.num_data == 1438


def test_reduce_hook_averages_over_a_process_group(digits):
    """``reduce`` sums the weighted sums and counts over processes: two identical shards
    (a fake all-reduce doubling both) average to one shard's numbers; num_data is global."""
    X, y = digits
    model = _model("cross_entropy")
    p = model.init_params(np.random.default_rng(1))
    seen = []

    def all_reduce(sums, count):
        seen.append(count)
        return tuple(2 * s for s in sums) if isinstance(sums, tuple) else 2 * sums, 2 * count

    b = Batches(_split(X, y), num_data=2 * 1438, reduce=all_reduce)
    src = MLPCurvature(model, p, b)
    full = MLPCurvature(model, p, (X, y))
    assert abs(src.loss() - full.loss()) <= 1e-12 * full.loss() and seen == [1438]
    assert _rel(src.gradient()[1], full.gradient()[1]) <= 1e-12
    wrong = Batches(_split(X, y), num_data=1438, reduce=all_reduce)
    with pytest.raises(ValueError, match="num_data=1438 but the process group's passes gave 2876 samples"):
        MLPCurvature(model, p, wrong).loss()


def test_batches_helpers():
    X, y = np.ones((5, 2)), np.zeros(5, dtype=np.int64)
    b = Batches((X, y))
    assert b.kind == "batch" and b.single and b.num_batches == 1 and b.n_samples == 5
    assert as_batches(b) is b
    with pytest.raises(TypeError, match="data is already a Batches"):
        Batches(b)
    with pytest.raises(TypeError, match="data is already a Batches"):
        as_batches(b, num_data=5)
    with pytest.raises(TypeError, match=r"data is already a Batches: give the options \['num_data'\]"):
        as_batches(b, num_data=0, progress=False)  # 0 is an option given, not "no option"
    assert Batches([(X, y), (X[:2], y[:2])]).mean(lambda bt: float(bt[0].shape[0])) == pytest.approx((25 + 4) / 7)
    assert Batches([(X, y), (X[:2], y[:2])]).mean(lambda bt: (bt[0][0], 1.0))[1] == 1.0
    assert Batches(((X, y), (X[:2], y[:2]))).kind == "sequence"
    assert Batches([((X, X), y)]).kind == "sequence"  # inputs that are a pair: bind [batch]
    assert Batches(((X, X), y)).kind == "batch"
    assert repr(Batches(lambda: iter([(X, y)]))) == "Batches(callable, ? samples, ? batches)"
    with pytest.raises(TypeError, match="batch_size must be None or a callable"):
        Batches((X, y), batch_size=3)


def test_batches_on_a_torch_dataloader_duck_typed():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    X = torch.randn(37, 3, dtype=torch.float64, generator=g)
    y = torch.arange(37) % 2
    fixed = Batches(DataLoader(TensorDataset(X, y), batch_size=8), check_deterministic=True, num_data=37)
    assert fixed.kind == "iterable" and fixed.num_batches == 5
    m1 = fixed.mean(lambda b: b[0].sum(0) / b[0].shape[0])
    m2 = fixed.mean(lambda b: b[0].sum(0) / b[0].shape[0])
    torch.testing.assert_close(m1, X.mean(0), rtol=1e-12, atol=0)
    assert torch.equal(m1, m2) and fixed.n_samples == 37
    shuffled = Batches(DataLoader(TensorDataset(X, y), batch_size=8, shuffle=True, generator=g),
                       check_deterministic=True)
    shuffled.mean(lambda b: b[0].mean())
    with pytest.raises(ValueError, match="data is not deterministic.*shuffle=True"):
        shuffled.mean(lambda b: b[0].mean())
