"""Issue 11 defect 9: an interrupted ``python -m paper_figures`` leaves no truncated file, prints one
line instead of a traceback, writes the report of the figures that finished, and exits 128 + signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from paper_figures import _runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# A registry of two fake figures run in a child process: "fast" finishes, "slow" announces itself
# (a marker file) and then sleeps until the test signals the process.
SCRIPT = textwrap.dedent("""
    import sys, time, types
    from pathlib import Path
    import paper_figures
    from paper_figures import _runner
    from paper_figures._common import Check, FigureResult, FigureSpec, Verdict, new_figure

    out = Path(sys.argv[1])

    def make(name, slow):
        mod = types.ModuleType("paper_figures.fig_" + name)
        mod.SPEC = FigureSpec(name=name, paper="000", claims=("C2",), title=name, substitution="nothing",
                              columns=("x", "y"))

        def run(ctx):
            if slow:
                (out / "slow.started").write_text("1")
                time.sleep(60)
            fig, ax = new_figure(1)
            ax[0].plot([0, 1], [1, 0])
            return FigureResult(fig, [[0.0, 1.0]], "done", [Check("ok", True)],
                                verdicts=[Verdict("C2", "supported", "always", "1 ± 0")])

        mod.run = run
        sys.modules["paper_figures.fig_" + name] = mod

    make("fast", False)
    make("slow", True)
    paper_figures.FIGURE_NAMES = ("fast", "slow")
    raise SystemExit(_runner.main(["--out", str(out), "--no-progress", "--jobs", sys.argv[2]]))
""")


def _interrupt(tmp_path: Path, sig: int, jobs: int) -> tuple[int, str, str]:
    script = tmp_path / "run_fake.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(jobs)], cwd=str(ROOT), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ((out / "slow.started").exists() and (out / "fast.json").exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            o, e = proc.communicate()
            pytest.fail(f"fake run did not reach the slow figure: rc={proc.returncode}\n{o}\n{e}")
        time.sleep(0.05)
    proc.send_signal(sig)
    try:
        o, e = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        o, e = proc.communicate()
        pytest.fail(f"run did not stop after {signal.Signals(sig).name}\n{o}\n{e}")
    return proc.returncode, o, e


@pytest.mark.parametrize("sig, code, jobs", [(signal.SIGINT, 130, 1), (signal.SIGTERM, 143, 1),
                                             (signal.SIGINT, 130, 2), (signal.SIGTERM, 143, 2)])
def test_signal_stops_cleanly_and_reports_finished_figures(tmp_path, sig, code, jobs):
    rc, stdout, stderr = _interrupt(tmp_path, sig, jobs)
    name = signal.Signals(sig).name
    assert rc == code, (stdout, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and name in lines[0] and "1 of 2 figures finished" in lines[0], stderr
    out = tmp_path / "out"
    # the finished figure's outputs are complete, and nothing is truncated or left half-written
    for p in out.iterdir():
        assert not p.name.endswith(".tmp"), p
        if p.suffix in (".json", ".png", ".csv", ".md", ".html"):
            assert p.stat().st_size > 0, p
    assert json.loads((out / "fast.json").read_text())["status"] == "ok"
    assert not (out / "slow.json").exists()
    md = (out / "index.md").read_text()
    html = (out / "index.html").read_text()
    assert f"interrupted by {name}" in md and f"interrupted by {name}" in html
    assert "### fast" in md and "### slow" in md and "interrupted" in md.split("### slow")[1]
    assert "supported" in md.split("### fast")[1].split("### slow")[0]
    run = json.loads((out / "run.json").read_text())
    during = "slow" if jobs == 1 else "the parallel run"
    assert run["finished"] == ["fast"] and run["interrupted"] == {"signal": name, "during": during}


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "a.json"
    target.write_text('{"old": 1}')

    def bad(fh):
        fh.write('{"new": ')
        raise KeyboardInterrupt  # a signal in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        _runner.atomic_write(target, bad)
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    _runner.atomic_write(target, lambda fh: fh.write('{"new": 2}'))
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0600
    plain.unlink()
    assert json.loads(target.read_text()) == {"new": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
