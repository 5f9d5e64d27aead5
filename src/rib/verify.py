"""Checking the outputs rib wrote in a working folder, and moving damaged ones aside.

Every output is written atomically, so a crash never leaves a half-written file under its final
name. A file can still be damaged later: a copy cut short, a disk or file-system fault, a hand edit.
Each kind of output carries what is needed to tell:

- result records (``results/``, ``distances/``): the SHA-256 of their own content
  (``record_sha256``), checked on every read;
- checkpoints (``models/``, ``checkpoints/``): a zip archive (torch's format) whose central
  directory sits at its end, so a truncated file does not open, and the SHA-256 of the whole
  payload (``sha256``), checked on every load;
- image caches (``cache/``): the size, modification time and SHA-256 of every shard in
  ``info.json``; sizes are checked when a cache is opened, digests the first time a shard is read
  (and by the quick check whenever a shard's modification time moved).

A consumer that finds a damaged output stops with one line naming it and moves it aside
(``NAME.damaged``), so the next run rebuilds it. :func:`sweep` does the same ahead of time for a
whole folder: the Snakefile runs its quick form (structure, record digests) before Snakemake builds
its DAG and names every output moved aside (then or by a failed job before) as a target of the
run (:func:`to_rebuild`), so it is written again, and what depends on it with it; ``rib verify
--full`` also checks checkpoint and shard digests.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DamagedFileError, RibError
from .io import quarantine, read_json, read_record, sha256_file

log = logging.getLogger("rib.verify")

OUTPUT_ROOTS = ("results", "distances", "checkpoints", "models", "cache")


@dataclass
class Finding:
    path: Path
    reason: str
    moved_to: Path | None = None

    def line(self) -> str:
        tail = f"; moved aside to {self.moved_to}, the pipeline rebuilds it" if self.moved_to else ""
        return f"{self.reason}{tail}"


def is_output(path: str | os.PathLike, root: str | os.PathLike = ".") -> bool:
    """Is ``path`` inside one of the output folders of the working folder ``root``?"""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        return False
    return len(rel.parts) > 1 and rel.parts[0] in OUTPUT_ROOTS


def check_record(path: Path) -> str | None:
    try:
        read_record(path)
    except DamagedFileError as err:
        return str(err)
    return None


def check_checkpoint(path: Path, full: bool) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return f"{path}: not a torch checkpoint (no data.pkl)"
    except zipfile.BadZipFile as err:
        return f"{path}: truncated or damaged checkpoint ({err})"
    except OSError as err:  # unreadable here (permissions, I/O): not evidence of damage
        log.warning("%s: could not be checked (%s)", path, err)
        return None
    if full:
        import torch

        from .errors import out_of_memory
        from .models.network import digest_matches, looks_damaged

        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            if out_of_memory(err) or not looks_damaged(err):
                raise
            return f"{path}: unreadable checkpoint ({type(err).__name__})"
        if isinstance(payload, dict) and not digest_matches(payload):
            return f"{path}: checkpoint does not match the digest recorded when it was written"
    return None


def check_cache(folder: Path, full: bool) -> str | None:
    try:
        info = read_json(folder / "info.json")
        return _check_shards(folder, info, full)
    except RibError as err:
        return f"{folder}: damaged image cache ({err})"
    except (KeyError, TypeError, AttributeError) as err:
        return f"{folder}/info.json: damaged image cache description ({type(err).__name__}: {err})"


def _check_shards(folder: Path, info: dict, full: bool) -> str | None:
    for entry in info["shards"]:
        path = folder / entry["file"]
        stat = path.stat() if path.exists() else None
        if stat is None or stat.st_size != entry["bytes"]:
            return f"{path}: missing or truncated cache shard (expected {entry['bytes']} bytes)"
        # a shard written to since it was cached (its modification time moved) is hashed even in
        # the quick check: the digest says whether its content changed
        touched = stat.st_mtime_ns != entry.get("mtime_ns", stat.st_mtime_ns)
        if (full or touched) and sha256_file(path) != entry["sha256"]:
            return f"{path}: cache shard does not match the digest in info.json"
    return None


def outputs(root: Path, suite: str | None = None) -> list[tuple[str, Path]]:
    """The outputs under ``root`` that can be checked, as (kind, path)."""
    below = (lambda top: root / top / suite) if suite else (lambda top: root / top)
    found = []
    for top in ("results", "distances"):
        found += [("record", p) for p in sorted(below(top).rglob("*.json"))]
    for top, name in (("models", "pretrained.pt"), ("checkpoints", "model.pt")):
        found += [("checkpoint", p) for p in sorted(below(top).rglob(name))]
    found += [("cache", p.parent) for p in sorted(below("cache").rglob("info.json"))]
    # not what was moved aside already, nor the temporary files of a write in progress or killed
    return [(kind, p) for kind, p in found
            if not any(part.endswith(".damaged") or part.startswith(".") for part in p.relative_to(root).parts)]


def sweep(root: str | os.PathLike = ".", suite: str | None = None, *, full: bool = False,
          repair: bool = False) -> list[Finding]:
    """Check every output under ``root`` (of one suite); with ``repair``, move the damaged ones aside."""
    root = Path(root)
    findings = []
    for kind, path in outputs(root, suite):
        if kind == "record":
            reason = check_record(path)
        elif kind == "checkpoint":
            reason = check_checkpoint(path, full)
        else:
            reason = check_cache(path, full)
        if reason:
            finding = Finding(path, reason)
            if repair:
                finding.moved_to = quarantine(path)
            findings.append(finding)
    return findings


def to_rebuild(params: dict, root: str | os.PathLike = ".", graph=None) -> list[str]:
    """Outputs of the grid that were moved aside as damaged and not written again since.

    Snakemake does not remake a missing file that nothing out of date needs (its consumers may be
    complete), so the Snakefile asks for these by name, next to its usual targets. ``graph``: the
    params' :class:`rib.jobs.Graph`, where the caller has one."""
    from .jobs import Graph

    root = Path(root)
    return sorted(p for p in (graph or Graph(params)).rebuildable_outputs()
                  if (root / f"{p}.damaged").exists() and not (root / p).exists())


def handle_damaged(err: DamagedFileError, root: str | os.PathLike = ".") -> str:
    """The one-line message for a damaged input met by a command; an output of the pipeline is moved aside."""
    if err.path is None or not is_output(err.path, root):
        return f"{err}; rebuild or replace it"
    try:
        aside = quarantine(err.path)
    except FileNotFoundError:  # another job met it first and moved it
        return f"{err}; already moved aside: run the pipeline again to rebuild it"
    return f"{err}; moved aside to {aside}: run the pipeline again to rebuild it"
