"""Packaging promises: pins agree everywhere, README opens with the two commands, CI runs them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from tests.conftest import REPO


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        name, _, version = line.partition("==")
        assert version, f"not an exact pin: {line!r}"
        out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def test_conda_environment_pins_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "workflow" / "envs" / "rib.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(project["dependencies"]) == _pins(pip)
    assert _pins(project["dependencies"])["torch"] == "2.14.1"
    assert _pins(project["dependencies"])["torchvision"] == "0.29.1"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert project["requires-python"].startswith(">=" + python.split("=")[1])


def test_readme_opens_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"```(?:sh|bash)?\n(.*?)```", text, re.DOTALL).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run: install.*\n\t\$\(BIN\)/snakemake --cores all$", makefile, re.MULTILINE)
    assert re.search(r"^test: install.*\n\t\$\(BIN\)/python -m pytest -n 2 --dist loadfile$", makefile, re.MULTILINE)


def test_ci_runs_the_readme_test_command():
    script = (REPO / ".ci" / "run").read_text()
    assert "make test" in script


def test_plain_pytest_from_another_folder_finds_the_tests_package(tmp_path):
    """`pytest` as well as `python -m pytest`, and from any working folder (the tests import `tests.*`)."""
    pytest_bin = Path(sys.executable).parent / "pytest"
    proc = subprocess.run([str(pytest_bin), "--collect-only", "-q", "-p", "no:cacheprovider",
                           str(REPO / "tests" / "test_leak_free.py")], cwd=tmp_path, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "3 tests collected" in proc.stdout


def test_every_rule_runs_one_rib_command():
    """Rules name files and call `rib` (workflow/README.md says why there is no workflow/scripts/):
    no script:, run:, notebook: or wrapper: block, and each shell: command is `python -m rib`, with
    the job's own command from the job graph (src/rib/jobs.py) where the rule has one."""
    rules = sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "Snakefile"]
    shells = 0
    for path in rules:
        text = path.read_text()
        for bad in ("script:", "run:", "notebook:", "wrapper:"):
            assert not re.search(rf"^\s+{bad}", text, re.MULTILINE), f"{path.name} has a {bad} block"
        for cmd in re.findall(r"^\s+shell:\s*\n\s+\"([^\"]*)\"", text, re.MULTILINE):
            shells += 1
            assert re.match(r"(exec )?python -m rib (\w|\{params\.command\})", cmd), f"{path.name}: {cmd!r} is not a rib command"
    assert shells >= 10
