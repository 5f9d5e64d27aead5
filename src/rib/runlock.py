"""Telling a live Snakemake run in this folder from one that was killed.

Snakemake locks a working folder with plain files under ``.snakemake/locks``. A run killed with
SIGKILL (the OOM killer, a node failure, ``kill -9``, a lost SSH session without nohup) cannot remove
them, and the next run then refuses to start until someone runs ``snakemake --unlock``, which is
unsafe to do blindly: it would also unlock the folder under a run that is still alive.

Every Snakemake process that reads the Snakefile here claims a small file under
``.snakemake/rib-runs/`` and holds an ``flock`` on it for as long as it lives. The kernel drops an
flock when its process dies, however it dies, so a claim file that can be locked belongs to a dead
run. When no claim is held by a live process, Snakemake's lock files can only be left over from a
killed run: they are removed, with a message. When a live run is found, nothing is removed and
the message names it; Snakemake's own lock then refuses a second run that would write the same
files, and the first run goes on unharmed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RUNS = Path(".snakemake") / "rib-runs"
SNAKEMAKE_LOCKS = Path(".snakemake") / "locks"

_HELD: dict[str, int] = {}  # claim file -> open descriptor holding its flock (for the process's life)


@dataclass
class Claim:
    live: list[dict] = field(default_factory=list)  # other runs alive in this folder
    removed_locks: list[str] = field(default_factory=list)  # Snakemake lock files left by killed runs

    def messages(self) -> list[str]:
        lines = []
        if self.removed_locks:
            lines.append(f"rib: removed {len(self.removed_locks)} Snakemake lock file(s) left in .snakemake/locks by a "
                         "run that was killed; no other run is alive in this folder")
        for run in self.live:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.get("started", 0)))
            lines.append(f"rib: another Snakemake run is working in this folder (pid {run.get('pid')}, started "
                         f"{started}: {run.get('command', '?')}); a run that would write the same files is refused "
                         "until it ends (do not --unlock while it runs)")
        return lines


@contextlib.contextmanager
def _guard(folder: Path):
    """Serialise the check-and-claim of concurrent starts."""
    fd = os.open(folder / ".guard", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def claim(root: str | os.PathLike = ".") -> Claim:
    """Claim this process as a Snakemake run in ``root``; remove Snakemake locks no live run holds."""
    root = Path(root)
    folder = root / RUNS
    folder.mkdir(parents=True, exist_ok=True)
    result = Claim()
    own = folder / f"{os.getpid()}.run"
    with _guard(folder):
        for path in sorted(folder.glob("*.run")):
            if str(path) in _HELD:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                result.live.append(_read(path))
            else:
                path.unlink(missing_ok=True)  # its process is gone
            finally:
                os.close(fd)
        if not result.live:
            for lock in sorted((root / SNAKEMAKE_LOCKS).glob("*.lock")):
                lock.unlink(missing_ok=True)
                result.removed_locks.append(str(lock))
        if str(own) not in _HELD:
            fd = os.open(own, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.set_inheritable(fd, False)  # jobs started by this run do not keep the claim alive
            os.write(fd, json.dumps({"pid": os.getpid(), "started": time.time(),
                                     "command": shlex.join(["snakemake", *sys.argv[1:]])}).encode())
            _HELD[str(own)] = fd
    return result
