"""Fault injection on the real pipeline: kill it at random points, damage its outputs, fill its disk.

Used by tests/test_faults.py (a few seeds, in the test suite) and benchmarks/faults.py (the full
campaign, which prints the table of faults, counts and outcomes).

A kill is the whole run dying at once, as on a crashed node or an OOM kill of the session: every
process working in the workspace (Snakemake or DVC, job shells, ``rib`` clients, the fork server and
its forks) gets SIGKILL, so nothing can clean up after itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.conftest import REPO, TINY_PARAMS, rib_env

WORKFLOW_FILES = ["Snakefile", "dvc.yaml", "workflow", "profiles", "src"]

# The step of the pipeline each kill aims at, and the rib commands that make it up.
# (Snakemake's jobs run `python -m rib ...`, DVC's stages the `rib` script.)
STAGES = {
    "prepare": r"(-m |/)rib (data (generate|prepare)|cache build)\b",
    "finetune": r"(-m |/)rib (finetune|pretrain)\b",
    "evaluate": r"(-m |/)rib (evaluate|combine)\b",
    "aggregate": r"(-m |/)rib (aggregate|figures)\b",
}
# Fine-tuning a tiny model takes a fraction of a second; to land inside training rather than in its
# start-up, a kill aimed at it waits until the job's resume state exists (an epoch is done).
TRIGGERS = {"finetune": ("checkpoints/*/*/*/*/state.pt", "models/*/*/state.pt")}
REPORT_TABLES = ("cells.csv", "metrics.csv", "summary.csv", "ri_matrix.csv", "effective_robustness_cells.csv")


def fault_params() -> dict:
    """The tiny configuration cut to the methods that exercise every kind of job: training (FT, LP),
    training from another checkpoint (LP-FT from LP) and weight-space combination (WiSE-FT)."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    keep = ["ft", "lp", "lp_ft", "wise_ft"]
    params["grid"]["methods"] = keep
    params["methods"] = {k: v for k, v in params["methods"].items() if k in keep}
    params["train"]["epochs"] = 3
    return params


def make_workspace(path: Path, params: dict | Path | None = None, dvc: bool = False) -> Path:
    """A fresh copy of the workflow in ``path`` with ``params`` (a dict, or a params file to copy;
    default: :func:`fault_params`) as its params.yaml; with ``dvc``, its dvc.yaml and a DVC repository."""
    path.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, path / name)
    if isinstance(params, Path):
        shutil.copy2(params, path / "params.yaml")
    else:
        (path / "params.yaml").write_text(yaml.safe_dump(params or fault_params(), sort_keys=False))
    if dvc:
        run([sys.executable, "-m", "rib", "dvc"], path)
        run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], path)
    return path


def snakemake_cmd() -> list[str]:
    return [sys.executable, "-m", "snakemake", "--cores", "2"]


def dvc_cmd() -> list[str]:
    return [sys.executable, "-m", "dvc", "repro"]


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=rib_env(), text=True, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def processes_in(ws: Path) -> dict[int, str]:
    """Every process whose working folder is inside ``ws``: pid -> command line."""
    ws = os.path.realpath(ws)
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cwd == ws or cwd.startswith(ws + os.sep):
            found[int(entry)] = cmdline
    return found


def kill_all(ws: Path) -> list[str]:
    """SIGKILL everything working in ``ws`` until nothing is left; the command lines killed."""
    killed = []
    for _ in range(50):
        procs = processes_in(ws)
        if not procs:
            break
        for pid, cmdline in procs.items():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(cmdline)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return killed


@contextlib.contextmanager
def paused(ws: Path):
    """SIGSTOP everything working in ``ws`` for the duration, then SIGCONT it: a run that is
    certainly alive (however slowly another command starts) and none the worse afterwards."""
    stopped = list(processes_in(ws))
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield stopped
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@dataclass
class Kill:
    stage: str
    seed: int
    delay: float = 0.0
    hit: bool = False  # the targeted step was still running when the kill came
    finished_first: bool = False  # the run ended before the step was reached
    killed: list[str] = field(default_factory=list)


