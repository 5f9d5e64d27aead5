# Shared set-up: load and validate the configuration through rib, name the grid and its paths.
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod

SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

from rib import config as rib_config  # noqa: E402
from rib import grid as rib_grid  # noqa: E402
from rib.jobs import Graph  # noqa: E402
from rib.data.suites import get_suite  # noqa: E402
from rib.models.registry import model_slug  # noqa: E402
from rib import usage as rib_usage  # noqa: E402
from rib import verify as rib_verify  # noqa: E402
from rib.runlock import claim as claim_run  # noqa: E402
from rib.server import ENV as SERVER_ENV  # noqa: E402

# The params file is the single configuration: the one given with --configfile, else params.yaml.
PARAMS_FILE = os.path.relpath(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles else "params.yaml"
try:
    PARAMS = rib_config.load(PARAMS_FILE)
except rib_config.ConfigError as err:
    raise WorkflowError(str(err)) from None

SUITE = get_suite(PARAMS)
# The job graph (src/rib/jobs.py): each rule takes its inputs and its rib command from it, as
# dvc.yaml and `rib cell` do; a rule here adds its output pattern, log, resources and constraints.
GRAPH = Graph(PARAMS)

# Before a run builds its job graph, two repairs (only then: a dry run, --lint, --summary, --dag,
# --unlock ... change no file):
# * a run killed with SIGKILL leaves Snakemake's lock behind; with no live run in this folder it is
#   removed, so rerunning the same command just works (src/rib/runlock.py);
# * outputs damaged since they were written (a truncated checkpoint or cache shard, a result file
#   that no longer matches its digest) are moved aside, so this run rebuilds them (src/rib/verify.py);
#   a live run elsewhere in this folder may be writing, so not then.
# Whether jobs will run is Snakemake's own decision: it is the executor Snakemake hands to
# Workflow.execute (the dryrun and touch executors run none; --lint and the other commands never
# call it), so the repairs hook in there, before the lock is taken and the DAG built. A dry run
# names damaged outputs and leaves them in place. Job processes (SLURM job steps) are not runs.
def _before_execute(execute):
    def run(*args, executor_plugin, **kwargs):
        common = executor_plugin.common_settings
        runs_jobs = not (common.dryrun_exec or common.touch_exec)
        claim = claim_run() if runs_jobs else None
        for line in claim.messages() if claim else []:
            print(line, file=sys.stderr)
        if not (claim and (claim.live or claim.problem)):
            for finding in rib_verify.sweep(".", SUITE.name, repair=runs_jobs):
                print(f"rib: damaged output: {finding.line()}" + ("" if runs_jobs else " (left in place: no job runs)"),
                      file=sys.stderr)
        return execute(*args, executor_plugin=executor_plugin, **kwargs)

    return run


if workflow.is_main_process:
    workflow.execute = _before_execute(workflow.execute)


def rebuild_targets(wildcards):
    """Outputs moved aside as damaged (by the repair above, or by a job that met one): targets of
    this run next to rule all's."""
    return rib_verify.to_rebuild(PARAMS, graph=GRAPH)


TRAIN_ENTRIES = rib_grid.train_entries(PARAMS)  # methods entries that train a checkpoint
WEIGHT_ENTRIES = rib_grid.weight_entries(PARAMS)  # weight-space entries of the grid (no training)
EVALS = rib_grid.eval_datasets(PARAMS)
SNAPSHOT_MODELS = rib_grid.snapshot_models(PARAMS)  # models whose pretraining keeps snapshots
THREADS = PARAMS["runtime"]["threads"]
PAT = {kind: pattern.replace("{suite}", SUITE.name) for kind, pattern in rib_grid.PATTERNS.items()}
LOGS = f"logs/{SUITE.name}"


def bench(rule, rest):
    """A compute rule's benchmark: file (Snakemake's time and memory of the job; rib.usage sums them)."""
    return rib_usage.benchmark_file(LOGS, rule, rest)

# Every rule runs `python -m rib` from this checkout's src/ (also inside --use-conda environments)
# and reads the params file named by RIB_PARAMS. Without conda, `python` is the interpreter running
# Snakemake, so an activated virtual environment is not required. (Snakemake formats the prefix
# too, hence the doubled braces.)
_conda = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
_path = "" if _conda else f'export PATH="{os.path.dirname(sys.executable)}:$PATH"; '
shell.prefix(f'{_path}export PYTHONPATH="{SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; export RIB_PARAMS="{PARAMS_FILE}"; ')
CONDA_ENV = "../envs/rib.yaml"

# A local run (not --use-conda, not a cluster executor) starts one `rib serve` that keeps torch and
# timm imported; each job's `python -m rib` then runs in a fork of it (src/rib/server.py), which
# saves ~3.5 s of start-up per job. Jobs fall back to a fresh process whenever it does not answer.
_SERVER = {}


def start_rib_server():
    if _conda or not workflow.local_exec or not PARAMS["runtime"].get("fork_server", True):
        return
    import subprocess
    import tempfile
    import time

    path = os.path.join(tempfile.gettempdir(), f"rib-{os.getuid()}-{os.getpid()}.sock")
    os.makedirs(LOGS, exist_ok=True)
    # the jobs' PYTHONPATH (shell.prefix above): this checkout's src/, then the caller's (plugins)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
           "RIB_PARAMS": PARAMS_FILE}
    env.pop(SERVER_ENV, None)
    with open(f"{LOGS}/server.log", "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rib", "serve", "--socket", path, "--parent", str(os.getpid())],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not os.path.exists(path):
        time.sleep(0.1)
    if os.path.exists(path):
        os.environ[SERVER_ENV] = path
        _SERVER.update(proc=proc, path=path)


