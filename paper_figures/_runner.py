"""Command line of ``python -m paper_figures``: pick figures, run them, write outputs and the report.

With ``--jobs J`` (default 2) the figures run in J worker processes, one paper's figures per worker
(figures of a paper share cached training runs); every record states its wall and CPU time.

Exit status: 0 when every selected figure succeeded or was skipped (its curvlab module not
available yet), 1 when at least one failed (after all the others ran), 2 on bad input
(unknown figure name, unwritable output folder, bad ``--seeds``), 130 on SIGINT and 143 on
SIGTERM: the run stops, prints one line, and still writes ``index.md``/``index.html`` for the
figures that finished. Every output file is written atomically (a temporary file in the same
folder, then :func:`os.replace`), so an interrupted run never leaves a truncated file.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import paper_figures as _pf
from ._common import Check, Context, FigureResult, FigureSkipped, arxiv_url, missing_requirements

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
_REQUIRE_VERDICTS = True  # a paper figure must judge every claim it lists


class UsageError(Exception):
    """Bad command-line input, reported before any work starts."""


# ----------------------------------------------------------------------------- selection
def resolve_names(names: Sequence[str]) -> list[str]:
    """Exact figure names, or group prefixes (``000``, ``core``); unknown names raise UsageError."""
    if not names:
        return list(_pf.FIGURE_NAMES)
    chosen: list[str] = []
    unknown = []
    for n in names:
        n = n.removeprefix("fig_").removesuffix(".py")
        hits = [f for f in _pf.FIGURE_NAMES if f == n] or [f for f in _pf.FIGURE_NAMES if len(n) >= 3 and f.startswith(n)]
        if not hits:
            unknown.append(n)
        chosen += [h for h in hits if h not in chosen]
    if unknown:
        raise UsageError(f"unknown figure name(s): {', '.join(unknown)}\nknown figures:\n  "
                         + "\n  ".join(_pf.FIGURE_NAMES))
    return [f for f in _pf.FIGURE_NAMES if f in chosen]


def check_writable(out: Path) -> Path:
    """Create ``out`` and prove a file can be written there, or raise UsageError."""
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-", delete=True) as fh:
            fh.write(b"ok")
    except OSError as exc:
        raise UsageError(f"output folder {str(out)!r} is not writable: {exc.strerror or exc}") from exc
    return out.resolve()


# ----------------------------------------------------------------------------- records
def _distribution_version(mod: str) -> str:
    """The installed distribution's version of a module without ``__version__`` (mnist1d), else ``"?"``."""
    import importlib.metadata

    try:
        return importlib.metadata.version({"sklearn": "scikit-learn"}.get(mod, mod))
    except importlib.metadata.PackageNotFoundError:
        return "?"


