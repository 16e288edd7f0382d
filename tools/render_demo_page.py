"""Render the demo's page (unitscope demo --out DIR) in headless Chromium to a PNG, and have the browser
itself say whether every image on the page loaded. Needs Debian's `chromium` (apt-get install chromium).

    python tools/render_demo_page.py unitscope-demo --png demo-page.png

Exit status 0 when every <img> loaded, 1 when some did not (they are listed), 2 on a usage error.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# appended to a copy of the page: after load, the browser lists the images that did not decode
CHECK = """<script>window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute("src"));
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken", JSON.stringify(bad));
});</script>"""


def chromium_binary(given: str | None) -> str:
    for name in ([given] if given else ["chromium", "chromium-browser", "google-chrome"]):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("render_demo_page: error: no chromium found; install it with "
                     "`apt-get update && apt-get install -y chromium` or pass --chromium PATH")


def _run(cmd, timeout):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def browser_check(chromium: str, page: Path, timeout: float) -> tuple[int, list]:
    """(number of <img>, srcs of those that did not load) as the browser saw them."""
    import html
    import json

    copy = page.with_name(f".{page.stem}.check.html")  # beside the page, so relative links resolve the same
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    try:
        r = _run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                  "--dump-dom", copy.resolve().as_uri()], timeout)
    finally:
        copy.unlink()
    n = re.search(r'data-images="(\d+)"', r.stdout)
    bad = re.search(r'data-broken="([^"]*)"', r.stdout)
    if not n or not bad:
        raise SystemExit(f"render_demo_page: error: chromium did not report on the page (exit {r.returncode}): "
                         f"{r.stderr.strip()[-500:]}")
    return int(n.group(1)), json.loads(html.unescape(bad.group(1)))


def screenshot(chromium: str, page: Path, png: Path, width: int, height: int, timeout: float) -> tuple[int, int]:
    """The page at `width` pixels wide as a PNG, cut below the last non-white row; returns its size."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.png"
        r = _run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                  "--virtual-time-budget=30000", f"--window-size={width},{height}", f"--screenshot={raw}",
                  page.resolve().as_uri()], timeout)
        if not raw.is_file():
            raise SystemExit(f"render_demo_page: error: chromium wrote no screenshot (exit {r.returncode}): "
                             f"{r.stderr.strip()[-500:]}")
        with Image.open(raw) as im:
            arr = np.asarray(im.convert("RGB"))
    rows = np.nonzero((arr < 250).any(axis=(1, 2)))[0]
    arr = arr[: rows[-1] + 16 if len(rows) else 1]
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(png)
    return arr.shape[1], arr.shape[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo", help="the demo's output folder (it holds index.html)")
    p.add_argument("--page", default="index.html", help="the page inside it to render (default: %(default)s)")
    p.add_argument("--png", default=None, help="the PNG to write (default: <demo>/page.png)")
    p.add_argument("--width", type=int, default=1280, help="window width in pixels (default: %(default)s)")
    p.add_argument("--height", type=int, default=12000,
                   help="window height in pixels; the PNG is cut below the page's end (default: %(default)s)")
    p.add_argument("--chromium", default=None, help="the browser binary (default: chromium on the PATH)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per browser run (default: %(default)s)")
    args = p.parse_args(argv)
    page = Path(args.demo) / args.page
    if not page.is_file():
        print(f"render_demo_page: error: {page} does not exist; run `unitscope demo --out {args.demo}` first",
              file=sys.stderr)
        return 2
    chromium = chromium_binary(args.chromium)
    n, bad = browser_check(chromium, page, args.timeout)
    png = Path(args.png) if args.png else Path(args.demo) / "page.png"
    w, h = screenshot(chromium, page, png, args.width, args.height, args.timeout)
    print(f"{page}: {n} images, {n - len(bad)} loaded; screenshot {w}x{h} -> {png}")
    for src in bad:
        print(f"  did not load: {src}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
