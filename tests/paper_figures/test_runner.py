"""Runner and report of ``python -m paper_figures``: selection, bad input, failure isolation,
and a smoke run of every figure in the hidden tiny mode."""

from __future__ import annotations

import csv
import json
import math
import sys
import types

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import paper_figures  # noqa: E402
from paper_figures import FIGURE_NAMES, _runner  # noqa: E402
from paper_figures._common import Check, FigureResult, FigureSkipped, FigureSpec, new_figure  # noqa: E402


# ----------------------------------------------------------------------------- fake figures
def _fake_module(name: str, behaviour: str) -> types.ModuleType:
    mod = types.ModuleType(f"paper_figures.fig_{name}")
    mod.SPEC = FigureSpec(name=name, paper="core", claims=(), title=f"fake {behaviour}", substitution="nothing",
                          columns=("x", "y"),
                          requires=("curvlab.no_such_module",) if behaviour == "missing" else ())

    def run(ctx):
        if behaviour == "raise":
            raise RuntimeError("boom")
        if behaviour == "skip":
            raise FigureSkipped("module curvlab.thing not available")
        if behaviour == "burn":  # spend 0.3 s of CPU
            import time

            t0 = time.process_time()
            while time.process_time() - t0 < 0.3:
                pass
        fig, ax = new_figure(1)
        ax[0].plot([0, 1], [1, 0], label="line")
        checks = [Check("decreasing", behaviour != "badcheck", "y[-1] < y[0]")]
        return FigureResult(fig, [[0.0, 1.0], [1.0, 0.0]], "the line goes down", checks)

    mod.run = run
    return mod


@pytest.fixture
def fake_registry(monkeypatch):
    kinds = {"fake_ok": "ok", "fake_raise": "raise", "fake_badcheck": "badcheck", "fake_skip": "skip",
             "fake_missing": "missing"}
    for name, kind in kinds.items():
        monkeypatch.setitem(sys.modules, f"paper_figures.fig_{name}", _fake_module(name, kind))
    monkeypatch.setattr(paper_figures, "FIGURE_NAMES", tuple(kinds))
    return kinds


def test_failures_are_isolated_and_reported(fake_registry, tmp_path, capsys):
    rc = _runner.main(["--out", str(tmp_path), "--no-progress"])
    assert rc == 1  # one figure raised, one failed its sanity check
    status = {n: json.loads((tmp_path / f"{n}.json").read_text())["status"] for n in fake_registry}
    assert status == {"fake_ok": "ok", "fake_raise": "failed", "fake_badcheck": "failed", "fake_skip": "skipped",
                      "fake_missing": "skipped"}
    rec = json.loads((tmp_path / "fake_missing.json").read_text())
    assert "curvlab.no_such_module not available" in rec["reason"]
    for n in ("fake_missing", "fake_skip"):
        assert json.loads((tmp_path / f"{n}.json").read_text())["reason"].startswith("skipped:")
    assert "boom" in json.loads((tmp_path / "fake_raise.json").read_text())["reason"]
    assert (tmp_path / "fake_ok.png").stat().st_size > 1000
    out = capsys.readouterr().out
    for n in fake_registry:  # one summary line per figure
        assert n in out
    md = (tmp_path / "index.md").read_text()
    html = (tmp_path / "index.html").read_text()
    for n in fake_registry:
        assert n in md and n in html
    assert "data:image/png;base64," in html


def test_all_ok_exits_zero(fake_registry, tmp_path):
    assert _runner.main(["fake_ok", "fake_skip", "--out", str(tmp_path), "--no-progress"]) == 0
    rec = json.loads((tmp_path / "fake_ok.json").read_text())
    assert rec["outcome"] == "the line goes down" and rec["seeds"] == [0, 1, 2] and "numpy" in rec["versions"]
    assert rec["wall_time_s"] >= 0
    # the report lists figures that were not run as "not run"
    assert "fake_raise" in (tmp_path / "index.md").read_text()


