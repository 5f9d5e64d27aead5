"""A fork server for the many short ``rib`` jobs of a local pipeline run.

Starting Python and importing torch, torchvision and timm costs about 3.5 s per process, more than
many rib-mini jobs compute. ``rib serve`` imports them once; each ``rib`` command whose environment
names the server (``RIB_SERVER``, a Unix socket) is then run in a fork of it:

* the client sends its arguments, working directory, environment and its stdin/stdout/stderr file
  descriptors (so output goes wherever the job redirected it, e.g. its Snakemake log);
* the forked child restores a fresh process's state (torch's default seed, an unseeded ``random``)
  and runs the command exactly as ``python -m rib`` would; the client exits with its exit code;
* SIGTERM, SIGINT and SIGHUP sent to the client are forwarded to the child (a preempted job still
  checkpoints), and a child whose client disappears (SIGKILL) kills itself, so no orphan keeps
  writing outputs.

The client falls back to running the command itself when no server answers, when the server's
code is older than the files on disk, inside a SLURM job (the work must stay in the job's
allocation), or with ``RIB_SERVER`` unset. Snakemake starts one server per local run (see
workflow/rules/common.smk); DVC and direct calls run as ordinary processes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from .runlock import process_alive

log = logging.getLogger("rib.server")

ENV = "RIB_SERVER"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_HEADER = struct.Struct("!I")


def _package_mtime() -> float:
    root = Path(__file__).parent
    return max(p.stat().st_mtime for p in root.rglob("*.py"))


def _send(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    blob = json.dumps(obj).encode()
    data = _HEADER.pack(len(blob)) + blob
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("connection closed")
        out += chunk
    return out


def _recv(sock: socket.socket, with_fds: int = 0) -> tuple[dict, list[int]]:
    fds: list[int] = []
    if with_fds:
        data, fds, _, _ = socket.recv_fds(sock, _HEADER.size, with_fds)
        if len(data) < _HEADER.size:
            data += _recv_exact(sock, _HEADER.size - len(data))
    else:
        data = _recv_exact(sock, _HEADER.size)
    (size,) = _HEADER.unpack(data)
    return json.loads(_recv_exact(sock, size)), fds


# ------------------------------------------------------------------------------------------------
# Client
# ------------------------------------------------------------------------------------------------
def run_via_server(argv: list[str]) -> int | None:
    """Run ``rib argv`` in the server; None when it cannot (the caller then runs it itself)."""
    path = os.environ.get(ENV)
    if not path or os.environ.get("SLURM_JOB_ID") or (argv and argv[0] == "serve"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        _send(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}, [0, 1, 2])
        reply, _ = _recv(sock)
    except OSError:
        sock.close()
        return None
    if "exit" in reply:
        sock.close()
        return int(reply["exit"])
    if reply.get("status") != "started":
        sock.close()
        return None
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        try:
            _send(sock, {"signal": int(signum)})
        except OSError:
            pass

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        while True:
            try:
                message, _ = _recv(sock)
            except InterruptedError:
                continue
            except (ConnectionError, OSError):
                # The child died without reporting (killed by a forwarded signal).
                return 128 + int(received[-1]) if received else 1
            if "exit" in message:
                if "usage" in message and message["exit"] == 0:  # for Snakemake's benchmark of the job (rib.usage)
                    print(usage_line(message["usage"]), file=sys.stderr, flush=True)
                return int(message["exit"])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()


USAGE_PREFIX = "rib: ran in a fork of the rib server:"


def usage_line(usage: dict) -> str:
    """The line a client writes to its stderr (a job's log): the fork's CPU time and peak memory,
    which Snakemake's benchmark of the client process cannot see (rib.usage reads it back)."""
    return f"{USAGE_PREFIX} CPU {usage['cpu_s']:.2f} s, peak RSS {usage['max_rss_mib']:.1f} MiB"


def _own_usage() -> dict:
    """This process's CPU time (user + system, since the fork) and peak resident memory (which, as a
    fresh process's would, includes the imported libraries the fork shares with the server)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "max_rss_mib": ru.ru_maxrss / 1024.0}


# ------------------------------------------------------------------------------------------------
# Server
# ------------------------------------------------------------------------------------------------
def _child(conn: socket.socket, request: dict, fds: list[int], initial_seed: int) -> None:
    """In the forked child: become the requested command, report its exit code, exit."""
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    sys.stdin = os.fdopen(0, "r", closefd=False)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.pop(ENV, None)
    random.seed()
    import torch

    torch.manual_seed(initial_seed)

    def watch():  # forward signals; die with the client
        while True:
            try:
                message, _ = _recv(conn)
            except (ConnectionError, OSError):
                os.kill(os.getpid(), signal.SIGKILL)
                return
            if "signal" in message:
                os.kill(os.getpid(), int(message["signal"]))

    threading.Thread(target=watch, daemon=True).start()
    from .cli import main

    code = 1
    try:
        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        try:
            _send(conn, {"exit": int(code), "usage": _own_usage()})
        except OSError:
            pass
        os._exit(int(code) & 0xFF)


def command(argv: list[str], path: str | None, idle_timeout: float = 300.0, parent: int | None = None) -> int:
    """``rib serve``: run ``argv`` (after ``--``) with a server for its rib commands, or serve on the
    socket ``path`` until idle."""
    from .errors import RibError

    argv = argv[1:] if argv[:1] == ["--"] else argv
    if argv:
        return serve_while(argv, path)
    if not path:
        raise RibError("rib serve: --socket SOCKET is required (or give a command to run: rib serve -- CMD ...)")
    return serve(path, idle_timeout=idle_timeout, parent=parent)


def serve_while(command: list[str], path: str | None = None, wait: float = 60.0) -> int:
    """Run ``command`` (``dvc repro``, a script) with a server for the ``rib`` commands it starts:
    a ``rib serve`` in its own process for as long as the command runs, named in the command's
    environment (``RIB_SERVER``). Its exit code is the command's; without a server (it did not come
    up within ``wait`` seconds) the rib commands run as ordinary processes."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rib-serve-") as tmp:
        path = os.path.abspath(path) if path else os.path.join(tmp, "rib.sock")
        server = subprocess.Popen([sys.executable, "-m", "rib", "serve", "--socket", path, "--parent",
                                   str(os.getpid())], stdin=subprocess.DEVNULL)
        try:
            deadline = time.time() + wait
            while not os.path.exists(path) and server.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            env = dict(os.environ)
            if os.path.exists(path):
                env[ENV] = path
            else:
                log.warning("rib server did not start; the rib commands run as ordinary processes")
            try:
                return subprocess.call(command, env=env)
            except FileNotFoundError:
                log.error("%s: command not found", command[0])
                return 127
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def serve(path: str, idle_timeout: float = 300.0, parent: int | None = None) -> int:
    """Listen on ``path`` until idle for ``idle_timeout`` seconds with no child running, or until
    the ``parent`` process is gone."""
    # Warm up: everything a job imports.
    import timm  # noqa: F401
    import torch

    from . import cli, config, distance, evaluate, train  # noqa: F401  (distance: POT, 1.3 s to import)
    from .data import loading, manifest  # noqa: F401
    from .models import network  # noqa: F401

    config.schema()  # parsed once here, not in each job (with jsonschema's import: 0.09 s a job)
    config._validator_class()

    initial_seed = torch.initial_seed()
    loaded_mtime = _package_mtime()
    Path(path).unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(1.0)
    children: set[int] = set()
    last = time.time()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    log.info("rib server on %s (pid %d)", path, os.getpid())
    try:
        while not stop:
            for pid in list(children):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    children.discard(pid)
                    last = time.time()
            if parent and not process_alive(parent) and not children:
                break
            if not children and time.time() - last > idle_timeout:
                break
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                request, fds = _recv(conn, with_fds=3)
            except (ConnectionError, OSError, ValueError):
                conn.close()
                continue
            if _package_mtime() > loaded_mtime:  # the code changed: let the client run it itself
                _send(conn, {"status": "stale"})
                conn.close()
                for fd in fds:
                    os.close(fd)
                break
            last = time.time()
            try:  # before the fork: afterwards only the child writes to this connection
                _send(conn, {"status": "started"})
            except OSError:
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                _child(conn, request, fds, initial_seed)
            children.add(pid)
            log.info("served: rib %s (pid %d)", " ".join(map(str, request.get("argv", [])))[:300], pid)
            conn.close()
            for fd in fds:
                os.close(fd)
    finally:
        listener.close()
        Path(path).unlink(missing_ok=True)
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return 0
