"""Parallel, resumable, md5-verified HTTP downloads (standard library only).

What a user of the dataset scripts runs into, and what this module does about it:

* hosts and credentials change: every file's URL comes from a base URL (or a per-file URL in
  the parts list), with HTTP basic auth (``user``/``password``) or an access key
  (``...?file=<name>&key=<KEY>``); a 401/403 stops everything with one clear message;
* downloads die half way: bytes go to ``<name>.part`` and a re-run continues it with an HTTP
  ``Range`` request; network hiccups are retried the same way;
* a part is silently truncated or corrupt: the md5 is checked before ``<name>.part`` becomes
  ``<name>``; a mismatch moves the file aside to ``<name>.bad`` and says so;
* secrets leak into logs: every message passes through :func:`redact`.

A verified file gets a marker in ``<dest>/.capsv/verified/`` (md5 and size), so a re-run skips
it without hashing tens of gigabytes again.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from ..errors import CapsvError
from ..utils import atomic_write_text

STATE_DIR = ".capsv"
CHUNK = 256 * 1024


class DownloadError(CapsvError):
    """A file could not be fetched or verified; the message names it and says what to do."""


class CredentialsError(DownloadError):
    """The server refused the credentials (HTTP 401/403)."""


class ChecksumError(DownloadError):
    """A file's md5 differs from the list's; the file was moved aside as ``<name>.bad``."""


class _Cancelled(Exception):
    pass


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: its name on disk, expected md5 (None: not checked), optional full URL."""
    name: str
    md5: str | None = None
    url: str | None = None


@dataclass
class Credentials:
    """HTTP basic auth and/or an access key. ``repr`` never shows the secrets."""
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    key: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        out = [s for s in (self.password, self.key) if s]
        if self.user and self.password:
            out.append(self._basic_token())
        # a secret also shows up percent-encoded inside URLs
        out += [urllib.parse.quote(s, safe="") for s in list(out)]
        return sorted(set(out), key=len, reverse=True)

    def _basic_token(self) -> str:
        return base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

    def header(self) -> str | None:
        return f"Basic {self._basic_token()}" if self.user and self.password is not None else None


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with the secrets, any ``key=`` URL parameter and any ``user:password@`` in a URL
    replaced by ``***``. (Secrets shorter than 4 characters are only hidden in those URL
    positions: replacing them everywhere would garble every message.)"""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    text = re.sub(r"([?&](?:key|password|token)=)[^&\s]*", r"\1***", text)
    return re.sub(r"(//[^/:@\s]+):[^@/\s]*@", r"\1:***@", text)


def read_parts_list(path: str) -> list[RemoteFile]:
    """Parse a parts list: lines ``<file name> <md5> [url]``; ``#`` starts a comment."""
    if not os.path.isfile(path):
        raise DownloadError(f"{path}: parts list not found")
    files = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) not in (2, 3) or not re.fullmatch(r"[0-9a-fA-F]{32}|-", fields[1]):
                raise DownloadError(f"{path}:{number}: expected '<file name> <md5> [url]' with a "
                                    f"32-digit hex md5 (or '-' for none), found {line.strip()[:120]!r}")
            name = fields[0]
            if os.path.basename(name) != name or name in (".", ".."):
                raise DownloadError(f"{path}:{number}: file name {name!r} must not contain a folder")
            md5 = None if fields[1] == "-" else fields[1].lower()
            files.append(RemoteFile(name, md5, fields[2] if len(fields) == 3 else None))
    if not files:
        raise DownloadError(f"{path}: the parts list is empty")
    return files


def build_url(base_url: str, name: str, key: str | None = None) -> str:
    """The URL of ``name``: ``{file}``/``{key}`` placeholders in ``base_url`` are filled;
    otherwise ``base_url/name``, or ``base_url?file=name&key=KEY`` when a key is given."""
    quoted = urllib.parse.quote(name)
    if "{file}" in base_url:
        return base_url.replace("{file}", quoted).replace("{key}", urllib.parse.quote(key or "", safe=""))
    if key:
        sep = "&" if "?" in base_url else "?"
        return f"{base_url}{sep}" + urllib.parse.urlencode({"file": name, "key": key})
    return base_url.rstrip("/") + "/" + quoted


def file_md5(path: str, bar: tqdm | None = None) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            if bar is not None:
                bar.update(len(block))
    return digest.hexdigest()


# -- verified markers ------------------------------------------------------------------------

def _marker(dest: str, name: str) -> str:
    return os.path.join(dest, STATE_DIR, "verified", name)


