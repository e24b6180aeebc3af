"""The tiny run's report and 3-D pages, opened in a real browser (headless Chromium).

What a reader would see: each page loads without a JavaScript error, its plot elements exist
after rendering, and its screenshot is not blank (for the 3-D page: the WebGL surface itself is
drawn, not only the axes around it). Chromium is Debian's package (`apt-get install chromium`,
no browser download); where it is absent and cannot be installed the tests are skipped with a
message. The screenshots stay in the pytest temporary folder (the path is printed) as artefacts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# Console messages that mean the page is broken: an uncaught exception, a failed load, or an
# error object logged. (Chromium logs every console message at one level; its own notices about
# software WebGL and canvas read-back, and Tailwind's production hint, do not match.)
BROKEN = re.compile(r"Uncaught|Error\b|Failed to load|is not defined|ERR_")
WINDOW = (1400, 1000)


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing and we are root; else skip."""
    found = _chromium()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(cmd, capture_output=True, timeout=900, check=False,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        found = _chromium()
    if found is None:
        pytest.skip("no chromium: install Debian's package (apt-get install chromium) as root")
    return found


def _browse(chromium: str, url: str, *args: str) -> subprocess.CompletedProcess:
    """Open `url` headless, let it render (virtual time runs the page's timers at once), with
    every console message on stderr."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
           "--hide-scrollbars", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
           f"--window-size={WINDOW[0]},{WINDOW[1]}", *args, url]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def _console_errors(stderr: str) -> list[str]:
    messages = [line for line in stderr.splitlines() if ":CONSOLE" in line]
    return [m for m in messages if BROKEN.search(m.split("]", 1)[-1])]


def _open(chromium: str, url: str, shot: Path) -> str:
    """The page's DOM after rendering; its screenshot written to `shot`. Fails on any console
    error of either visit."""
    dom = _browse(chromium, url, "--dump-dom")
    picture = _browse(chromium, url, f"--screenshot={shot}")
    errors = _console_errors(dom.stderr) + _console_errors(picture.stderr)
    assert not errors, f"{url}: JavaScript console errors:\n" + "\n".join(errors)
    assert shot.exists(), f"{url}: no screenshot\n{picture.stderr[-2000:]}"
    return dom.stdout


def _pixels(shot: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(shot).convert("RGB"), dtype=float)


def _not_blank(pixels: np.ndarray) -> bool:
    """More than a plain page: the commonest colour covers < 97 % and the grey levels vary."""
    flat = pixels.reshape(-1, 3)
    _, counts = np.unique(flat, axis=0, return_counts=True)
    return counts.max() / len(flat) < 0.97 and flat.mean(axis=1).std() > 10


def _colourful(pixels: np.ndarray) -> float:
    """Share of strongly coloured pixels (viridis, the red ε-disk): the axes, text and plotly's
    grey-blue scene background are not."""
    return float(((pixels.max(axis=2) - pixels.min(axis=2)) > 60).mean())


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots of the report and its pages: {folder}")
    return folder


def test_report_opens_with_the_answer(chromium, tiny_report, shots):
    dom = _open(chromium, tiny_report.as_uri(), shots / "report.png")
    # The report's app rendered its menu, the answer first.
    categories = re.findall(r">(\d\. [^<]+)<", dom)
    assert categories and categories[0].startswith("1. The answer"), categories
    assert "headline.html" in dom
    assert _not_blank(_pixels(shots / "report.png"))


def test_headline_page_shows_the_numbers_and_the_scatter(chromium, tiny_run, shots):
    page = tiny_run / "results/analysis/tables/headline.html"
    dom = _open(chromium, page.as_uri(), shots / "headline.png")
    assert dom.count("<table") == 2 and "published table" in dom and "Spearman ρ" in dom
    assert 'src="data:image/svg+xml;base64,' in dom
    assert _not_blank(_pixels(shots / "headline.png"))


def test_every_run_of_the_3d_page_renders(chromium, tiny_run, shots):
    page = tiny_run / "results/analysis/figures/surfaces3d.html"
    runs = re.findall(r'<option value="([^"]+)">([^<]+)</option>', page.read_text())
    assert len(runs) == 4, runs
    for k, (run, label) in enumerate(runs):
        shot = shots / f"surfaces3d_{k}.png"
        dom = _open(chromium, f"{page.as_uri()}#{quote(run, safe='')}", shot)
        # plotly built the 3-D scene (a WebGL canvas), its title, panels and legend.
        assert "<canvas" in dom and 'class="main-svg"' in dom
        assert "direction seed 42" in dom and "ε-disk (ε = 0.25)" in dom
        # The run the address names is the one drawn: the plot's title.
        assert re.search(rf'class="gtitle"[^>]*>{re.escape(label)}<', dom), label
        pixels = _pixels(shot)
        assert _not_blank(pixels)
        # The surface itself is drawn (WebGL): a coloured area left of the colour bar (SVG).
        height, width, _ = pixels.shape
        assert _colourful(pixels[height // 6 :, : int(0.8 * width)]) > 0.01, f"{shot}: no surface"