def test_parallel_jobs_run_groups_in_workers(monkeypatch, tmp_path, capsys):
    kinds = {"p1_ok": "ok", "p1_raise": "raise", "p2_ok": "burn", "p3_badcheck": "badcheck"}
    for name, kind in kinds.items():
        monkeypatch.setitem(sys.modules, f"paper_figures.fig_{name}", _fake_module(name, kind))
    monkeypatch.setattr(paper_figures, "FIGURE_NAMES", tuple(kinds))
    monkeypatch.setenv("PAPER_FIGURES_START_METHOD", "fork")  # the fake modules live in this process only
    assert _runner.groups_of(list(kinds)) == [["p1_ok", "p1_raise"], ["p2_ok"], ["p3_badcheck"]]
    assert _runner.main(["--out", str(tmp_path), "--no-progress", "--jobs", "2"]) == 1
    status = {n: json.loads((tmp_path / f"{n}.json").read_text())["status"] for n in kinds}
    assert status == {"p1_ok": "ok", "p1_raise": "failed", "p2_ok": "ok", "p3_badcheck": "failed"}
    out = capsys.readouterr().out
    assert [ln.split()[0] for ln in out.splitlines() if ln.startswith("  p")] == list(kinds)  # report order
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["jobs"] == 2 and run["finished"] == list(kinds)
    recs = [json.loads((tmp_path / f"{n}.json").read_text()) for n in kinds]
    assert recs[2]["cpu_time_s"] >= 0.3
    assert run["total_cpu_time_s"] >= 0.3 - 0.05  # the workers' CPU counts, not only the parent's
    assert _runner.main(["--jobs", "0", "--out", str(tmp_path)]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_workers_are_spawned_once_torch_or_jax_is_loaded(monkeypatch):
    """A forked worker hangs in torch's OpenMP pool (or XLA's) once the parent has used it."""
    monkeypatch.delenv("PAPER_FIGURES_START_METHOD", raising=False)
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch", object()))
    assert _runner._start_method() == "spawn"
    for m in _runner._FORK_UNSAFE:
        monkeypatch.delitem(sys.modules, m, raising=False)
    import multiprocessing as mp

    assert _runner._start_method() == ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    monkeypatch.setenv("PAPER_FIGURES_START_METHOD", "nonsense")
    with pytest.raises(_runner.UsageError, match="PAPER_FIGURES_START_METHOD"):
        _runner._start_method()


def test_unknown_name_lists_known(capsys, tmp_path):
    rc = _runner.main(["no_such_figure", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no_such_figure" in err
    for n in FIGURE_NAMES:
        assert n in err
    assert not list(tmp_path.iterdir())  # nothing was run


def test_unwritable_output_folder_fails_before_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = _runner.main(["003_cost", "--out", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert rc == 2 and "not writable" in err and str(blocker / "sub") in err


def test_bad_seeds(capsys, tmp_path):
    assert _runner.main(["--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_group_prefix_selects_a_paper():
    assert _runner.resolve_names(["003"]) == [n for n in FIGURE_NAMES if n.startswith("003")]
    assert _runner.resolve_names(["fig_core_spectrum"]) == ["core_spectrum"]
    assert _runner.resolve_names([]) == list(FIGURE_NAMES)


def test_list(capsys):
    assert _runner.main(["--list"]) == 0
    out = capsys.readouterr().out
    for n in FIGURE_NAMES:
        assert n in out


def test_every_spec_is_well_formed():
    for n in FIGURE_NAMES:
        spec = paper_figures.load(n).SPEC
        assert spec.name == n
        assert spec.columns and len(set(spec.columns)) == len(spec.columns)
        text = spec.claim_text()
        assert "Figure" not in text
        if spec.paper != "core":
            assert text.startswith("Surrogate experiment testing claim") and spec.arxiv in text


# ----------------------------------------------------------------------------- smoke run of every figure
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_figures_tiny")
    rc = _runner.main(["--tiny", "--out", str(out), "--no-progress"])
    return rc, out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("name", FIGURE_NAMES)
def test_tiny_figure_outputs(tiny_run, name):
    rc, out = tiny_run
    rec = json.loads((out / f"{name}.json").read_text())
    # every figure's curvlab modules have landed: a skip would hide a broken import
    assert rec["status"] == "ok", rec.get("reason", "") + "\n" + rec.get("traceback", "")
    assert (out / f"{name}.png").stat().st_size > 2000
    spec = paper_figures.load(name).SPEC
    with open(out / f"{name}.csv") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == spec.columns
    assert len(rows) > 1
    for r in rows[1:]:
        assert len(r) == len(spec.columns)
        for v in r:
            if _is_number(v):
                assert math.isfinite(float(v)), (name, r)
    assert rec["outcome"] and rec["checks"] is not None and rec["hyperparameters"] is not None


def test_tiny_report_lists_every_figure(tiny_run):
    rc, out = tiny_run
    assert rc == 0
    md = (out / "index.md").read_text()
    html = (out / "index.html").read_text()
    for n in FIGURE_NAMES:
        assert f"### {n}" in md and f"id='{n}'" in html
    assert "Figure 1" not in md


def test_tiny_report_states_claims_verdicts_and_header(tiny_run):
    from paper_figures._common import CLAIMS, VERDICTS

    rc, out = tiny_run
    md = (out / "index.md").read_text()
    html = (out / "index.html").read_text()
    for n in FIGURE_NAMES:
        rec = json.loads((out / f"{n}.json").read_text())
        spec = paper_figures.load(n).SPEC
        section = md.split(f"### {n}\n")[1].split("\n### ")[0]
        assert [v["claim"] for v in rec["verdicts"]] == list(spec.claims)
        for v in rec["verdicts"]:
            assert v["verdict"] in VERDICTS and v["criterion"] and v["evidence"]
            quote = CLAIMS[spec.paper][v["claim"]]
            assert quote in section and f"verdict: **{v['verdict']}**" in section and v["criterion"] in section
            assert f"https://arxiv.org/abs/{spec.arxiv}" in section
        assert f"[csv]({n}.csv)" in md and f"[json]({n}.json)" in md and f"href='{n}.csv'" in html
        assert "seeds used: " in section
    # the header: versions, commit, date, mode, threads, total time
    head = md.split("## Claims and verdicts")[0]
    for key in ("mode **tiny**", "BLAS threads 1", "total time", "git commit", "numpy", "run started"):
        assert key in head, key
    assert "class='sup'" in html or "class='nsup'" in html or "class='mix'" in html
