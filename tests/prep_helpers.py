"""Shared by the data-preparation tests: a real HTTP file server on 127.0.0.1 and audio builders."""
from __future__ import annotations

import base64
import hashlib
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import soundfile as sf

from capsv.audio import write_m4a  # noqa: F401  (re-exported for the prep tests)


class FileServer:
    """Serves ``files`` (name -> bytes) over HTTP with Range support.

    Routes: ``/vox/<name>`` (basic auth when ``user`` is set), ``/download?file=<name>&key=<k>``
    (access key), ``/open/<name>`` and ``/meta/<name>`` (no auth). ``stall_at[name] = n`` makes
    the first request for ``name`` send ``n`` bytes and then hang until :meth:`close`.
    ``drop_at[name] = n`` makes the first request send ``n`` bytes and close the connection;
    ``honour_range = False`` makes the server ignore Range headers (a full 200 reply).
    ``requests`` records (path, Range header or None, status) for every request.
    """

    def __init__(self, files: dict[str, bytes], user: str | None = None,
                 password: str | None = None, key: str | None = None):
        self.files = files
        self.user, self.password, self.key = user, password, key
        self.stall_at: dict[str, int] = {}
        self.drop_at: dict[str, int] = {}
        self.honour_range = True
        self.requests: list[tuple[str, str | None, int]] = []
        self.release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def ranges(self, name: str) -> list[str | None]:
        return [r for path, r, _ in self.requests if name in path]

    def _authorised(self, route: str, query: dict, headers) -> tuple[str | None, bool]:
        if route.startswith("/vox/"):
            name = route[len("/vox/"):]
            if self.user is None:
                return name, True
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return name, headers.get("Authorization") == f"Basic {token}"
        if route == "/download":
            return query.get("file", [None])[0], query.get("key", [None])[0] == self.key
        for prefix in ("/open/", "/meta/"):
            if route.startswith(prefix):
                return route[len(prefix):], True
        return None, True

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict | None = None):
                server.requests.append((self.path, self.headers.get("Range"), status))
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return body

            def do_GET(self):
                parts = urllib.parse.urlsplit(self.path)
                name, ok = server._authorised(urllib.parse.unquote(parts.path),
                                              urllib.parse.parse_qs(parts.query), self.headers)
                if not ok:
                    self.wfile.write(self._reply(401, b"unauthorised"))
                    return
                if name not in server.files:
                    self.wfile.write(self._reply(404, b"not found"))
                    return
                data = server.files[name]
                start, status, extra = 0, 200, {}
                header = self.headers.get("Range")
                if header and server.honour_range:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.wfile.write(self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"}))
                        return
                    status, extra = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                server.requests.append((self.path, header, status))
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                stall = server.stall_at.pop(name, None)
                drop = server.drop_at.pop(name, None)
                try:
                    if drop is not None:
                        self.wfile.write(data[start:drop])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if stall is not None:
                        self.wfile.write(data[start:stall])
                        self.wfile.flush()
                        server.release.wait(60)
                        return
                    for i in range(start, len(data), 65536):
                        self.wfile.write(data[i:i + 65536])
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tone(seconds: float, freq: float, seed: int = 0) -> np.ndarray:
    """A tone plus a little noise, int16, 16 kHz."""
    t = np.arange(int(seconds * 16000)) / 16000
    noise = np.random.default_rng(seed).normal(0, 300, t.size)
    return (np.sin(2 * np.pi * freq * t) * 6000 + noise).astype(np.int16)


def write_wav(path: str, samples: np.ndarray, rate: int = 16000) -> None:
    sf.write(path, samples, rate, subtype="PCM_16")