def is_verified(dest: str, item: RemoteFile) -> bool:
    """True when ``dest/name`` was verified before and still has the recorded size and md5."""
    path, marker = os.path.join(dest, item.name), _marker(dest, item.name)
    if not (os.path.isfile(path) and os.path.isfile(marker)):
        return False
    with open(marker, encoding="utf-8") as f:
        fields = f.read().split()
    return (len(fields) == 2 and fields[1] == str(os.path.getsize(path))
            and (item.md5 is None or fields[0] == item.md5))


def mark_verified(dest: str, name: str, md5: str) -> None:
    marker = _marker(dest, name)
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    size = os.path.getsize(os.path.join(dest, name))
    atomic_write_text(marker, f"{md5} {size}\n")


def set_aside(path: str, bad: str | None = None) -> str:
    """Rename a bad file to ``bad`` (default ``<path>.bad``, replacing an older one); return it."""
    bad = bad or path + ".bad"
    os.replace(path, bad)
    return bad


def checksum_error(name: str, expected: str, actual: str, bad_path: str) -> ChecksumError:
    return ChecksumError(
        f"{name}: md5 is {actual}, expected {expected}; the file is corrupt or incomplete. "
        f"It was kept aside as {bad_path}. Re-run to download it again; if it fails again, "
        "check the md5 in the parts list (--parts_list) and the server (--base_url)")


# -- HTTP ------------------------------------------------------------------------------------

class _SameHostAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but send the Authorization header only back to the same host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and urllib.parse.urlsplit(newurl).netloc == \
                urllib.parse.urlsplit(req.full_url).netloc:
            new.add_unredirected_header("Authorization", auth)
        return new


