"""A local Hugging Face Hub endpoint (stdlib only) for the download tests: the real hub is never contacted.

It serves what huggingface_hub's `get_hf_file_metadata`, `HfApi.get_paths_info` and `http_get` ask:

  HEAD/GET /{repo}/resolve/{revision}/{file}   302 to CDN/cdn/{sha256} (another port: another origin,
                                               as the hub's CDN is, so the client stops there), with X-Repo-Commit, X-Linked-Etag
                                               (the LFS sha256, quoted), X-Linked-Size and ETag, as the
                                               hub answers for an LFS file; 404 with X-Error-Code
                                               (RepoNotFound / EntryNotFound) otherwise
  GET /cdn/{sha256}                            the bytes: 200, or 206 with Content-Range for a
                                               ``Range: bytes=N-`` (or N-M) request
  POST /api/models/{repo}/paths-info/{rev}     the form's ``paths`` as the hub lists them: type,
                                               path, size, oid, lfs {oid, size, pointerSize}

`FakeHub.files` maps (repo, path) to the bytes; `published` overrides the sha256 the hub states
for a file (a wrong-digest test serves other bytes than it publishes). `requests` logs what came
in (method, path, the Range header) for the tests' assertions.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Seen:
    method: str
    path: str
    range: str | None


@dataclass
class FakeHub:
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    published: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    base_url: str = ""
    cdn_url: str = ""  # the same handler on a second port
    _servers: tuple[ThreadingHTTPServer, ...] = ()

    def sha256(self, repo: str, path: str) -> str:
        return self.published.get((repo, path)) or hashlib.sha256(self.files[(repo, path)]).hexdigest()

    def blob(self, sha: str) -> bytes | None:
        return next((b for k, b in self.files.items() if self.sha256(*k) == sha), None)

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _seen(self) -> None:
                hub.requests.append(Seen(self.command, urllib.parse.unquote(self.path), self.headers.get("Range")))

            def _send(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _resolve(self, head: bool) -> None:
                m = re.match(r"^/(.+?/.+?)/resolve/([^/]+)/(.+)$", urllib.parse.unquote(self.path))
                if not m:
                    return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"not found", head)
                repo, _rev, path = m.groups()
                if not any(r == repo for r, _ in hub.files):
                    return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found", head)
                if (repo, path) not in hub.files:
                    return self._send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT},
                                      b"Entry not found", head)
                sha = hub.sha256(repo, path)
                return self._send(302, {
                    "Location": f"{hub.cdn_url}/cdn/{sha}", "X-Repo-Commit": COMMIT, "ETag": '"gitblob"',
                    "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(hub.files[(repo, path)])),
                }, b"", head)

            def _cdn(self, head: bool) -> None:
                data = hub.blob(self.path.rsplit("/", 1)[-1])
                if data is None:
                    return self._send(404, {}, b"no such blob", head)
                rng = self.headers.get("Range")
                m = re.match(r"^bytes=(\d+)-(\d*)$", rng or "")
                if m:
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else len(data) - 1
                    if start >= len(data):
                        return self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"", head)
                    part = data[start:end + 1]
                    return self._send(206, {"Content-Range": f"bytes {start}-{start + len(part) - 1}/{len(data)}",
                                            "Accept-Ranges": "bytes", "ETag": f'"{hashlib.sha256(data).hexdigest()}"'},
                                      part, head)
                return self._send(200, {"Accept-Ranges": "bytes"}, data, head)

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's names)
                self._seen()
                (self._cdn if self.path.startswith("/cdn/") else self._resolve)(True)

            def do_GET(self) -> None:  # noqa: N802
                self._seen()
                (self._cdn if self.path.startswith("/cdn/") else self._resolve)(False)

            def do_POST(self) -> None:  # noqa: N802
                self._seen()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                m = re.match(r"^/api/models/(.+?/.+?)/paths-info/([^/]+)$", urllib.parse.unquote(self.path))
                if not m:
                    return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"not found")
                repo = m.group(1)
                if not any(r == repo for r, _ in hub.files):
                    return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found")
                form = urllib.parse.parse_qs(body)
                paths = form.get("paths", [])
                out = [{"type": "file", "path": p, "size": len(hub.files[(repo, p)]), "oid": "gitblob",
                        "lfs": {"oid": hub.sha256(repo, p), "size": len(hub.files[(repo, p)]), "pointerSize": 134}}
                       for p in paths if (repo, p) in hub.files]
                return self._send(200, {"Content-Type": "application/json"}, json.dumps(out).encode())

        self._servers = (ThreadingHTTPServer(("127.0.0.1", 0), Handler), ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        for srv in self._servers:
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.base_url, self.cdn_url = (f"http://127.0.0.1:{srv.server_address[1]}" for srv in self._servers)
        return self

    def __exit__(self, *exc: Any) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