def library_versions() -> dict[str, str]:
    vers = {"python": platform.python_version()}
    for mod in ("numpy", "scipy", "matplotlib", "sklearn", "mlxtend", "mnist1d", "numba", "curvlab"):
        try:
            m = __import__(mod)
            vers[mod] = str(getattr(m, "__version__", None) or _distribution_version(mod))
        except Exception:
            vers[mod] = "not installed"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if rev.returncode == 0:
            vers["curvlab_git"] = rev.stdout.strip()
    except Exception:
        pass
    return vers


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    return str(x)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w", **open_kw: Any) -> None:
    """Write ``path`` all or nothing: ``write(fh)`` fills a temporary file in the same folder, which then
    replaces ``path`` with :func:`os.replace`. An exception or a signal part-way leaves ``path`` as it was
    (never a truncated or 0-byte file) and removes the temporary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        with os.fdopen(fd, mode, **open_kw) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def fill(fh):
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow([f"{v:.10g}" if isinstance(v, float) else v for v in r])

    atomic_write(path, fill, newline="")


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda fh: json.dump(_jsonable(obj), fh, indent=1))


def run_one(name: str, ctx: Context, out: Path, versions: dict[str, str], run_id: str = "") -> dict[str, Any]:
    """Run one figure and write its PNG/CSV/JSON; never raises. Returns the JSON record."""
    t0, c0 = time.perf_counter(), time.process_time()
    rec: dict[str, Any] = {"name": name, "mode": ctx.mode, "seeds": ctx.seeds, "versions": versions,
                           "started": _dt.datetime.now().isoformat(timespec="seconds"), "run_id": run_id}
    files: dict[str, str] = {}
    try:
        mod = _pf.load(name)
        spec = mod.SPEC
        rec.update(paper=spec.paper, arxiv=spec.arxiv, arxiv_url=arxiv_url(spec.paper), claims=list(spec.claims),
                   claim_quotes=spec.claim_quotes(), title=spec.title, caption=spec.claim_text(),
                   substitution=spec.substitution, columns=list(spec.columns))
        missing = missing_requirements(spec.requires)
        if missing:
            raise FigureSkipped("module " + ", ".join(m.split(":")[0] + (f" ({m.split(':')[1]})" if ":" in m else "")
                                                     for m in missing) + " not available")
        result: FigureResult = mod.run(ctx)
        rows = [list(r) for r in result.rows]
        bad = [i for i, r in enumerate(rows) if len(r) != len(spec.columns)]
        if bad:
            raise ValueError(f"CSV row {bad[0]} has {len(rows[bad[0]])} fields, expected {len(spec.columns)}")
        png = out / f"{name}.png"
        atomic_write(png, lambda fh: result.fig.savefig(fh, dpi=100, format="png"), mode="wb")
        import matplotlib.pyplot as plt

        plt.close(result.fig)
        write_csv(out / f"{name}.csv", spec.columns, rows)
        files = {"png": png.name, "csv": f"{name}.csv"}
        failed = [c for c in result.checks if not c.ok]
        verdicts = [v.asdict() for v in result.verdicts]
        judged = [v["claim"] for v in verdicts]
        unjudged = [c for c in spec.claims if c not in judged]
        extra = [c for c in judged if c not in spec.claims]
        if _REQUIRE_VERDICTS and (unjudged or extra or len(set(judged)) != len(judged)):
            failed.append(Check("one verdict per claim", False, f"claims {list(spec.claims)}, verdicts for {judged}"))
        rec.update(outcome=result.outcome, scale=result.scale, hyperparameters=result.hyperparameters,
                   checks=[{"name": c.name, "ok": bool(c.ok), "detail": c.detail} for c in result.checks],
                   verdicts=verdicts, status="failed" if failed else "ok",
                   seeds=list(ctx.seeds) if result.seeds_used is None else [int(x) for x in result.seeds_used])
        if failed:
            rec["reason"] = "sanity check failed: " + "; ".join(f"{c.name} ({c.detail})" for c in failed)
    except FigureSkipped as exc:
        rec.update(status="skipped", reason=f"skipped: {exc}")
    except Exception as exc:  # a figure's bug must not stop the others
        rec.update(status="failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    rec["wall_time_s"] = round(time.perf_counter() - t0, 3)
    rec["cpu_time_s"] = round(time.process_time() - c0, 3)  # this process's CPU time: comparable on a busy machine
    rec["files"] = {**files, "json": f"{name}.json"}
    write_json(out / f"{name}.json", rec)
    return rec


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m paper_figures",
        description="Run curvlab's surrogate experiments (one figure per module) and write a report.",
        epilog="Known figures: " + ", ".join(_pf.FIGURE_NAMES) + ". A group prefix (000, 001, 002, 003, core) "
               "selects all figures of a paper.")
    p.add_argument("names", nargs="*", metavar="NAME", help="figures to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the figures and whether their modules are available")
    p.add_argument("--full", action="store_true",
                   help="run the specifications' protocols at full size (5 seeds; measured end to end: 1 h 49 min "
                        "wall and 1 h 46 min CPU with 2 workers on a loaded 2-core machine, about 75 min on "
                        "2 idle cores, two thirds of it in 001_benchmark)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="number of seeds (default 3 quick, 5 full)")
    p.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR", help="output folder (default paper_figures/out)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), metavar="J",
                   help="worker processes, one paper's figures per worker (default: 2, or 1 on a one-core machine)")
    p.add_argument("--threads", type=int, default=1, metavar="T",
                   help="BLAS threads (default 1: small matrices, and stable timings on shared machines)")
    return p


def list_figures(names: Sequence[str]) -> None:
    for n in names:
        try:
            spec = _pf.load(n).SPEC
            miss = missing_requirements(spec.requires)
            avail = "ready" if not miss else "skipped (needs " + ", ".join(miss) + ")"
            print(f"{n:22s} {spec.claim_text()[:80]:80s}  {avail}")
        except Exception as exc:
            print(f"{n:22s} (cannot import: {type(exc).__name__}: {exc})")


def _thread_limits(n: int):
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(n)
    except Exception:  # threadpoolctl ships with scikit-learn; without it keep the defaults
        return None


# ----------------------------------------------------------------------------- parallel runs
def groups_of(names: Sequence[str]) -> list[list[str]]:
    """Figures grouped by paper (``000``, ``001``, ..., ``core``): a group shares cached training runs, so it
    runs in one worker process, in report order."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.split("_")[0], []).append(n)
    return list(groups.values())


