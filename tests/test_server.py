"""The fork server: same results as a fresh process, exit codes and output, signals, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import rib_env


@pytest.fixture
def server(in_tiny_suite, tmp_path):
    root, _ = in_tiny_suite
    sock = str(tmp_path / "rib.sock")
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rib", "serve", "--socket", sock, "--idle-timeout", "120"],
                            cwd=root, env=rib_env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while not os.path.exists(sock) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(sock), (tmp_path / "server.log").read_text()
    yield root, sock
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _rib(root: Path, *args: str, sock: str | None = None, **kw):
    env = rib_env()
    if sock:
        env["RIB_SERVER"] = sock
    return subprocess.Popen([sys.executable, "-m", "rib", *args], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _children(server_pid_socket: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"rib serve --socket {server_pid_socket}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_a_served_command_gives_the_same_files_output_and_exit_code(server, tiny_pretrained, tmp_path):
    root, sock = server
    args = ["evaluate", str(tiny_pretrained), "--out-dir"]
    direct = _rib(root, *args, str(tmp_path / "direct"), "-q")
    served = _rib(root, *args, str(tmp_path / "served"), "-q", sock=sock)
    assert direct.wait(120) == 0 and served.wait(120) == 0
    for cell in (tmp_path / "direct").glob("*.json"):
        a, b = json.loads(cell.read_text()), json.loads((tmp_path / "served" / cell.name).read_text())
        assert a["subsets"] == b["subsets"]
    # errors: the same one-line message on the client's stderr, the same exit code
    bad = ["finetune", "mini_vit.narrow", "nosuch", "c", "--pretrained", "x", "--data", "y", "--out", "z"]
    d, s = _rib(root, *bad), _rib(root, *bad, sock=sock)
    d_err, s_err = d.communicate(timeout=60)[1], s.communicate(timeout=60)[1]
    assert d.returncode == s.returncode == 2
    assert s_err.strip() == d_err.strip() == "rib: error: params.yaml: methods.nosuch: no settings for method 'nosuch'"
    server_log = (tmp_path / "server.log").read_text()
    assert "rib server" in server_log and "no settings for method" not in server_log  # the error went to the job


def test_sigterm_reaches_the_job_and_a_killed_client_leaves_no_orphan(server, tiny_pretrained, tmp_path):
    root, sock = server
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 500  # a job that runs until it is stopped
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(params))
    long_run = ["finetune", "mini_resnet.narrow", "ft", "c", "--pretrained", str(tiny_pretrained),
                "--data", "data/rib-mini/prepared/c", "--params", str(tmp_path / "long.yaml")]
    for sig, expected in ((signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)):
        out = tmp_path / sig.name / "model.pt"
        client = _rib(root, *long_run, "--out", str(out), "-q", sock=sock)
        state = out.with_name("state.pt")
        deadline = time.time() + 60
        while not state.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert state.exists(), "the served job did not start training"
        forks = set(_children(sock))
        assert len(forks) >= 2  # the server and the job's fork
        client.send_signal(sig)
        assert client.wait(30) == expected
        deadline = time.time() + 10
        while len(set(_children(sock))) > 1 and time.time() < deadline:
            time.sleep(0.05)
        assert len(set(_children(sock))) == 1, "the job's fork outlived its client"
        mtime = state.stat().st_mtime
        time.sleep(1.0)
        assert state.stat().st_mtime == mtime and not out.exists()


def test_without_a_server_the_command_runs_by_itself(in_tiny_suite, tmp_path):
    root, _ = in_tiny_suite
    proc = _rib(root, "validate", sock=str(tmp_path / "absent.sock"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "valid (suite rib-mini" in out


def test_serve_runs_a_command_with_a_server_for_its_rib_commands(in_tiny_suite, tmp_path):
    """`rib serve -- CMD` (how `make dvc` runs `dvc repro`): CMD sees RIB_SERVER, its rib commands run
    in forks of the server, CMD's exit code is returned, and the server is gone afterwards."""
    root, _ = in_tiny_suite
    script = ("import os, subprocess, sys; print('socket', os.environ['RIB_SERVER']); "
              "subprocess.run([sys.executable, '-m', 'rib', 'validate'], check=True); sys.exit(3)")
    proc = subprocess.run([sys.executable, "-m", "rib", "serve", "--socket", str(tmp_path / "s.sock"), "--",
                           sys.executable, "-c", script], cwd=root, env=rib_env(), text=True, capture_output=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert f"socket {tmp_path / 's.sock'}" in proc.stdout
    assert "rib server on" in proc.stderr and "served: rib validate" in proc.stderr  # ran in a fork
    assert not (tmp_path / "s.sock").exists()
