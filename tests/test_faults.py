"""Faults and bad input across the whole pipeline: nothing finished is lost, nothing unfinished or
damaged is taken as done, every refusal is one line naming the file or key.

The kill tests run the real Snakemake on a small configuration (tests/faults.py) and SIGKILL the
whole run at random points of each step (a killed `dvc repro` is in tests/test_pipeline.py);
benchmarks/faults.py runs the same campaign over more seeds, DVC included, and prints the table
of outcomes.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import faults
from tests.conftest import rib_env, skip_or_fail

pytestmark = pytest.mark.e2e

PRETRAINED = "models/rib-mini/mini_vit.narrow/pretrained.pt"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """An unbroken Snakemake run of the fault configuration: the numbers every recovery must give."""
    ws = faults.make_workspace(tmp_path_factory.mktemp("faults") / "reference")
    faults.run(faults.snakemake_cmd(), ws)
    return ws, faults.final_results(ws)


def error_line(stderr: str) -> str:
    """The one error line a refused command prints (log lines before it are progress, not the error)."""
    lines = [line for line in stderr.strip().splitlines() if line.startswith("rib: error: ")]
    assert len(lines) == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    return lines[0]


def _rerun_until_done(ws: Path, cmd: list[str], attempts: int) -> list[subprocess.CompletedProcess]:
    runs = []
    for _ in range(attempts):
        runs.append(faults.run(cmd, ws, check=False))
        if runs[-1].returncode == 0:
            return runs
    raise AssertionError(f"{' '.join(cmd)} still failing after {attempts} runs:\n{runs[-1].stderr[-3000:]}")


KILLED_STAGES = {"prepare": 0.1, "finetune": 0.1, "evaluate": 0.5, "aggregate": 0.8}  # the first kill's max delay


# A run from an empty workspace killed in every step (seed 11). More seeds are benchmarks/faults.py's
# campaign (4 Snakemake and 2 DVC kill chains by default): each costs a rerun of the grid, more
# than the test suite's 15 minutes allow.
def test_a_run_killed_in_every_step_completes_with_the_same_numbers(reference, tmp_path):
    _, expected = reference
    seed, stages = 11, tuple(KILLED_STAGES)
    ws = faults.make_workspace(tmp_path / "killed")
    rng = random.Random(seed)
    for stage in stages:
        max_delay = KILLED_STAGES[stage]
        for _ in range(4):  # a kill that came after the targeted job ended is tried again, sooner
            kill = faults.kill_during(ws, faults.snakemake_cmd(), stage, rng, max_delay)
            assert not kill.finished_first, f"the run ended before reaching {stage}"
            assert kill.killed and not faults.processes_in(ws)
            # whatever the killed run left under an output's name is complete and valid
            assert faults.outputs_left_are_valid(ws) == []
            if kill.hit:
                break
            max_delay /= 4
        assert kill.hit, f"no kill landed while a {stage} job ran"
        assert list((ws / ".snakemake" / "locks").glob("*.lock"))  # the killed run's lock is still there ...
    done = faults.run(faults.snakemake_cmd(), ws)  # ... and the same command still just runs
    assert "left in .snakemake/locks by a run that was killed" in done.stderr
    assert faults.final_results(ws) == expected
    assert not list(ws.rglob("*.partial"))  # temporary files of killed writers were cleaned up


def test_damaged_outputs_are_detected_moved_aside_and_rebuilt(reference, tmp_path):
    ref_ws, expected = reference
    ws = tmp_path / "damaged"
    shutil.copytree(ref_ws, ws, symlinks=True)
    ckpt = ws / "checkpoints/rib-mini/mini_vit.narrow"
    damage = {
        ckpt / "ft/sketch/model.pt": faults.truncate,  # structure: caught before the DAG is built
        ckpt / "lp/c/model.pt": faults.flip_tensor_byte,  # digest: caught when a job loads it
        ws / "results/rib-mini/mini_vit.narrow/lp/sketch/source.json": faults.alter_number,  # record digest
        ws / "results/rib-mini/mini_vit.narrow/ft/c/c.json": faults.truncate,
        next((ws / "cache/rib-mini").glob("*/sketch")) / "shard-00000.npy": faults.flip_last_byte,  # shard digest
    }
    for path, how in damage.items():
        how(path)
    check = subprocess.run([sys.executable, "-m", "rib", "verify", "--full"], cwd=ws, env=rib_env(), text=True,
                           capture_output=True)
    assert check.returncode == 1
    named = [line for line in check.stdout.splitlines() if line.startswith("damaged: ")]
    assert len(named) == len(damage)
    # A killed run's lock too. A dry run changes no file (Snakemake's own logs aside): it names what
    # it finds damaged and leaves it in place, and leaves the lock (--lint: tests/test_pipeline.py).
    locks = ws / ".snakemake" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    (locks / "0.input.lock").write_text(f"{ws / 'params.yaml'}\n")
    before = faults.file_tree(ws)
    dry = faults.run([sys.executable, "-m", "snakemake", "-n"], ws)
    assert "rib: damaged output: checkpoints/rib-mini/mini_vit.narrow/ft/sketch/model.pt" in dry.stderr
    assert "(left in place: no job runs)" in dry.stderr and "moved aside" not in dry.stdout + dry.stderr
    assert faults.file_tree(ws) == before
    runs = _rerun_until_done(ws, faults.snakemake_cmd(), attempts=4)
    said = "".join(r.stdout + r.stderr for r in runs)
    assert "removed 1 Snakemake lock file(s) left in .snakemake/locks by a run that was killed" in said
    for path in damage:
        rel = str(path.relative_to(ws)) if path.name != "shard-00000.npy" else str(path.parent.relative_to(ws))
        assert f"moved aside to {rel}.damaged" in said, rel
        assert (ws / f"{rel}.damaged").exists()
    assert faults.final_results(ws) == expected
    assert faults.outputs_left_are_valid(ws) == []


def test_a_second_run_in_the_same_folder_refuses_and_the_first_is_unharmed(reference, tmp_path):
    ref_ws, expected = reference
    ws = tmp_path / "twice"
    shutil.copytree(ref_ws, ws, symlinks=True)
    for name in ("results", "checkpoints", "reports"):
        shutil.rmtree(ws / name)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(faults.snakemake_cmd(), cwd=ws, env=rib_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline and not any("rib finetune" in c for c in faults.processes_in(ws).values()):
            time.sleep(0.05)
        with faults.paused(ws):  # the first run is alive while the second starts, however slowly
            second = faults.run(faults.snakemake_cmd(), ws, check=False)
        assert first.wait(timeout=600) == 0
    assert second.returncode != 0
    said = second.stdout + second.stderr
    assert f"another Snakemake run is working in this folder (pid {first.pid}" in said
    assert "LockException" in said
    assert faults.final_results(ws) == expected


# A full disk while an output is written: the write fails with one line, the file written before stays.

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root, as on CI; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        skip_or_fail("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_writing_results_and_checkpoints(in_tiny_suite, tiny_pretrained, small_disk, capsys):
    from rib.cli import main
    from rib.io import read_record, sha256_file

    root, _ = in_tiny_suite
    out = small_disk / "results"
    data = [str(root / "data/rib-mini/prepared" / d) for d in ("source", "sketch")]
    assert main(["evaluate", str(tiny_pretrained), *data, "--out-dir", str(out), "-q"]) == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.json")}
    shutil.copy(tiny_pretrained, small_disk / "model.pt")
    kept = sha256_file(small_disk / "model.pt")
    faults.fill_disk(small_disk)

    capsys.readouterr()
    assert main(["evaluate", str(tiny_pretrained), *data, "--out-dir", str(out), "-q"]) == 2
    err = error_line(capsys.readouterr().err)
    assert "is full" in err and str(out) in err
    assert {p.name: p.read_bytes() for p in out.glob("*.json")} == before
    for p in out.glob("*.json"):
        read_record(p)

    assert main(["finetune", "mini_resnet.narrow", "ft", "sketch", "--pretrained", str(tiny_pretrained),
                 "--data", str(root / "data/rib-mini/prepared/sketch"), "--out", str(small_disk / "model.pt"),
                 "--state", str(root / "fault-state.pt"), "-q"]) == 2
    err = error_line(capsys.readouterr().err)
    assert f"{small_disk / 'model.pt'}: could not write the checkpoint" in err and "is full" in err
    assert "the previous file is kept unchanged" in err
    assert sha256_file(small_disk / "model.pt") == kept
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "model.pt", "results"]  # no partial file


# Out of memory: a clear line naming the setting to change, and nothing moved aside.

CAPPED = """
import resource, sys
import torch, timm  # imported before the cap, as a job forked from the rib server has them
from rib import cli
with open("/proc/self/statm") as fh:
    used = int(fh.read().split()[0]) * resource.getpagesize()