def _worker_exit(signum, frame):
    raise SystemExit(128 + signum)  # unwinds (temporary files removed), and multiprocessing exits quietly


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    signal.signal(signal.SIGTERM, _worker_exit)  # Pool.terminate


def _run_group(group: list[str], ctx: Context, out: Path, versions: dict[str, str], run_id: str):
    return [run_one(n, ctx, out, versions, run_id) for n in group]


#: modules whose thread pools (OpenMP, XLA) make a forked child hang once the parent has used them
_FORK_UNSAFE = ("torch", "jax", "jaxlib")


def _start_method() -> str | None:
    """``fork`` (cheap) unless the parent already imported a fork-unsafe library, else ``spawn``.

    ``PAPER_FIGURES_START_METHOD`` overrides the choice (tests that register fake figure
    modules in ``sys.modules`` need ``fork``).
    """
    import multiprocessing as mp

    forced = os.environ.get("PAPER_FIGURES_START_METHOD")
    if forced:
        if forced not in mp.get_all_start_methods():
            raise UsageError(f"PAPER_FIGURES_START_METHOD must be one of {mp.get_all_start_methods()}, got {forced!r}")
        return forced
    if "fork" in mp.get_all_start_methods() and not any(m in sys.modules for m in _FORK_UNSAFE):
        return "fork"
    return "spawn"


def _start_pool(jobs: int):
    import multiprocessing as mp

    return mp.get_context(_start_method()).Pool(jobs, initializer=_worker_init, maxtasksperchild=1)


def _run_parallel(pool, names: Sequence[str], ctx: Context, out: Path, versions: dict[str, str],
                  run_id: str) -> list[dict[str, Any]]:
    """Run the paper groups on ``pool`` (largest group first); returns the records in report order."""
    groups = sorted(groups_of(names), key=len, reverse=True)
    quiet = Context(mode=ctx.mode, seeds=len(ctx.seeds), progress=False)  # no interleaved bars
    pending = [pool.apply_async(_run_group, (g, quiet, out, versions, run_id)) for g in groups]
    done: dict[str, dict[str, Any]] = {}
    while pending:
        for job in list(pending):
            if job.ready():
                for r in job.get():
                    done[r["name"]] = r
                    if ctx.show_progress:
                        print(f"  {r['name']:22s} {r['status']:8s} {r['wall_time_s']:7.1f} s", flush=True)
                pending.remove(job)
        time.sleep(0.05)
    return [done[n] for n in names if n in done]


