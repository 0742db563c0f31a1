"""Joining split downloads and extracting zip/tar archives safely and resumably.

Safety: an entry is refused when its name is absolute, has a drive letter or a ``..``
component, is a link or device, or would resolve (through symlinks already on disk) outside
the target folder. Archives never create links, so a link on disk is the user's: one at the
top of the target (a ``voxceleb1`` folder on another disk) is followed, a deeper one that
leads out is refused by name. A password-protected zip entry is refused before anything is
written. A zip is checked completely before anything is written, so one bad entry
refuses the whole archive. A ``.tar.gz`` is read as a stream (checking it first would decompress
it twice), so extraction stops at the first bad entry; nothing is ever written outside the target.

Resumability: each entry is written to a temporary name and renamed, so a file on disk is
always complete; the temporary file is removed on any failure (an archive cut short, a full
disk), and a re-run skips entries whose file exists with the right size.
"""
from __future__ import annotations

import hashlib
import os
import stat
import sys
import tarfile
import zipfile
import zlib
from typing import Callable, Iterator

from tqdm import tqdm

from ..errors import CapsvError, os_error_message
from ..utils import atomic_path
from .download import ChecksumError

# Maps an archive entry name (``/``-separated, already checked) to its path under the target
# folder, or ``None`` to skip the entry.
Route = Callable[[str], "str | None"]


class ArchiveError(CapsvError):
    """An archive that is corrupt or unsafe; the message names it and the entries."""


def keep_all(name: str) -> str:
    return name


def unsafe_reason(name: str) -> str | None:
    """Why an entry name must not be extracted, or ``None`` if it is a plain relative path."""
    if "\x00" in name:
        return "contains a NUL byte"
    unified = name.replace("\\", "/")
    if unified.startswith("/"):
        return "is an absolute path"
    if len(unified) > 1 and unified[1] == ":":
        return "has a drive letter"
    if ".." in unified.split("/"):
        return "contains '..'"
    return None


def _inside(root_real: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def _outside_reason(root: str, rel: str) -> str | None:
    """Why ``root/rel`` would land outside ``root``, or None. Archives never create links
    here, so a link on disk is the user's: one at the top of ``root`` (a ``voxceleb1``
    folder on another disk) is followed; a deeper one leading out is named."""
    out = os.path.join(root, rel)
    top = os.path.join(root, rel.split("/", 1)[0])
    if _inside(os.path.realpath(root), out) or (top != out and
                                               _inside(os.path.realpath(top), out)):
        return None
    walked = top                         # the top folder's own link is allowed (above)
    for part in rel.split("/")[1:-1]:
        walked = os.path.join(walked, part)
        if os.path.islink(walked):
            return (f"would be written through the symbolic link {walked} (on your disk, not "
                    f"in the archive) to {os.path.realpath(walked)}, outside {root}; remove "
                    "or fix that link")
    return f"would be written outside {root}"


# what reading a damaged or cut compressed archive can raise (gzip's BadGzipFile is an OSError)
READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)


def _write_atomically(source, out_path: str, size: int, bar: tqdm | None,
                      archive: str = "", entry: str = "") -> None:
    """Copy ``source`` to ``out_path`` through ``out_path.capsv-tmp``, which never outlives a
    failure: a damaged archive (reading) and a full disk (writing) are each one clear error."""
    try:
        with atomic_path(out_path, fsync=False, temp=out_path + ".capsv-tmp") as tmp:
            with open(tmp, "wb") as out:
                while True:
                    block = _read_block(source, archive, entry)
                    if not block:
                        break
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
            if os.path.getsize(tmp) != size:
                raise ArchiveError(f"{out_path}: wrote {os.path.getsize(tmp)} bytes, expected {size}")
    except OSError as exc:             # writing: reading errors arrive as ArchiveError
        raise ArchiveError(f"cannot extract {entry or out_path}: {os_error_message(exc, out_path)}; "
                           "the files already extracted are kept: fix this and run --extract "
                           "again to continue") from None


def _read_block(source, archive: str, entry: str) -> bytes:
    try:
        return source.read(1 << 20)
    except READ_ERRORS as exc:
        detail = str(exc) or type(exc).__name__
        raise ArchiveError(f"{archive}: entry {entry!r} is corrupt or the archive is cut short "
                           f"({detail}); download it again") from None


def _is_zip_link(info: zipfile.ZipInfo) -> bool:
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no unix mode
    return kind not in (0, stat.S_IFREG, stat.S_IFDIR)


def _planned_zip_entries(zf: zipfile.ZipFile, archive: str, root: str,
                         route: Route) -> tuple[list[tuple[zipfile.ZipInfo, str]], int]:
    """Check every entry; return (entry, output path) pairs and the number skipped by ``route``."""
    planned, bad, skipped = [], [], 0
    for info in zf.infolist():
        reason = unsafe_reason(info.filename)
        if reason is None and _is_zip_link(info):
            reason = "is a symbolic link or special file"
        if reason is None and not info.is_dir():
            rel = route(info.filename.replace("\\", "/"))
            if rel is None:
                skipped += 1
                continue
            out = os.path.join(root, rel)
            reason = unsafe_reason(rel) and f"would be written outside {root}"
            reason = reason or _outside_reason(root, rel)
            if reason is None:
                planned.append((info, out))
        if reason is not None:
            bad.append(f"{info.filename!r} {reason}")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        blame = ("fix the links named" if all("on your disk" in b for b in bad) else
                 "the archive is damaged or was not made for this dataset")
        raise ArchiveError(f"{archive}: refused to extract, {len(bad)} unsafe entr"
                           f"{'y' if len(bad) == 1 else 'ies'}: {shown}. Nothing was extracted; "
                           f"{blame}")
    return planned, skipped


