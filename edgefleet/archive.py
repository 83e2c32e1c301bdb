"""Safe extraction of tar archives (model packages and SageMaker model.tar.gz).

Every member is checked before anything is written: no absolute paths, no `..`, no links
that leave the destination, no device files, and caps on member count and total size (taken
from the headers, which tarfile enforces when it reads the data). Python's `data` filter is
applied on top as a second line.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgefleet.errors import UnsafeArchiveError

GiB = 1024**3


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int = 2 * GiB
    max_member_bytes: int = 2 * GiB
    max_members: int = 10_000


def check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} has an absolute path", "rebuild the archive with relative paths"
        )
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} climbs out with '..'", "rebuild the archive without '..' in member names"
        )
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = PurePosixPath(name).parent if member.issym() else PurePosixPath()
        resolved = os.path.normpath(str(base / target))
        if target.is_absolute() or resolved.startswith(".."):
            raise UnsafeArchiveError(
                f"{archive}: member {name!r} is a link to {member.linkname!r}, outside the archive",
                "rebuild the archive with the file itself instead of the link",
            )
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} is a device, fifo or other special file",
            "rebuild the archive with regular files only",
        )


def check_archive(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[tarfile.TarInfo]:
    """Open `path`, check every member, and return the members; raise on anything unsafe."""
    path = Path(path)
    try:
        with tarfile.open(path, "r:*") as tar:
            members = []
            total = 0
            for member in tar:
                members.append(member)
                if len(members) > limits.max_members:
                    raise UnsafeArchiveError(
                        f"{path}: more than {limits.max_members} members", "split or slim the archive"
                    )
                check_member(member, path)
                if member.size > limits.max_member_bytes:
                    raise UnsafeArchiveError(
                        f"{path}: member {member.name!r} is {member.size} bytes, over the {limits.max_member_bytes}-byte cap",
                        "check the archive; raise the cap only if the model is really this large",
                    )
                total += member.size
                if total > limits.max_total_bytes:
                    raise UnsafeArchiveError(
                        f"{path}: unpacks to more than {limits.max_total_bytes} bytes",
                        "check the archive; raise the cap only if the model is really this large",
                    )
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UnsafeArchiveError(
            f"{path} is not a readable tar archive ({exc})", "check that the file is complete and is a .tar or .tar.gz"
        ) from None
    return members


def safe_extract(path: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[str]:
    """Check then extract `path` into `dest`; return the names of the regular files."""
    members = check_archive(path, limits)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(path, "r:*") as tar:
            # Debian bookworm's Python 3.11.2 (Raspberry Pi OS cameras) has no extraction
            # filters; there the member checks above are the only line (found under QEMU).
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchiveError(f"{path}: extraction refused or failed ({exc})", "rebuild the archive") from None
    return [m.name for m in members if m.isfile()]