def _records_of_run(out: Path, names: Sequence[str], run_id: str) -> list[dict[str, Any]]:
    """The records of ``names`` that this run (``run_id``) finished, read back from their JSON files."""
    recs = []
    for n in names:
        try:
            rec = json.loads((out / f"{n}.json").read_text())
        except (OSError, ValueError):
            continue
        if rec.get("run_id") == run_id:
            recs.append(rec)
    return recs


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) received: stops the figure loop; not an ``Exception``, so no figure swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.signame = signal.Signals(signum).name


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _install_signal_handlers() -> dict[int, Any]:
    """SIGTERM raises :class:`Interrupted` (SIGINT already raises KeyboardInterrupt); main thread only."""
    old = {}
    try:
        old[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_interrupted)
        old[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    except ValueError:  # not the main thread: keep the defaults
        pass
    return old


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:
            pass


def _restore_signals(old: dict[int, Any]) -> None:
    for sig, handler in old.items():
        try:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        except ValueError:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        names = resolve_names(args.names)
        if args.list:
            list_figures(names)
            return 0
        if args.seeds is not None and args.seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
        if args.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        if args.full and args.tiny:
            raise UsageError("--full and --tiny exclude each other")
        out = check_writable(Path(args.out))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mode = "full" if args.full else "tiny" if args.tiny else "quick"
    progress = not args.no_progress and os.environ.get("PAPER_FIGURES_NO_PROGRESS") != "1"
    ctx = Context(mode=mode, seeds=args.seeds, progress=progress)
    versions = library_versions()
    records: list[dict[str, Any]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    limits = _thread_limits(args.threads)
    bar = names
    interrupted: Interrupted | None = None
    current = None
    jobs = min(args.jobs, len(groups_of(names))) if args.jobs else 1
    run_id = f"{started}/{os.getpid()}"
    pool = None
    old_handlers = _install_signal_handlers()
    try:
        if jobs > 1:
            pool, current = _start_pool(jobs), "the parallel run"
            records = _run_parallel(pool, names, ctx, out, versions, run_id)
        else:
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(names, desc="figures", unit="fig", dynamic_ncols=True)
            for n in bar:
                current = n
                if progress:
                    bar.set_postfix_str(n)
                records.append(run_one(n, ctx, out, versions, run_id))
        current = None
    except KeyboardInterrupt:
        interrupted = Interrupted(signal.SIGINT)
    except Interrupted as exc:
        interrupted = exc
    finally:
        # a second signal must not interrupt the report of the figures that finished
        _ignore_signals()
        if pool is not None:
            if interrupted is not None:
                pool.terminate()  # workers get SIGTERM: they stop and remove their temporary files
            else:
                pool.close()
            pool.join()
        if limits is not None:
            limits.restore_original_limits()
    if interrupted is not None and jobs > 1:
        records = _records_of_run(out, names, run_id)
    from ._report import write_report

    total = time.perf_counter() - t0
    cpu_total = time.process_time() - c0  # the parent; with workers, add theirs (their records' CPU time)
    if jobs > 1:
        cpu_total += sum(r.get("cpu_time_s", 0.0) for r in records)
    meta = {"mode": mode, "threads": args.threads, "jobs": jobs, "seeds_requested": ctx.seeds, "started": started,
            "total_time_s": round(total, 1), "total_cpu_time_s": round(cpu_total, 1), "versions": versions,
            "selected": names,
            "finished": [r["name"] for r in records],
            "interrupted": None if interrupted is None else {"signal": interrupted.signame, "during": current},
            "command": "python -m paper_figures " + " ".join(sys.argv[1:] if argv is None else argv)}
    try:
        write_json(out / "run.json", meta)
        index = write_report(out)
    finally:
        _restore_signals(old_handlers)
    if interrupted is not None:
        print(f"paper_figures: interrupted by {interrupted.signame} during {current or 'the report'}; "
              f"{len(records)} of {len(names)} figures finished, report of those: {index}", file=sys.stderr)
        return 128 + int(interrupted.signum)
    print(f"\npaper_figures ({mode} mode, seeds {ctx.seeds}) -> {out}")
    for r in records:
        where = out / r["files"].get("png", r["files"]["json"])
        print(f"  {r['name']:22s} {r['status']:8s} {r['wall_time_s']:7.1f} s ({r['cpu_time_s']:6.1f} s CPU)  {where}")
        if r["status"] != "ok":
            print(f"  {'':22s} {r.get('reason', '')}")
    n_failed = sum(r["status"] == "failed" for r in records)
    print(f"total {total:.1f} s; {sum(r['status'] == 'ok' for r in records)} ok, {n_failed} failed, "
          f"{sum(r['status'] == 'skipped' for r in records)} skipped; report: {index}")
    return 1 if n_failed else 0
