"""End to end on a real SLURM cluster: `snakemake --profile profiles/slurm`, and preemption.

tests/slurm/start-cluster.sh starts a single-node cluster on this machine (installing Debian's
slurm-wlm and munge when missing); where it cannot, every test here is skipped with its reason.
One Snakemake run submits a small grid through the profile while the test preempts two fine-tuning
jobs the two ways a cluster stops a job:

* ``scontrol requeue`` (what preemption with PreemptMode=REQUEUE does): SLURM sends SIGTERM, the
  job saves its training state and exits, SLURM puts it back in the queue (``sbatch --requeue``
  from the profile) and the same SLURM job resumes;
* ``scancel --signal=TERM`` (a signal such as the time-limit one, without a requeue): the job saves
  and fails, and Snakemake's retry (``retries`` in the profile) submits a new job that resumes.

The results must equal those of a local run of the same configuration, bit for bit.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, TINY_PARAMS, job_counts, rib_env, skip_or_fail
from tests.test_pipeline import cell_numbers, make_workspace

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

SCRIPTS = REPO / "tests" / "slurm"
LOCAL_RULES = {"generate", "generate_corpus", "aggregate", "figures", "usage"}
# Long enough (epochs of some 30 ms) to be caught while training.
EPOCHS = {"ft": 150, "lp": 200}


def slurm_params() -> dict:
    params = yaml.safe_load(TINY_PARAMS.read_text())
    # The smaller 32-px suite its epoch counts were timed on (this test needs jobs to stop, not to learn).
    params["synthetic"].update(image_size=32, images_per_class={"source": 10, "shift": 8, "c": 2},
                               corpora={"narrow": 30, "diverse": 30})
    params["pretrain"]["epochs"] = {"narrow": 3, "diverse": 1}
    # Fine-tuning on sketch (40 images; ImageNet-C's 750 would make FT on it the longest job), every
    # checkpoint evaluated on sketch and r too (grid.finetune_on, the pilot setting).
    params["grid"].update(methods=["ft", "lp", "wise_ft"], datasets=["sketch", "r"], finetune_on=["sketch"])
    params["methods"] = {"ft": {"epochs": EPOCHS["ft"]},
                         "lp": {"method": "linear_probe", "lr": 0.05, "epochs": EPOCHS["lp"]},
                         "wise_ft": {"of": "ft", "alphas": [0.0, 0.5, 1.0], "alpha": 0.5}}
    params["report"] = {"focus_dataset": "sketch", "focus_method": "ft"}
    params["robustness"] = {"snapshots": 0}  # no pretraining snapshots: one SLURM job fewer
    return params


def _node_idle() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and "idle" in out.stdout.split()


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running SLURM cluster: the one .ci/run started, else one started (and stopped) here."""
    if _node_idle():
        yield
        return
    proc = subprocess.run(["bash", str(SCRIPTS / "start-cluster.sh")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["start-cluster.sh failed"])[-1]
        print(f"SLURM tests skipped: {reason}", file=sys.stderr)
        skip_or_fail(f"SLURM cannot be started on this machine: {reason}")
    try:
        yield
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop-cluster.sh")], capture_output=True, timeout=120)


def _rib_log(ws: Path, method: str) -> Path:
    return ws / "logs" / "rib-mini" / "finetune" / "mini_vit.narrow" / method / "sketch.log"


def _training_job(log: Path, min_epoch: int) -> str | None:
    """The SLURM job id behind ``log`` once it is training past ``min_epoch`` and not done, else None."""
    text = log.read_text() if log.exists() else ""
    job = re.search(r"SLURM job (\d+)", text)
    epochs = [int(e) for e in re.findall(r"epoch (\d+)/\d+:", text)]
    if job and epochs and max(epochs) >= min_epoch and "saved " not in text:
        return job.group(1)
    return None


class Preempter(threading.Thread):
    """Stops the ft job with `scontrol requeue` and the lp job with `scancel --signal=TERM`, each as
    soon as it is training."""

    COMMANDS = {"ft": ["scontrol", "requeue"], "lp": ["scancel", "--signal=TERM"]}

    def __init__(self, ws: Path):
        super().__init__(daemon=True)
        self.ws, self.jobs, self.error = ws, {}, None

    def run(self):
        try:
            deadline = time.time() + 900
            while len(self.jobs) < len(self.COMMANDS):
                if time.time() > deadline:
                    raise TimeoutError(f"no running fine-tuning job to stop for {set(self.COMMANDS) - set(self.jobs)}")
                for method, command in self.COMMANDS.items():
                    job = None if method in self.jobs else _training_job(_rib_log(self.ws, method), 20)
                    if job is not None:
                        subprocess.run([*command, job], check=True, capture_output=True, text=True, timeout=60)
                        self.jobs[method] = job
                time.sleep(0.05)
        except Exception as err:  # reported by the test
            self.error = err


def _workspace(tmp_path_factory, name: str, **runtime) -> Path:
    ws = make_workspace(tmp_path_factory.mktemp("slurm") / name)
    params = slurm_params()
    params["runtime"].update(runtime)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ws


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    """The same configuration through the SLURM profile and locally, side by side (the local run
    uses the CPUs while the cluster run waits for its status checks)."""
    # The local run also takes every other road to the same numbers: no image cache, images streamed
    # from disk through 2 DataLoader workers, jobs in forks of the rib server (every SLURM job is a
    # fresh process)
    cluster = _workspace(tmp_path_factory, "cluster")
    local = _workspace(tmp_path_factory, "local", cache=False, loader_workers=2, preload=False)
    local_proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=local, env=rib_env(),
                                  text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    preempter = Preempter(cluster)
    preempter.start()
    # The profile as users run it; only the first status check comes sooner than on a real cluster.
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
                           "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5"],
                          cwd=cluster, env=rib_env(), text=True, capture_output=True, timeout=1200)
    preempter.join(timeout=60)
    local_out, _ = local_proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"snakemake --profile profiles/slurm failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    if local_proc.returncode != 0:
        raise AssertionError(f"local snakemake failed ({local_proc.returncode}):\n{local_out[-6000:]}")
    return cluster, proc.stdout + proc.stderr, preempter, local


