"""A PNG of a whole report page in headless Chromium, for the README (and the report's browser test).

    python docs/screenshot.py runs/quick/report/index.html docs/report_page.png

Chromium draws a window, not a page: it draws a tall one, and the blank rows below the page are cut.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from PIL import Image, ImageChops

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         "--hide-scrollbars"]


def screenshot(page: Path, out: Path, user_data: Path, width: int = 1280, height: int = 16000,
               scale: float = 1.0) -> Path:
    """Screenshot `page` at `width` CSS pixels, cut below its last non-white row; `scale` < 1 shrinks
    it and keeps 256 colours (a small file for the README)."""
    tall = out.with_name(f".{out.name}.tall.png")
    tall.unlink(missing_ok=True)  # never a stale one from a killed run
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={user_data}", f"--screenshot={tall}",
                           f"--window-size={width},{height}", "--virtual-time-budget=10000", Path(page).resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    if not tall.exists():
        raise RuntimeError(f"chromium wrote no screenshot:\n{proc.stderr[-2000:]}")
    with Image.open(tall) as im:
        rgb = im.convert("RGB")
    tall.unlink()
    box = ImageChops.difference(rgb, Image.new("RGB", rgb.size, "white")).getbbox()
    bottom = min(rgb.height, (box[3] if box else 0) + 24)
    page_image = rgb.crop((0, 0, width, bottom))
    if scale != 1:
        size = (round(width * scale), round(bottom * scale))
        page_image = page_image.resize(size, Image.LANCZOS).quantize(colors=256, dither=Image.Dither.NONE)
    page_image.save(out, optimize=True)
    return out


if __name__ == "__main__":
    import argparse
    import tempfile
    ap = argparse.ArgumentParser(description="a PNG of a whole report page")
    ap.add_argument("page", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as profile:
        print(screenshot(args.page, args.out, Path(profile), scale=args.scale))
