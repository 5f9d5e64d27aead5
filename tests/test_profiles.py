"""The Snakemake profiles: the values a run gets are those its profile sets.

Snakemake loads ``profiles/default`` as the *workflow profile* whenever it exists and lets its keys
override those of ``--profile``. These tests read the effective settings through Snakemake's own
argument parsing (``snakemake.cli.parse_args``, what the ``snakemake`` command calls), so a key
added to the workflow profile that would silently change a cluster run fails here.
"""

from __future__ import annotations

import dataclasses
import enum

import pytest
import yaml

from tests.conftest import REPO

SLURM = REPO / "profiles" / "slurm" / "config.yaml"
DEFAULT = REPO / "profiles" / "default" / "config.yaml"


def _effective(argv: list[str], monkeypatch) -> object:
    from snakemake.cli import parse_args

    monkeypatch.chdir(REPO)  # Snakemake looks for profiles/default next to the Snakefile it finds here
    _, args = parse_args(argv)
    return args


def _norm(value):
    """A parsed value in the form the profile writes it (enums by name, collections sorted; an
    executor plugin's flag left at its default, False, parses as dataclasses.MISSING)."""
    if value is dataclasses.MISSING:
        return False
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, (set, frozenset, list, tuple)):
        return sorted(_norm(v) for v in value)
    return value


def _settings(path) -> dict:
    return {k: v for k, v in yaml.safe_load(path.read_text()).items() if v is not None}


@pytest.mark.parametrize("flag", ["--profile", "--workflow-profile"])
def test_every_slurm_profile_value_holds_against_the_workflow_profile(flag, monkeypatch, capsys):
    args = _effective([flag, "profiles/slurm", "-n"], monkeypatch)
    for key, want in _settings(SLURM).items():
        got = _norm(getattr(args, key.replace("-", "_")))
        assert got == _norm(want), f"{flag} profiles/slurm: {key} is {got!r}, the profile sets {want!r}"
    # The checks the issue names: a shared file system's wait, and no local core count on the
    # login node capping the jobs' threads.
    assert args.latency_wait == 60 and args.executor == "slurm" and args.jobs == 200
    assert args.cores is None
    err = capsys.readouterr().err
    if flag == "--profile":  # the workflow profile is still loaded: it must not matter
        assert "workflow specific profile profiles/default" in err


def test_the_workflow_profile_sets_nothing_where_to_run(monkeypatch):
    """profiles/default holds only keys every executor wants, with the SLURM profile's values."""
    default, slurm = _settings(DEFAULT), _settings(SLURM)
    site_keys = {"cores", "jobs", "executor", "latency-wait", "local-cores", "default-resources",
                 "set-resources", "retries"}
    assert not site_keys & set(default), f"profiles/default sets {sorted(site_keys & set(default))}"
    for key, value in default.items():
        assert key in slurm and _norm(slurm[key]) == _norm(value), (
            f"profiles/default sets {key}: {value!r}; profiles/slurm must set the same (it is overridden)")
    args = _effective(["--cores", "all", "-n"], monkeypatch)
    assert args.rerun_incomplete and args.printshellcmds and args.show_failed_logs
    assert _norm(args.rerun_triggers) == ["code", "input", "mtime", "params"]
    assert args.executor in (None, "local")