def kill_during(ws: Path, cmd: list[str], stage: str, rng: random.Random, max_delay: float,
                timeout: float = 600) -> Kill:
    """Start ``cmd`` in ``ws``; when a job of ``stage`` runs, wait a random time and kill the whole run."""
    pattern = re.compile(STAGES[stage])
    record = Kill(stage, seed=-1)
    with open(ws / f"run-{int(time.time() * 1000)}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ws, env=rib_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + timeout
        target = None
        while time.time() < deadline and proc.poll() is None:
            target = next((pid for pid, c in processes_in(ws).items() if pattern.search(c)), None)
            if target:
                break
            time.sleep(0.02)
        if target is None:
            proc.wait(timeout=max(1, deadline - time.time()))
            record.finished_first = True
            return record
        before = {p for pattern in TRIGGERS.get(stage, ()) for p in ws.glob(pattern)}
        while stage in TRIGGERS and target in processes_in(ws):
            if {p for pattern in TRIGGERS[stage] for p in ws.glob(pattern)} - before:
                break
            time.sleep(0.01)
        record.delay = rng.uniform(0, max_delay)
        time.sleep(record.delay)
        record.hit = target in processes_in(ws)
        record.killed = kill_all(ws)
        proc.wait(timeout=30)
    return record


def file_tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root: size, mtime and content digest. Snakemake's own run log and the file
    cache it writes after a dry run (.snakemake/log, .snakemake/iocache) are its business."""
    own = (".snakemake/log/", ".snakemake/iocache/")
    return {rel: (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()
            and not (rel := str(p.relative_to(root))).startswith(own)}


def outputs_left_are_valid(ws: Path) -> list[str]:
    """What a killed run left that would pass as finished but is not: every output present must be
    complete (record digests, checkpoint digests, cache shard digests, prepared-data manifests)."""
    from rib.data.manifest import load_prepared
    from rib.errors import RibError
    from rib.verify import sweep

    problems = [f.reason for f in sweep(ws, full=True)]
    for info in sorted((ws / "data").rglob("prepared/*/info.json")):
        try:
            load_prepared(info.parent)
        except RibError as err:
            problems.append(str(err))
    return problems


def _numbers(record: dict):
    """A result file's numbers: a cell's subsets, or the accuracies of each pretraining snapshot."""
    if "subsets" in record:
        return record["subsets"]
    return [(snap["epoch"], snap["top1"]) for snap in record["snapshots"]]


def final_results(ws: Path) -> dict:
    """What a run computed: every cell's numbers, the dataset distances, the fine-tuned and pretrained
    weights (a digest of each tensor) and the report tables."""
    import torch

    cells = {str(p.relative_to(ws)): _numbers(json.loads(p.read_text()))
             for p in sorted((ws / "results").rglob("*.json"))}
    distances = {str(p.relative_to(ws)): json.loads(p.read_text())["otdd"]
                 for p in sorted((ws / "distances").rglob("*.json"))}
    weights = {}
    for path in sorted([*(ws / "checkpoints").rglob("model.pt"), *(ws / "models").rglob("pretrained.pt"),
                        *(ws / "models").rglob("epoch-*.pt")]):
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        weights[str(path.relative_to(ws))] = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
                                              for k, v in state.items()}
    tables = {name: (ws / "reports" / "rib-mini" / name).read_text() for name in REPORT_TABLES}
    return {"cells": cells, "distances": distances, "weights": weights, "tables": tables}


def fill_disk(disk: Path, leave: int = 0) -> Path:
    """Fill the file system of ``disk`` with one file, then give ``leave`` bytes back."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:  # ENOSPC: full
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


# Damage to outputs: each function changes one file in place the way a fault would.

def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_tensor_byte(path: Path) -> None:
    """Flip one bit inside the largest tensor of a torch checkpoint: same size, still a valid zip."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    start = info.header_offset
    name_len = int.from_bytes(data[start + 26:start + 28], "little")
    extra_len = int.from_bytes(data[start + 28:start + 30], "little")
    data[start + 30 + name_len + extra_len + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def alter_number(path: Path) -> None:
    """Change a result's accuracy by hand: still valid JSON."""
    text = path.read_text()
    path.write_text(re.sub(r'"top1": [0-9.e-]+', '"top1": 0.999', text, count=1))