@pytest.fixture(scope="module")
def slurm_run(runs):
    return runs[:3]


@pytest.fixture(scope="module")
def local_run(runs):
    return runs[3]


def _checkpoint(ws: Path, method: str) -> dict:
    return torch.load(ws / "checkpoints" / "rib-mini" / "mini_vit.narrow" / method / "sketch" / "model.pt",
                      weights_only=True)


def test_every_job_runs_as_a_slurm_job(slurm_run):
    ws, output, _ = slurm_run
    counts = job_counts(output)
    assert counts["finetune"] == 2 and counts["combine"] == 1 and counts["prepare"] == 3, counts
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", output)
    remote = {rule for _, rule in submitted}
    assert remote == set(counts) - LOCAL_RULES - {"all"}, "only the local rules may run outside SLURM"
    logs = sorted((ws / "logs" / "rib-mini").rglob("*.log"))
    assert len(logs) == sum(counts.values()) - 1  # every job but `all` writes a log
    for log in logs:
        text = log.read_text()
        rule = log.relative_to(ws / "logs" / "rib-mini").parts[0].removesuffix(".log")
        if rule in LOCAL_RULES:
            assert "SLURM job" not in text, f"{log}: a local rule ran as a SLURM job"
        else:
            job = re.search(r"SLURM job (\d+) on ", text)
            assert job, f"{log} names no SLURM job"
            assert job.group(1) in {j for j, _ in submitted}
    # Snakemake measured each SLURM job's own process (no fork server there): its CPU time and memory
    usage = {row["rule"]: row for row in csv.DictReader(open(ws / "reports" / "rib-mini" / "usage_by_rule.csv"))}
    for rule in ("finetune", "combine", "evaluate_finetuned"):
        assert int(usage[rule]["jobs"]) == counts[rule] and usage[rule]["measured_in"] == "process", usage[rule]
        assert float(usage[rule]["peak_rss_mib"]) > 200 and float(usage[rule]["cpu_total_s"]) > 1, usage[rule]
    for cell in (ws / "results").rglob("*.json"):  # provenance: the job that computed the cell
        assert json.loads(cell.read_text())["slurm_job_id"] in {j for j, _ in submitted}, cell


def test_results_equal_the_local_run(slurm_run, local_run):
    """The same numbers on SLURM (image cache, a fresh rib process in each job) and locally without the
    cache, with DataLoader workers and in forks of the rib server."""
    ws, _, _ = slurm_run
    assert not (local_run / "cache").exists() and (ws / "cache").exists()
    assert "rib server on" in (local_run / "logs" / "rib-mini" / "server.log").read_text()
    assert not (ws / "logs" / "rib-mini" / "server.log").exists()  # SLURM jobs start rib afresh
    cluster, local = cell_numbers(ws), cell_numbers(local_run)
    assert len(cluster) == 3 + 3 * 1 * 3 and cluster == local  # pretrained + (ft, lp, wise_ft) on sketch, x 3
    for name in ("metrics.csv", "summary.csv", "sweeps.csv"):
        cluster_table, local_table = (w / "reports" / "rib-mini" / name for w in (ws, local_run))
        assert cluster_table.read_text() == local_table.read_text(), name


@pytest.mark.parametrize("method, how", [("ft", "scontrol requeue"), ("lp", "scancel --signal=TERM")])
def test_a_preempted_job_resumes_to_the_unbroken_weights(slurm_run, local_run, method, how):
    ws, output, preempter = slurm_run
    assert preempter.error is None, f"could not preempt the jobs: {preempter.error}"
    first = preempter.jobs[method]
    ckpt, unbroken = _checkpoint(ws, method), _checkpoint(local_run, method)
    stops = ckpt["meta"]["interruptions"]
    assert [s["signal"] for s in stops] == ["SIGTERM"] and stops[0]["slurm_job_id"] == first
    assert 20 <= stops[0]["epoch"] < EPOCHS[method]  # it really stopped mid-training
    assert ckpt["state_dict"].keys() == unbroken["state_dict"].keys()
    for key, value in unbroken["state_dict"].items():
        assert torch.equal(ckpt["state_dict"][key], value), f"{method}: {key} differs from the unbroken run"
    assert [h["loss"] for h in ckpt["meta"]["history"]] == [h["loss"] for h in unbroken["meta"]["history"]]
    log = _rib_log(ws, method).read_text()
    assert re.search(r"resuming \w+ at epoch \d+ of \d+, batch \d+ of \d+ \(step \d+\); interrupted 1 time", log)
    if how == "scontrol requeue":  # SLURM requeued the same job
        assert ckpt["meta"]["slurm_job_id"] == first
        assert re.search(rf"SLURM job {first} on ", log)
    else:  # the job failed; Snakemake submitted it again
        assert ckpt["meta"]["slurm_job_id"] != first
        assert re.search(rf"SLURM-job '{first}' failed", output)
        assert "Trying to restart job" in output
