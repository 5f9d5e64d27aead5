"""Wall time and peak memory of the default pipeline, and of a no-op rerun.

Runs `snakemake --cores all` on the given params file in a fresh workspace (a copy of the
workflow, no outputs), samples the summed resident memory of Snakemake and all its jobs every
0.2 s, then runs Snakemake again (which must find nothing to do) and reports both times.

    python benchmarks/pipeline.py [--params params.yaml] [--workspace DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def timed(cmd: list[str], cwd: Path) -> tuple[float, int, str]:
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = proc.communicate()[0]
    done.set()
    t.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return time.time() - start, peak[0], out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--workspace", default=None, help="where to run (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the workspace")
    args = ap.parse_args()
    ws = Path(args.workspace or tempfile.mkdtemp(prefix="rib-bench-"))
    ws.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "profiles", "src"):
        src = REPO / name
        (shutil.copytree(src, ws / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy2(src, ws / name))
    shutil.copy2(args.params, ws / "params.yaml")
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "all"]
    first, peak, out = timed(snakemake, ws)
    jobs = next((line.split()[-1] for line in out.splitlines() if line.startswith("total")), "?")
    second, _, out2 = timed(snakemake, ws)
    report = {"workspace": str(ws), "cores": os.cpu_count(), "jobs": jobs, "first_run_s": round(first, 1),
              "peak_rss_mib": round(peak / 2**20), "noop_rerun_s": round(second, 2),
              "noop_over_first": round(second / first, 4), "noop_did_nothing": "Nothing to be done" in out2}
    print(json.dumps(report, indent=2))
    if not args.keep and args.workspace is None:
        shutil.rmtree(ws)


if __name__ == "__main__":
    main()