def stop_rib_server():
    proc = _SERVER.pop("proc", None)
    os.environ.pop(SERVER_ENV, None)
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except Exception:
            proc.kill()


onstart:
    start_rib_server()


onsuccess:
    stop_rib_server()


onerror:
    stop_rib_server()

wildcard_constraints:
    dataset="|".join(sorted(SUITE.datasets)),
    eval="|".join(sorted(SUITE.datasets)),
    model="|".join(re.escape(model_slug(m)) for m in PARAMS["grid"]["models"]),
    method="|".join(re.escape(m) for m in sorted(set(PARAMS["grid"]["methods"]) | set(TRAIN_ENTRIES))),


def job_inputs(rule):
    """A rule's inputs: its job's, by name (an input function of the rule's wildcards)."""
    return lambda wildcards: GRAPH.job(rule, **dict(wildcards.items())).inputs()


def job_command(rule):
    """A rule's `rib` command (its subcommand and arguments): its job's."""
    return lambda wildcards: GRAPH.job(rule, **dict(wildcards.items())).command


def train_regex(entries):
    return "|".join(re.escape(e) for e in entries) or "^$"


def job_resources(kind):
    """What one job of ``kind`` asks a cluster for, from params.yaml `resources` (rib.config.
    job_resources). profiles/slurm passes them to SLURM; its set-resources override them per rule.
    The time limit grows with each retry (a retried fine-tuning job also resumes from its state)."""
    res = rib_config.job_resources(PARAMS, kind)
    out = {"mem_mb": res["mem_mb"], "runtime": lambda wildcards, attempt: res["runtime"] * attempt}
    if res["gpus"]:
        out["gpu"] = res["gpus"]
        if res.get("cpus"):
            out["cpus_per_gpu"] = res["cpus"]
    elif res.get("cpus"):
        out["cpus_per_task"] = res["cpus"]
    return out


PREP_KEYS = "|".join(sorted({re.escape(k) for k, _ in rib_grid.cache_jobs(PARAMS)})) or "^$"
EVAL_NAMES = "|".join(sorted(SUITE.names("source") + SUITE.names("shift")))
CORPUS_NAMES = "|".join(sorted(SUITE.names("corpus")))


REPORT_OUTPUTS = GRAPH.job("aggregate").outputs + GRAPH.job("figures").outputs
USAGE_OUTPUTS = GRAPH.job("usage").outputs
