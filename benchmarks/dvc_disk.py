"""Disk use of a dataset before and after `dvc repro`: DVC's cache as copies or as links.

For each cache.type, a fresh workspace of the default params runs the stages that generate and
prepare one dataset (default: rib-mini's ImageNet-C analogue, `generate@c prepare@c`) and reports
the bytes on disk of the workspace's copy (data/), of DVC's cache (.dvc/cache) and of both together,
counting a file with several hard links once (what `du` reports for the two folders together).

    python benchmarks/dvc_disk.py                 # copy against the project's setting
    python benchmarks/dvc_disk.py --dataset sketch
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from rib.status import disk_usage  # noqa: E402
from tests.faults import make_workspace  # noqa: E402


def measure(cache_type: str, dataset: str, root: Path) -> dict:
    ws = make_workspace(root / cache_type.split(",")[0], REPO / "params.yaml", dvc=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(dvc + ["config", "cache.type", cache_type], cwd=ws, env=env, check=True)
    subprocess.run(dvc + ["repro", "-q", f"generate@{dataset}", f"prepare@{dataset}"], cwd=ws, env=env, check=True)
    data, cache = ws / "data", ws / ".dvc" / "cache"
    return {"cache.type": cache_type, "data": disk_usage(data), "dvc cache": disk_usage(cache),
            "together": disk_usage(data, cache), "files": sum(len(f) for _, _, f in os.walk(data))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="c")
    ap.add_argument("--types", nargs="+", default=["copy", "reflink,hardlink,symlink,copy", "hardlink,symlink,copy"])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rib-dvc-disk-"))
    try:
        rows = [measure(t, args.dataset, root) for t in args.types]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"dataset {args.dataset} (raw + prepared), {rows[0]['files']} files; MB on disk")
    print("| cache.type | data/ alone | .dvc/cache alone | both together |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['cache.type']} | {r['data'] / 1e6:.1f} | {r['dvc cache'] / 1e6:.1f} | {r['together'] / 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