class Downloader:
    """Fetch files into ``dest`` with ``jobs`` threads; see the module docstring."""

    def __init__(self, dest: str, base_url: str | None, credentials: Credentials | None = None,
                 jobs: int = 4, retries: int = 3, timeout: float = 60.0, progress: bool = True,
                 retry_wait: float = 2.0):
        self.dest = dest
        self.base_url = base_url
        self.credentials = credentials or Credentials()
        self.jobs = max(1, jobs)
        self.retries = retries
        self.timeout = timeout
        self.progress = progress
        self.retry_wait = retry_wait
        self._secrets = self.credentials.secrets()
        self._opener = urllib.request.build_opener(_SameHostAuthRedirect())
        self._opener.addheaders = [("User-Agent", "capsv-prepare")]
        self._cancel = threading.Event()
        self._lock = threading.Lock()

    # messages ----------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def say(self, text: str) -> None:
        tqdm.write(self.redact(text), file=sys.stderr)

    def url_for(self, item: RemoteFile) -> str:
        if item.url:
            return item.url
        if not self.base_url:
            raise DownloadError(f"{item.name}: no URL: give --base_url (or a URL column in the parts list)")
        return build_url(self.base_url, item.name, self.credentials.key)

    # public ------------------------------------------------------------------------------
    def fetch_all(self, items: list[RemoteFile]) -> list[str]:
        """Fetch every item (skipping verified ones); return their paths.

        Raises :class:`CredentialsError` at the first refusal, else one :class:`DownloadError`
        listing every file that failed after all the others were fetched.
        """
        os.makedirs(self.dest, exist_ok=True)
        items = list({it.name: it for it in items}.values())  # one thread per file name
        todo = [it for it in items if not is_verified(self.dest, it)]
        for it in items:
            if it not in todo:
                self.say(f"{it.name}: already downloaded and verified, skipped")
        bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="download",
                   disable=not self.progress or not todo, file=sys.stderr, dynamic_ncols=True)
        errors: dict[str, Exception] = {}
        with bar, ThreadPoolExecutor(self.jobs) as pool:
            futures = {pool.submit(self._fetch_one, it, bar): it for it in todo}
            try:
                for future, it in futures.items():
                    try:
                        future.result()
                    except _Cancelled:
                        pass
                    except DownloadError as exc:
                        if isinstance(exc, CredentialsError):
                            raise
                        errors[it.name] = exc
            except BaseException:  # a refusal, Ctrl-C, a bug: stop the other threads promptly
                self._cancel.set()
                for future in futures:
                    future.cancel()
                raise
        if errors:
            lines = "\n  ".join(self.redact(str(e)) for e in errors.values())
            raise DownloadError(f"{len(errors)} of {len(items)} downloads failed:\n  {lines}")
        return [os.path.join(self.dest, it.name) for it in items]

    # one file ----------------------------------------------------------------------------
    def _fetch_one(self, item: RemoteFile, bar: tqdm) -> None:
        final = os.path.join(self.dest, item.name)
        if os.path.isfile(final):
            if self._verify_existing(item, final):
                return
        part = final + ".part"
        attempt = 0
        while True:
            if self._cancel.is_set():
                raise _Cancelled
            try:
                md5 = self._transfer(item, part, bar)
                break
            except (DownloadError, _Cancelled):
                raise
            except Exception as exc:  # network trouble: resume from what we have
                attempt += 1
                if attempt > self.retries:
                    raise DownloadError(self.redact(
                        f"{item.name}: download failed after {attempt} attempts from "
                        f"{_host(self.url_for(item))} ({_describe(exc)}); "
                        f"{os.path.getsize(part) if os.path.exists(part) else 0} bytes are kept "
                        f"in {part}: re-run to resume. If the host cannot be reached, check the "
                        "network and --base_url (the dataset's host has moved over the years)")) from None
                self.say(f"{item.name}: {_describe(exc)}; retrying ({attempt}/{self.retries})")
                time.sleep(self.retry_wait * attempt)
        if item.md5 is not None and md5 != item.md5:
            bad = set_aside(part, final + ".bad")
            raise checksum_error(item.name, item.md5, md5, bad)
        os.replace(part, final)
        mark_verified(self.dest, item.name, md5)
        self.say(f"{item.name}: downloaded, md5 {'verified' if item.md5 else 'not listed'}")

    def _verify_existing(self, item: RemoteFile, final: str) -> bool:
        """A file present without a marker (e.g. fetched by hand): keep it if its md5 is right."""
        if item.md5 is None:
            mark_verified(self.dest, item.name, file_md5(final))
            return True
        self.say(f"{item.name}: found without a verification record; checking its md5")
        actual = file_md5(final)
        if actual == item.md5:
            mark_verified(self.dest, item.name, actual)
            self.say(f"{item.name}: already present, md5 verified")
            return True
        bad = set_aside(final)
        self.say(f"{item.name}: present but its md5 is {actual}, expected {item.md5}; "
                 f"moved aside to {bad}, downloading again")
        return False

    def _transfer(self, item: RemoteFile, part: str, bar: tqdm) -> str:
        """Download into ``part`` (resuming it); return the md5 of the whole file."""
        have = os.path.getsize(part) if os.path.exists(part) else 0
        digest = hashlib.md5()
        if have:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        url = self.url_for(item)
        request = urllib.request.Request(url)
        header = self.credentials.header()
        if header:
            request.add_unredirected_header("Authorization", header)
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and have:  # nothing left to send: the .part is complete
                return digest.hexdigest()
            if exc.code >= 500 or exc.code == 429:  # the server's trouble: worth a retry
                raise ConnectionError(f"HTTP {exc.code} {exc.reason}") from None
            raise self._http_error(item, url, exc.code, exc.reason) from None
        with response:
            if have and response.status == 206:
                start = _range_start(response.headers.get("Content-Range", ""))
                if start != have:
                    raise DownloadError(f"{item.name}: the server resumed at byte {start}, not {have}; "
                                        f"delete {part} and re-run")
                self.say(f"{item.name}: resuming at byte {have}")
            elif have:  # the server ignored Range: start over
                self.say(f"{item.name}: the server does not support resuming; starting over")
                have, digest = 0, hashlib.md5()
            length = response.headers.get("Content-Length")
            expected_end = have + int(length) if length is not None else None
            with self._lock:
                bar.total += (expected_end or have)
                bar.update(have)
            with open(part, "ab" if have else "wb", buffering=0) as out:
                while True:
                    if self._cancel.is_set():
                        raise _Cancelled
                    block = response.read1(CHUNK)
                    if not block:
                        break
                    try:
                        out.write(block)
                    except OSError as exc:  # disk full, permissions: retrying will not help
                        raise DownloadError(f"{part}: cannot write ({exc}); free some space or fix "
                                            "the folder, then re-run to resume") from None
                    digest.update(block)
                    with self._lock:
                        bar.update(len(block))
            size = os.path.getsize(part)
            if expected_end is not None and size < expected_end:
                raise ConnectionError(f"connection closed at byte {size} of {expected_end}")
        return digest.hexdigest()

    def _http_error(self, item: RemoteFile, url: str, code: int, reason) -> DownloadError:
        where = self.redact(url)
        if code in (401, 403):
            how = ("check --key (access keys expire; request a new one)" if self.credentials.key else
                   "check --user and --password (or the CAPSV_PASSWORD environment variable)"
                   if self.credentials.user else
                   "this server needs credentials: give --user and --password, or --key")
            return CredentialsError(f"{item.name}: the server refused the credentials "
                                    f"(HTTP {code} {reason}) at {where}; {how}")
        if code == 404:
            return DownloadError(f"{item.name}: not found (HTTP 404) at {where}; the dataset's "
                                 "host has moved over the years: set --base_url to the current "
                                 "address (or give per-file URLs in --parts_list)")
        return DownloadError(f"{item.name}: HTTP {code} {reason} at {where}")


def _range_start(content_range: str) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", content_range)
    return int(match.group(1)) if match else None


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
