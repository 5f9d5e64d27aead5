"""Wall time and peak memory of the default pipeline, and of a no-op rerun.

Runs `snakemake --cores all` on the given params file in a fresh workspace (a copy of the
workflow, no outputs), samples the summed resident memory of Snakemake and all its jobs every
0.2 s, then runs Snakemake again (which must find nothing to do) and reports both times, with the
jobs' time by rule (from each job's start to its end in Snakemake's log, to the second).

    python benchmarks/pipeline.py [--params params.yaml] [--workspace DIR] [--keep] [-- SNAKEMAKE ARGS]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
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


def time_by_rule(log: str) -> dict[str, dict]:
    """Jobs, summed seconds and seconds per job of each rule, from a Snakemake log: a job starts at
    the time stamp above its rule header and ends at the one above its 'Finished jobid'."""
    started, rule_of, stamp, rule = {}, {}, None, None
    total, count = collections.defaultdict(float), collections.Counter()
    for line in log.splitlines():
        if m := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line):
            stamp = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif (m := re.match(r"\s+jobid: (\d+)", line)) and rule:
            started[m.group(1)], rule_of[m.group(1)], rule = stamp, rule, None
        elif (m := re.match(r"Finished jobid: (\d+)", line)) and m.group(1) in started:
            name = rule_of[m.group(1)]
            total[name] += (stamp - started[m.group(1)]).total_seconds()
            count[name] += 1
    return {r: {"jobs": count[r], "seconds": total[r], "per_job": round(total[r] / count[r], 2)}
            for r in sorted(total, key=lambda r: -total[r])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--workspace", default=None, help="where to run (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the workspace")
    ap.add_argument("snakemake_args", nargs="*", help="more Snakemake arguments (after --)")
    args = ap.parse_args()
    ws = Path(args.workspace or tempfile.mkdtemp(prefix="rib-bench-"))
    ws.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "profiles", "src"):
        src = REPO / name
        (shutil.copytree(src, ws / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy2(src, ws / name))
    shutil.copy2(args.params, ws / "params.yaml")
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "all", *args.snakemake_args]
    first, peak, out = timed(snakemake, ws)
    jobs = next((line.split()[-1] for line in out.splitlines() if line.startswith("total")), "?")
    second, _, out2 = timed(snakemake, ws)
    report = {"workspace": str(ws), "cores": os.cpu_count(), "jobs": jobs, "first_run_s": round(first, 1),
              "peak_rss_mib": round(peak / 2**20), "noop_rerun_s": round(second, 2),
              "noop_over_first": round(second / first, 4), "noop_did_nothing": "Nothing to be done" in out2,
              "by_rule": time_by_rule(out)}
    print(json.dumps(report, indent=2))
    if not args.keep and args.workspace is None:
        shutil.rmtree(ws)


if __name__ == "__main__":
    main()
