"""Open the `snakemake --report` HTML in headless Chromium and screenshot its figures.

Runs the tiny configuration (or uses an existing workspace), builds the self-contained report,
opens it in Debian's Chromium through Playwright, clicks into the Figures category and each
figure, and saves a screenshot of each view. A measurement script, not a test: it needs
`apt-get install chromium` and `pip install playwright` (no browser download: the system
Chromium is used).

    .venv/bin/python benchmarks/report_screenshot.py --out screenshots/
    .venv/bin/python benchmarks/report_screenshot.py --workspace /path/to/run --out screenshots/
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def tiny_workspace() -> Path:
    ws = Path(tempfile.mkdtemp(prefix="rib-report-"))
    for name in ("Snakefile", "workflow", "profiles", "src"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, ws / name)
    shutil.copy2(REPO / "tests" / "tiny-params.yaml", ws / "params.yaml")
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "-q"], cwd=ws, check=True)
    return ws


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=None, help="a finished run (default: run the tiny grid)")
    ap.add_argument("--out", type=Path, default=Path("screenshots"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    ws = args.workspace or tiny_workspace()
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "snakemake", "--report", "report.html", "-q"], cwd=ws, check=True)
    report = ws / "report.html"
    args.out.mkdir(parents=True, exist_ok=True)
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(report.as_uri())
        page.wait_for_timeout(1500)
        page.screenshot(path=str(args.out / "report-home.png"))
        shots.append("report-home.png")
        def open_png_figures():
            page.goto(report.as_uri())
            page.wait_for_timeout(1000)
            page.get_by_text("Figures", exact=True).first.click()
            page.wait_for_timeout(500)
            page.get_by_text("PNG", exact=True).first.click()
            page.wait_for_timeout(800)

        open_png_figures()
        page.screenshot(path=str(args.out / "report-figures.png"))
        shots.append("report-figures.png")
        for name in ("radar.png", "ri_heatmap.png", "wise_curve.png", "otdd_scatter.png"):
            open_png_figures()
            row = page.locator("tr", has_text=f"figures/{name}")
            row.locator('a[iconname="eye"]').first.click()  # the report's "view" button
            page.wait_for_timeout(1500)
            target = f"report-{Path(name).stem}.png"
            page.screenshot(path=str(args.out / target))
            shots.append(target)
        browser.close()
    print(f"report: {report} ({report.stat().st_size / 1e6:.1f} MB); {len(shots)} screenshots in {args.out} "
          f"({time.time() - t0:.1f} s): {', '.join(shots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
