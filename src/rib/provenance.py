"""What every record and checkpoint says about how it was made: rib's version and source digest,
the git commit, torch, the device, the host, the time, the SLURM job where there is one, and the
plugins loaded (rib.plugins) with their distributions' versions."""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path

from . import __version__

log = logging.getLogger("rib")


def code_version() -> dict:
    """rib's version, a digest of its source files, and the git commit when run from a checkout."""
    import hashlib
    import subprocess

    root = Path(__file__).parent
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*.py")) + sorted(root.rglob("*.yaml")):
        digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    commit = None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"rib_version": __version__, "code_sha256": digest.hexdigest(), "git_commit": commit}


def provenance(device) -> dict:
    import torch

    from .plugins import loaded

    slurm = {"slurm_job_id": os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {}
    plugins = loaded()  # the plugins (entry points, params' plugins) this process loaded, with their versions
    return {**code_version(), "torch_version": str(torch.__version__), "device": str(device),
            "host": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **slurm,
            **({"plugins": plugins} if plugins else {})}


def log_slurm_job() -> None:
    """Inside a SLURM job, say which one first: the job's log then names its SLURM job id."""
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        extra = f", restart {os.environ['SLURM_RESTART_COUNT']}" if os.environ.get("SLURM_RESTART_COUNT") else ""
        log.info("SLURM job %s on %s (partition %s%s)", job, platform.node(),
                 os.environ.get("SLURM_JOB_PARTITION", "?"), extra)
