"""Check the rendered documentation: no broken image, no broken local link, every gallery figure present.

Usage (after the build)::

    python docs/check_rendered.py [BUILD_DIR]        # default docs/_build/html
    python docs/check_rendered.py --screenshots OUT  # also full-page PNGs (headless Chromium)

It parses every HTML page of the build (the standard library's ``html.parser``; no browser) and
fails (exit status 1, one line per problem) when

* an ``<img src>`` (or ``srcset`` entry) that is not a ``data:``/remote URL names no file of the
  build, or names an empty file, or a ``.png`` that is not a PNG;
* a local ``<a href>``, ``<link href>`` or ``<script src>`` names no file of the build, or its
  ``#fragment`` names no ``id`` (or ``name``) in the target page;
* a gallery example (``docs/examples/plot_*.py``) has no page, shows no figure, or does not
  show every figure file sphinx-gallery wrote for it (``auto_examples/images/sphx_glr_NAME_*.png``),
  or the gallery shows sphinx-gallery's thumbnail of a broken example.

Remote links (``http:``, ``https:``, ``mailto:``) are not followed: the build machines are
offline. The screenshot-level look is a human's (or a headless browser's) job; this script checks
what such a look would catch mechanically: missing images and figures, dead links.
"""

from __future__ import annotations

import os
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

DOCS = Path(__file__).resolve().parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """The images, links and anchors of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.links: list[tuple[str, str]] = []   # (tag, url)
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v for k, v in attrs if v is not None}
        for key in ("id", "name") if tag == "a" else ("id",):
            if key in a:
                self.ids.add(a[key])
        if tag == "img":
            if "src" in a:
                self.images.append(a["src"])
            for part in a.get("srcset", "").split(","):
                if part.strip():
                    self.images.append(part.strip().split()[0])
        elif tag in ("a", "link") and "href" in a:
            self.links.append((tag, a["href"]))
        elif tag == "script" and "src" in a:
            self.links.append((tag, a["src"]))

    handle_startendtag = handle_starttag


def _is_remote(url: str) -> bool:
    scheme = urlsplit(url).scheme
    return scheme not in ("", "file")


def _target(page: Path, url: str) -> tuple[Path, str]:
    """The file a local URL of ``page`` names (relative to the page) and its fragment."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if not path:
        return page, parts.fragment
    target = (page.parent / path).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target, parts.fragment


def check(build: Path, examples: Path | None = DOCS / "examples") -> list[str]:
    """Every problem found in the build at ``build``, as readable lines (empty: all good)."""
    build = build.resolve()
    # the pages; not the theme's templates copied into _static/ (Jinja sources, not pages)
    pages = sorted(p for p in build.rglob("*.html") if "_static" not in p.relative_to(build).parts)
    if not pages:
        return [f"{build}: no HTML page (build the docs first)"]
    parsed: dict[Path, _Page] = {}
    for page in pages:
        p = _Page()
        p.feed(page.read_text(encoding="utf-8", errors="replace"))
        parsed[page.resolve()] = p

    problems: list[str] = []
    n_images = n_links = 0
    for page, p in parsed.items():
        rel = page.relative_to(build)
        for src in dict.fromkeys(p.images):      # src and srcset often name the same file
            if src.startswith("data:") or _is_remote(src):
                continue
            n_images += 1
            target, _ = _target(page, src)
            if not target.is_file():
                problems.append(f"{rel}: broken image {src!r} (no file {target})")
            elif target.stat().st_size == 0:
                problems.append(f"{rel}: empty image file {src!r}")
            elif target.suffix.lower() == ".png" and target.read_bytes()[:8] != PNG_MAGIC:
                problems.append(f"{rel}: image {src!r} is not a PNG")
            if "broken_example" in src:
                problems.append(f"{rel}: sphinx-gallery shows a broken example ({src!r})")
        for tag, url in dict.fromkeys(p.links):
            if _is_remote(url) or url.startswith(("mailto:", "javascript:")):
                continue
            n_links += 1
            target, frag = _target(page, url)
            if not target.exists():
                problems.append(f"{rel}: broken <{tag}> link {url!r} (no file {target})")
                continue
            if frag and target.suffix == ".html":
                tp = parsed.get(target)
                if tp is not None and unquote(frag) not in tp.ids:
                    problems.append(f"{rel}: link {url!r}: no anchor #{frag} in {target.relative_to(build)}")

    n_figures = 0
    scripts = sorted(examples.glob("plot_*.py")) if examples is not None and examples.is_dir() else []
    for script in scripts:
        name = script.stem
        page = (build / "auto_examples" / f"{name}.html").resolve()
        if page not in parsed:
            problems.append(f"gallery: {name}: no page auto_examples/{name}.html")
            continue
        shown = {Path(_target(page, s)[0]).name for s in parsed[page].images
                 if not _is_remote(s) and Path(urlsplit(s).path).name.startswith(f"sphx_glr_{name}_")}
        shown.discard(f"sphx_glr_{name}_thumb.png")
        written = {f.name for f in (DOCS / "auto_examples" / "images").glob(f"sphx_glr_{name}_[0-9]*.png")}
        if not shown:
            problems.append(f"gallery: {name}: its page shows no figure (was the example run? CURVLAB_DOCS_GALLERY=0?)")
        missing = sorted(written - shown)
        if missing:
            problems.append(f"gallery: {name}: figures written but not shown: {missing}")
        n_figures += len(shown)
    if examples is not None and not scripts:
        problems.append(f"gallery: no example script in {examples}")
    print(f"check_rendered: {len(parsed)} pages, {n_images} local images, {n_links} local links, "
          f"{len(scripts)} gallery examples with {n_figures} figures: "
          f"{'OK' if not problems else f'{len(problems)} problem(s)'}")
    return problems