cap = used + int(sys.argv[1]) * 2**20
_, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (cap, hard))  # the soft limit: memory runs out during the command
code = cli.main(sys.argv[2:])
resource.setrlimit(resource.RLIMIT_AS, (hard, hard))  # and is back at exit (torch's exit hooks allocate)
sys.exit(code)
"""


def _capped(margin_mb: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CAPPED, str(margin_mb), *args], cwd=cwd, env=rib_env(), text=True,
                          capture_output=True, timeout=300)


@pytest.mark.parametrize("margin_mb", [2, 8])
def test_running_out_of_memory_names_the_setting(in_tiny_suite, tiny_pretrained, tmp_path, margin_mb):
    root, _ = in_tiny_suite
    before = tiny_pretrained.read_bytes()
    proc = _capped(margin_mb, "finetune", "mini_resnet.narrow", "ft", "sketch", "--pretrained", str(tiny_pretrained),
                   "--data", "data/rib-mini/prepared/sketch", "--out", str(tmp_path / "m.pt"),
                   "--state", str(tmp_path / "s.pt"), "-q", cwd=root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = error_line(proc.stderr)
    assert line.startswith("rib: error: finetune ft ran out of CPU memory") and "train.batch_size" in line
    assert "Traceback" not in proc.stderr
    assert tiny_pretrained.read_bytes() == before and not tiny_pretrained.with_name("pretrained.pt.damaged").exists()
    proc = _capped(margin_mb, "evaluate", str(tiny_pretrained), "data/rib-mini/prepared/source",
                   "--out-dir", str(tmp_path / "cells"), "-q", cwd=root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = error_line(proc.stderr)
    assert "ran out of CPU memory" in line and "evaluate.batch_size" in line
    assert not (tmp_path / "cells").exists() or not list((tmp_path / "cells").iterdir())


# Bad input through the command line: one line, naming the file or key.

def test_lp_ft_without_its_linear_probe(in_tiny_suite, tiny_pretrained, tmp_path, capsys):
    from rib.cli import main

    root, _ = in_tiny_suite
    common = ["finetune", "mini_resnet.narrow", "lp_ft", "sketch", "--pretrained", str(tiny_pretrained),
              "--data", "data/rib-mini/prepared/sketch", "--out", str(tmp_path / "m.pt"), "-q"]
    assert main(common) == 2
    assert "methods.lp_ft starts from the finished 'lp' checkpoint" in error_line(capsys.readouterr().err)
    assert main([*common, "--init", str(tmp_path / "lp.pt")]) == 2
    assert f"{tmp_path / 'lp.pt'}: checkpoint not found" in error_line(capsys.readouterr().err)
    assert main([*common, "--init", str(tiny_pretrained)]) == 2  # not a linear probe
    err = error_line(capsys.readouterr().err)
    assert "methods.lp_ft starts from a checkpoint of 'lp'" in err
    assert not (tmp_path / "m.pt").exists()


def test_lora_on_a_model_without_attention_from_the_command_line(in_tiny_suite, tiny_pretrained, tmp_path, capsys):
    from rib.cli import main

    assert main(["finetune", "mini_resnet.narrow", "lora", "sketch", "--pretrained", str(tiny_pretrained),
                 "--data", "data/rib-mini/prepared/sketch", "--out", str(tmp_path / "m.pt"), "-q"]) == 2
    err = error_line(capsys.readouterr().err)
    assert "no attention projections" in err
    assert not (tmp_path / "m.pt").exists()


def test_weights_of_the_wrong_shape_in_a_checkpoint(in_tiny_suite, tiny_pretrained, tmp_path, capsys):
    import torch

    from rib.cli import main
    from rib.io import tree_digest
    from rib.models.network import DIGEST

    payload = torch.load(tiny_pretrained, weights_only=True)
    payload.pop(DIGEST, None)
    name, tensor = next((k, v) for k, v in payload["state_dict"].items() if v.ndim == 2)
    payload["state_dict"][name] = torch.zeros(tensor.shape[0] + 1, tensor.shape[1])
    payload[DIGEST] = tree_digest(payload)  # a consistent file, of the wrong shape
    torch.save(payload, tmp_path / "wrong.pt")
    assert main(["evaluate", str(tmp_path / "wrong.pt"), "data/rib-mini/prepared/source",
                 "--out-dir", str(tmp_path / "cells"), "-q"]) == 2
    err = error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'wrong.pt'}: weights do not fit architecture" in err
    assert (tmp_path / "wrong.pt").exists()  # a file given by hand is never moved aside


def test_a_dataset_folder_of_the_wrong_layout(in_tiny_suite, tmp_path, capsys):
    from rib.cli import main

    root, _ = in_tiny_suite
    raw = tmp_path / "flat"
    raw.mkdir()
    for i, image in enumerate(sorted((root / "data/rib-mini/raw/sketch").rglob("*.png"))[:5]):
        shutil.copy(image, raw / f"{i}.png")  # images without class folders
    assert main(["data", "prepare", "sketch", "--raw", str(raw), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith(f"rib: error: {raw}: no ") and "layout of 'sketch'" in err
    assert not (tmp_path / "out").exists()


def test_an_archive_escaping_its_folder_from_the_command_line(in_tiny_suite, tmp_path, capsys):
    import io
    import tarfile

    from rib.cli import main

    archive = tmp_path / "sketch.tar"
    with tarfile.open(archive, "w") as tar:
        member = tarfile.TarInfo("sketch/../../../escaped.png")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    assert main(["data", "add", "sketch", str(archive), "--out", str(tmp_path / "raw"), "-q"]) == 2
    err = error_line(capsys.readouterr().err)
    assert f"{archive}: member 'sketch/../../../escaped.png' would be written outside the target folder" in err
    assert not (tmp_path / "raw").exists() and not list(tmp_path.rglob("escaped.png"))


CLAIMANT = """
import os, subprocess, sys, time
from rib.runlock import claim
claim(".")  # as the Snakefile does in a Snakemake run
job = subprocess.Popen([sys.executable, "-c", "import time; from rib.runlock import join_run; join_run(); "
                        "print('joined', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
job.stdout.readline()
print(job.pid, flush=True)
time.sleep(120)
"""


def test_a_killed_run_counts_as_alive_while_one_of_its_jobs_is(tmp_path, monkeypatch):
    import signal

    from rib.runlock import claim

    run = subprocess.Popen([sys.executable, "-c", CLAIMANT], cwd=tmp_path, env=rib_env(), stdout=subprocess.PIPE,
                           text=True)
    job = int(run.stdout.readline())
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/x.json\n")  # the run's Snakemake lock
    try:
        os.kill(run.pid, signal.SIGKILL)  # Snakemake is killed, its job goes on
        run.wait()
        found = subprocess.run([sys.executable, "-c", "from rib.runlock import claim; print(claim('.').messages())"],
                               cwd=tmp_path, env=rib_env(), text=True, capture_output=True).stdout
        assert "jobs of a Snakemake run that was killed" in found and (locks / "0.output.lock").exists()
    finally:
        os.kill(job, signal.SIGKILL)
    time.sleep(0.2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RIB_RUN_CLAIM", raising=False)  # claim() names itself there; gone after the test
    result = claim(".")  # now the run and its jobs are all gone
    assert not result.live and result.removed_locks == [str(tmp_path / ".snakemake/locks/0.output.lock")]
    assert not (locks / "0.output.lock").exists()
