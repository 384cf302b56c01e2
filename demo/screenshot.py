"""Regenerate docs/demo.png: start the demo, upload a clip in headless chromium, screenshot the page.

    python -m demo.screenshot --bundle runs/quickstart/bundle --video demo/examples/moving_left.mp4

Drives Debian's chromium (/usr/bin/chromium) through playwright; it never downloads a browser.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from stadapter_deploy.net import NotUp, free_port, wait_until_up

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def screenshot(url: str, video: Path, out: Path, chromium: str) -> str:
    """Upload `video` on the page at `url`, wait for the labels and frames, save `out`; return the top label."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.set_input_files("#video-input input[type=file]", str(video))
            top = page.locator("#top5 [data-testid='label-output-value']")
            top.wait_for(timeout=60_000)
            page.locator("#frames img").last.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)  # let the video's first frame and the bars settle
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return top.inner_text()
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.screenshot", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="model bundle to run the demo on")
    p.add_argument("--video", default="demo/examples/moving_left.mp4", help="clip to classify")
    p.add_argument("--out", default="docs/demo.png", help="where to write the PNG (default: docs/demo.png)")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="chromium binary (default: /usr/bin/chromium)")
    args = p.parse_args(argv)
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "demo", "--bundle", args.bundle, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_until_up(url, proc)
        except NotUp as e:
            raise SystemExit(f"error: the demo is not up: {e}") from None
        top = screenshot(url, Path(args.video), Path(args.out), args.chromium)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"{args.out}: top label {top!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
