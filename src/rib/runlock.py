"""Telling a live Snakemake run in this folder from one that was killed.

Snakemake locks a working folder with plain files under ``.snakemake/locks``. A run killed with
SIGKILL (the OOM killer, a node failure, ``kill -9``, a lost SSH session without nohup) cannot remove
them, and the next run then refuses to start until someone runs ``snakemake --unlock``, which is
unsafe to do blindly: it would also unlock the folder under a run that is still alive.

Every Snakemake process that reads the Snakefile here claims a small file under
``.snakemake/rib-runs/`` and holds a shared ``flock`` on it for as long as it lives; it names the
file in the environment (``RIB_RUN_CLAIM``), and every ``rib`` job it starts takes a shared flock
on it too. The kernel drops an flock when its holder dies, however it dies, so a claim file that can
be locked exclusively belongs to a run whose Snakemake and jobs are all gone. When no claim is
alive, Snakemake's lock files can only be left over from a killed run: they are removed, with a
message. When a claim is alive nothing is removed and the message says whose it is; Snakemake's own
lock then refuses a second run that would write the same files, and the first goes on unharmed.

A claim made on another host cannot be tested (flock is local to a host on many shared file
systems): it counts as alive until its file is deleted by hand. Where the file system has no flock
at all, nothing is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

RUNS = Path(".snakemake") / "rib-runs"
SNAKEMAKE_LOCKS = Path(".snakemake") / "locks"
ENV = "RIB_RUN_CLAIM"

_HELD: dict[str, int] = {}  # claim file (absolute) -> descriptor holding its flock for the process's life


@dataclass
class Claim:
    live: list[dict] = field(default_factory=list)  # other runs alive in this folder (or not testable)
    removed_locks: list[str] = field(default_factory=list)  # Snakemake lock files left by killed runs
    problem: str | None = None  # why nothing could be checked

    def messages(self) -> list[str]:
        lines = []
        if self.problem:
            lines.append(f"rib: {self.problem}; Snakemake's lock files are left as they are")
        if self.removed_locks:
            lines.append(f"rib: removed {len(self.removed_locks)} Snakemake lock file(s) left in .snakemake/locks by a "
                         "run that was killed; no other run is alive in this folder")
        for run in self.live:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.get("started", 0)))
            who = f"pid {run.get('pid')} on {run.get('host', '?')}, started {started}: {run.get('command', '?')}"
            if run.get("other_host"):
                lines.append(f"rib: a Snakemake run on another host claims this folder ({who}); if it is gone, delete "
                             f"{run['file']} so that its lock can be removed")
            elif not process_alive(run.get("pid")):
                lines.append(f"rib: jobs of a Snakemake run that was killed ({who}) are still running in this folder; "
                             "wait for them to end (or stop them) before running again")
            else:
                lines.append(f"rib: another Snakemake run is working in this folder ({who}); a run that would write "
                             "the same files is refused until it ends (do not --unlock while it runs)")
        return lines


def process_alive(pid) -> bool:
    """Is there a process ``pid`` on this host (whoever owns it)?"""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _guard(folder: Path):
    """Serialise the check-and-claim of concurrent starts."""
    fd = os.open(folder / ".guard", os.O_CREAT | os.O_RDONLY, 0o666)
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
    root = Path(root).absolute()
    folder = root / RUNS
    result = Claim()
    host = socket.gethostname()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _guard(folder):
            for path in sorted(folder.glob("*.run")):
                if str(path) in _HELD:
                    continue
                info = _read(path)
                if info.get("host", host) != host:
                    result.live.append({**info, "other_host": True, "file": str(path)})
                    continue
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    result.live.append(info)
                else:
                    path.unlink(missing_ok=True)  # its run and all the run's jobs are gone
                finally:
                    os.close(fd)
            if not result.live:
                for lock in sorted((root / SNAKEMAKE_LOCKS).glob("*.lock")):
                    lock.unlink(missing_ok=True)
                    result.removed_locks.append(str(lock))
            if not any(str(p).startswith(str(folder)) for p in _HELD):
                own = folder / f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.run"
                own.write_text(json.dumps({"pid": os.getpid(), "host": host, "started": time.time(),
                                           "command": shlex.join(["snakemake", *sys.argv[1:]])}))
                os.chmod(own, 0o666 & ~_umask())
                fd = os.open(own, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_SH)
                _HELD[str(own)] = fd
                os.environ[ENV] = str(own)  # the jobs of this run hold it too (join_run)
    except OSError as err:  # no flock on this file system, a folder of another user, ...
        result.live, result.removed_locks = [], []
        result.problem = f"could not check for other Snakemake runs in {folder} ({err.strerror or err})"
    return result


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def join_run() -> None:
    """In a job of a Snakemake run: hold the run's claim too, so that the run counts as alive while
    this job is, even if Snakemake itself was killed."""
    path = os.environ.get(ENV)
    if not path or path in _HELD:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return  # the claim is gone or cannot be locked: nothing to join
    _HELD[path] = fd
