"""Open a report.html in headless Chromium: no script errors, every figure decoded, and a
screenshot to look at.

    python benchmarks/tools/check_report_html.py REPORT.html [--screenshot shot.png]

The page records, on its load event, how many images decoded (naturalWidth > 0) and any
script error in attributes of <body>; Chromium's --dump-dom prints the DOM after load,
so the check reads them back. Exit status 0 when the page is sound, 1 when it is not,
2 when no Chromium is installed. Debian: ``apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    return next((p for c in CANDIDATES if (p := shutil.which(c))), None)


def _chromium(binary: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="mcbench-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def check(
    html: Path,
    screenshot: Path | None = None,
    width: int = 1300,
    height: int = 3000,
    timeout: float = 120.0,
) -> dict:
    """{"ok", "images", "loaded", "broken", "errors", "screenshot"} for one page."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found (apt-get install -y chromium)")
    html = Path(html).resolve()
    url = html.as_uri()
    dom = _chromium(binary, ["--virtual-time-budget=10000", "--dump-dom", url], timeout)
    body = re.search(r"<body([^>]*)>", dom.stdout)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1))) if body else {}
    images = len(re.findall(r"<img\b", dom.stdout))
    result = {
        "images": images,
        "loaded": int(attrs.get("images-loaded", -1)),
        "broken": int(attrs.get("images-broken", -1)),
        "errors": attrs.get("js-errors", "missing: the page's check script did not run"),
        "screenshot": None,
    }
    if screenshot is not None:
        screenshot = Path(screenshot).resolve()
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        _chromium(
            binary, [f"--window-size={width},{height}", f"--screenshot={screenshot}", url], timeout
        )
        result["screenshot"] = str(screenshot) if screenshot.is_file() else None
    result["ok"] = (
        dom.returncode == 0
        and images > 0
        and result["loaded"] == images
        and result["broken"] == 0
        and result["errors"] == ""
        and (screenshot is None or result["screenshot"] is not None)
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", help="the report.html to open")
    p.add_argument("--screenshot", help="PNG to write (default: beside the page)")
    p.add_argument("--height", type=int, default=3000, help="screenshot height in pixels")
    args = p.parse_args(argv)
    shot = Path(args.screenshot) if args.screenshot else Path(args.html).with_name("screenshot.png")
    try:
        r = check(Path(args.html), shot, height=args.height)
    except FileNotFoundError as exc:
        print(f"check_report_html: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.html}: {r['loaded']}/{r['images']} figures decoded, {r['broken']} broken, "
        f"script errors: {r['errors'] or 'none'}; screenshot: {r['screenshot']}"
    )
    print("OK" if r["ok"] else "FAILED")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