def _refuse_encrypted(archive: str, entries: list[zipfile.ZipInfo]) -> None:
    """Password-protected entries cannot be extracted here: say so before writing anything."""
    locked = [info.filename for info in entries if info.flag_bits & 0x1]
    if locked:
        shown = ", ".join(repr(n) for n in locked[:3]) + (" ..." if len(locked) > 3 else "")
        raise ArchiveError(f"{archive}: {len(locked)} entr{'y is' if len(locked) == 1 else 'ies are'} "
                           f"encrypted ({shown}); capsv does not extract password-protected "
                           "zips: extract it yourself (unzip asks for the password) into the "
                           "dataset folder, or download an unencrypted copy")


def extract_zip(archive: str, root: str, route: Route = keep_all, progress: bool = True) -> tuple[int, int]:
    """Extract ``archive`` under ``root``; return (files written, files already there)."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{archive}: not a readable zip ({exc}); if it was joined from parts, "
                           "one part is missing or incomplete: re-run with --download") from None
    with zf:
        planned, skipped = _planned_zip_entries(zf, archive, root, route)
        _refuse_encrypted(archive, [info for info, _ in planned])
        if skipped:
            tqdm.write(f"{os.path.basename(archive)}: {skipped} entries outside the expected "
                       "layout were skipped", file=sys.stderr)
        todo = [(info, out) for info, out in planned
                if not (os.path.isfile(out) and os.path.getsize(out) == info.file_size)]
        total = sum(info.file_size for info, _ in todo)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                  desc=f"extract {os.path.basename(archive)}", disable=not progress) as bar:
            for info, out in todo:
                try:
                    with zf.open(info) as source:
                        _write_atomically(source, out, info.file_size, bar, archive,
                                          info.filename)
                except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
                    raise ArchiveError(f"{archive}: entry {info.filename!r} is corrupt ({exc}); "
                                       "download the archive again") from None
    return len(todo), len(planned) - len(todo)


class _CountingReader:
    """A file wrapper that advances a progress bar by the bytes read (compressed bytes)."""

    def __init__(self, f, bar: tqdm):
        self.f, self.bar = f, bar

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.bar.update(len(data))
        return data


def _tar_members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tf
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"{tf.name}: the archive is corrupt or truncated ({exc}); "
                           "download it again") from None


def extract_tar(archive: str, root: str, route: Route = keep_all, progress: bool = True) -> tuple[int, int]:
    """Extract a (compressed) tar under ``root`` in one streaming pass; see the module docstring."""
    written = present = 0
    with open(archive, "rb") as raw, \
            tqdm(total=os.path.getsize(archive), unit="B", unit_scale=True, unit_divisor=1024,
                 desc=f"extract {os.path.basename(archive)}", file=sys.stderr,
                 disable=not progress) as bar:
        try:
            tf = tarfile.open(fileobj=_CountingReader(raw, bar), mode="r|*")
        except tarfile.TarError as exc:
            raise ArchiveError(f"{archive}: not a readable tar archive ({exc})") from None
        with tf:
            for member in _tar_members(tf):
                if member.isdir():
                    continue
                reason = unsafe_reason(member.name)
                if reason is None and not member.isfile():
                    reason = "is a link or special file"
                rel = route(member.name) if reason is None else None
                if reason is None and rel is None:
                    continue
                out = os.path.join(root, rel) if rel is not None else ""
                if reason is None and unsafe_reason(rel):
                    reason = f"would be written outside {root}"
                if reason is None:
                    reason = _outside_reason(root, rel)
                if reason is not None:
                    raise ArchiveError(f"{archive}: refused entry {member.name!r}: it {reason}; "
                                       "extraction stopped (nothing was written outside the target)")
                if os.path.isfile(out) and os.path.getsize(out) == member.size:
                    present += 1
                    continue
                _write_atomically(tf.extractfile(member), out, member.size, None, archive,
                                  member.name)
                written += 1
    return written, present


def extract_archive(archive: str, root: str, route: Route = keep_all, progress: bool = True) -> tuple[int, int]:
    """Extract a zip or tar archive (chosen by content) under ``root``."""
    if zipfile.is_zipfile(archive):
        return extract_zip(archive, root, route, progress)
    return extract_tar(archive, root, route, progress)


def concatenate(parts: list[str], out_path: str, expected_md5: str | None = None,
                progress: bool = True) -> str:
    """Join ``parts`` in order into ``out_path``; return its md5.

    The bytes go to ``out_path.part``, renamed only when the md5 matches ``expected_md5``
    (when given); on a mismatch the result is kept aside as ``out_path.bad``.
    """
    digest = hashlib.md5()
    total = sum(os.path.getsize(p) for p in parts)
    with atomic_path(out_path, fsync=False, temp=out_path + ".part") as tmp:
        with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                          desc=f"join {os.path.basename(out_path)}",
                                          file=sys.stderr, disable=not progress) as bar:
            for part in parts:
                with open(part, "rb") as source:
                    for block in iter(lambda: source.read(1 << 22), b""):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        md5 = digest.hexdigest()
        if expected_md5 is not None and md5 != expected_md5:
            bad = out_path + ".bad"
            os.replace(tmp, bad)
            names = ", ".join(os.path.basename(p) for p in parts)
            raise ChecksumError(f"{os.path.basename(out_path)}: the joined file's md5 is {md5}, "
                                f"expected {expected_md5}: a part is missing, partial or from "
                                f"another release (joined: {names}). It was kept aside as {bad}; "
                                "re-run with --download to check the parts, then --extract again")
    return md5
