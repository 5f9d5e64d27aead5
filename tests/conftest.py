"""Shared fixtures: the default and tiny configurations, a generated tiny suite, a rib runner."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = REPO / "tests" / "tiny-params.yaml"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def default_params() -> dict:
    return load_yaml(REPO / "params.yaml")


@pytest.fixture
def tiny_params() -> dict:
    return copy.deepcopy(load_yaml(TINY_PARAMS))


def skip_or_fail(reason: str) -> None:
    """Skip a test that this machine cannot run (no SLURM, not root), except under CI=true: there the
    test must run, so its absence fails, naming why."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{reason} (CI=true: this test must run in CI, not skip)", pytrace=False)
    pytest.skip(reason)


def rib_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1] if "Job stats:" in output else ""
    counts = {}
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def dry_run_jobs(output: str) -> set[tuple[str, frozenset, frozenset]]:
    """The jobs of a `snakemake -n` output: (rule, inputs, outputs) of each, rule all left out."""
    found = set()
    for block in re.split(r"\n\[[^\]\n]+\]\n", output)[1:]:
        rule = re.match(r"\s*(?:local)?rule (\w+):", block)
        fields = dict(re.findall(r"^    (input|output): (.*)$", block, re.MULTILINE))
        if rule and rule.group(1) != "all":
            found.add((rule.group(1), frozenset(fields.get("input", "").split(", ")) - {""},
                       frozenset(fields.get("output", "").split(", ")) - {""}))
    return found


def run_rib(*args: str, cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "rib", *args], cwd=cwd, env=rib_env(), text=True,
                          capture_output=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"rib {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory) -> tuple[Path, dict]:
    """The tiny configuration's datasets, generated and prepared once per session (in-process)."""
    from rib import grid
    from rib.data.manifest import prepare
    from rib.data.suites import get_suite
    from rib.data.synthetic.generate import generate

    root = tmp_path_factory.mktemp("tiny-suite")
    params = load_yaml(TINY_PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    suite = get_suite(params)
    cwd = os.getcwd()
    os.chdir(root)  # prepared folders record the dataset root relative to the working folder
    try:
        for name in grid.datasets_to_prepare(params):
            raw = grid.data_dir(params, name, "raw")
            generate(params, name, raw, show_progress=False)
            prepare(suite.dataset(name), raw, grid.data_dir(params, name), label_space=suite.label_space,
                    fraction=params["split"]["heldout_fraction"], seed=params["split"]["seed"],
                    by_photo=params["split"]["leak_free"], show_progress=False)
    finally:
        os.chdir(cwd)
    return root, params


@pytest.fixture
def in_tiny_suite(tiny_suite):
    """Run the test inside the tiny suite's folder (prepared datasets name their root relative to it)."""
    root, params = tiny_suite
    cwd = os.getcwd()
    os.chdir(root)
    yield root, params
    os.chdir(cwd)


def _pretrain(tiny_suite, model: str) -> Path:
    """Pretrain a rib-mini model of the tiny configuration on its narrow corpus (in-process `rib pretrain`)."""
    from rib.cli import main

    root, _ = tiny_suite
    out = root / "models" / "rib-mini" / model / "pretrained.pt"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["pretrain", model, "--data", "data/rib-mini/corpora/prepared/narrow", "--out", str(out),
                     "--snapshots", str(out.parent / "snapshots"), "-q"]) == 0
    finally:
        os.chdir(cwd)
    return out


@pytest.fixture(scope="session")
def tiny_pretrained(tiny_suite) -> Path:
    """A pretrained mini_resnet.narrow checkpoint of the tiny configuration."""
    return _pretrain(tiny_suite, "mini_resnet.narrow")


@pytest.fixture(scope="session")
def tiny_vit(tiny_suite) -> str:
    """A pretrained mini_vit.narrow (a transformer: LoRA has attention to adapt)."""
    return str(_pretrain(tiny_suite, "mini_vit.narrow"))
