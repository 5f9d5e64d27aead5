"""Unpacking archives (tar, tar.gz, zip) without ever writing outside the target folder.

A member with an absolute path, a ``..`` that climbs out, or a link (symbolic or hard) that points
outside is refused with an error naming the archive and the member; nothing of that archive is
kept. Device files and other special members are refused too.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import RibError
from ..progress import progress

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


class ArchiveError(RibError):
    pass


def is_archive(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return name.endswith(ARCHIVE_SUFFIXES)


def _within(dest: Path, target: Path) -> bool:
    target = Path(os.path.normpath(target))
    return target == dest or dest in target.parents


def _inside(dest: Path, name: str) -> bool:
    """Would archive member ``name`` land inside ``dest``?"""
    if PurePosixPath(name).is_absolute() or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        return False
    return _within(dest, dest / name)


def _check_tar(tar: tarfile.TarFile, dest: Path, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        if not _inside(dest, m.name):
            raise ArchiveError(f"{archive}: member {m.name!r} would be written outside the target folder; refused")
        if m.issym() or m.islnk():
            # a symbolic link is relative to its own folder, a hard link to the archive's root
            base = (dest / m.name).parent if m.issym() else dest
            if PurePosixPath(m.linkname).is_absolute() or not _within(dest, base / m.linkname):
                raise ArchiveError(f"{archive}: link {m.name!r} -> {m.linkname!r} points outside the target "
                                   "folder; refused")
        elif not (m.isfile() or m.isdir()):
            raise ArchiveError(f"{archive}: member {m.name!r} is not a file or folder; refused")
    return members


def _extract_tar(archive: Path, dest: Path, show_progress: bool) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _check_tar(tar, dest, archive)
            for m in progress(members, desc=f"extract {archive.name}", unit="file", enabled=show_progress):
                # The 'data' filter re-checks every member (paths, links, permissions) as it writes.
                tar.extract(m, dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        if isinstance(err, tarfile.FilterError):
            raise ArchiveError(f"{archive}: member refused ({err}); refused") from None
        raise ArchiveError(f"{archive}: not a readable tar archive ({type(err).__name__}: {err})") from None


def _extract_zip(archive: Path, dest: Path, show_progress: bool) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                if not _inside(dest, info.filename):
                    raise ArchiveError(f"{archive}: member {info.filename!r} would be written outside the target "
                                       "folder; refused")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise ArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; refused")
            for info in progress(infos, desc=f"extract {archive.name}", unit="file", enabled=show_progress):
                zf.extract(info, dest)
    except (zipfile.BadZipFile, OSError, RuntimeError) as err:
        raise ArchiveError(f"{archive}: not a readable zip archive ({type(err).__name__}: {err})") from None


def extract(archive: str | os.PathLike, dest: str | os.PathLike, show_progress: bool = True) -> None:
    """Unpack ``archive`` into the existing folder ``dest``."""
    archive, dest = Path(archive), Path(dest).resolve()
    if not archive.is_file():
        raise ArchiveError(f"{archive}: archive not found")
    if archive.name.lower().endswith(".zip"):
        _extract_zip(archive, dest, show_progress)
    elif archive.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
        _extract_tar(archive, dest, show_progress)
    else:
        raise ArchiveError(f"{archive}: unknown archive format (expected {', '.join(ARCHIVE_SUFFIXES)})")