#: the pages ``--screenshots`` photographs (relative to the build), besides every gallery page
SCREENSHOT_PAGES = ("index.html", "install.html", "guides/gpu.html", "reference/api.html",
                    "reference/support_matrix.html", "reference/policies.html", "auto_examples/index.html")


def screenshots(build: Path, out: Path, width: int = 1280, height: int = 4000) -> list[Path]:
    """Full-page PNGs of the main pages by a headless Chromium (none installed: an empty list).

    Not part of CI: a person (or a model that reads images) looks at them.
    """
    import shutil
    import subprocess

    exe = next((shutil.which(n) for n in ("chromium-headless-shell", "chromium", "chromium-browser",
                                            "google-chrome") if shutil.which(n)), None)
    if exe is None:
        print("check_rendered: no headless Chromium found (apt-get install chromium-headless-shell)",
              file=sys.stderr)
        return []
    out.mkdir(parents=True, exist_ok=True)
    pages = list(SCREENSHOT_PAGES) + [f"auto_examples/{p.name}" for p in sorted((build / "auto_examples").glob("plot_*.html"))]
    done = []
    for rel in pages:
        page = (build / rel).resolve()
        if not page.is_file():
            continue
        png = out / (rel.replace("/", "_").removesuffix(".html") + ".png")
        subprocess.run([exe, "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}",
                        f"--screenshot={png}", page.as_uri()], capture_output=True, timeout=120, check=False)
        if png.is_file() and png.stat().st_size > 0:
            done.append(png)
        else:
            print(f"check_rendered: no screenshot of {rel}", file=sys.stderr)
    print(f"check_rendered: {len(done)} screenshots in {out}")
    return done


def main(argv: list[str]) -> int:
    args = list(argv[1:])
    shots = None
    if "--screenshots" in args:
        i = args.index("--screenshots")
        if i + 1 >= len(args):
            print("usage: check_rendered.py [BUILD_DIR] [--screenshots OUT_DIR]", file=sys.stderr)
            return 2
        shots = Path(args[i + 1])
        del args[i:i + 2]
    build = Path(args[0]) if args else DOCS / "_build" / "html"
    problems = check(build)
    for line in problems:
        print(line, file=sys.stderr)
    if shots is not None:
        screenshots(build.resolve(), shots.resolve())
    return 1 if problems else 0


if __name__ == "__main__":
    os.chdir(DOCS.parent)
    sys.exit(main(sys.argv))
