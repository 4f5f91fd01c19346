"""A page opened in Debian's headless chromium over the DevTools protocol (stdlib only): what a person sees.

`open_page(url)` starts chromium on a free debugging port, loads the page and returns a `PageView`:
its headings and text, the size every <svg> and <img> is drawn at, every console error and
uncaught exception, and every request the page made (beyond its own file). It can save a
full-page PNG screenshot. The websocket client is the minimum RFC 6455 needs (one text frame per
message, client frames masked): no browser download, no pip package.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The browser binary: $ABTEST_CHROMIUM, else the first of CANDIDATES on PATH."""
    env = os.environ.get("ABTEST_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    return next((p for c in CANDIDATES if (p := shutil.which(c))), None)


@dataclass
class PageView:
    url: str
    title: str
    headings: list[str]  # h1, h2 and h3 texts, in order
    text: str  # document.body.innerText: what is on the screen, as text
    graphics: list[dict[str, Any]]  # every svg and img: {"id", "width", "height"} as drawn (CSS px)
    console_errors: list[str] = field(default_factory=list)  # console.error, exceptions, log errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, its own excluded
    page_height: int = 0


class _WebSocket:
    """Just enough websocket for the DevTools protocol: text frames, masked from the client."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the websocket handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools refused the websocket: {head[:200]!r}")
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def send(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        header = bytes([0x81])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("DevTools closed the websocket")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            if opcode in (0x9, 0xA):  # ping/pong: not ours
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()

    def pending(self) -> bool:
        return bool(self.buf) or bool(select.select([self.sock], [], [], 0)[0])

    def close(self) -> None:
        self.sock.close()


class _Session:
    def __init__(self, ws: _WebSocket) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(e["method"] == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout_s} s")
            self.ws.sock.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(json.loads(self.ws.recv()))

    def drain(self, settle_s: float = 0.3) -> None:
        """Collect the events that arrive until none has for `settle_s`."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle_s:
            if self.ws.pending():
                self.events.append(json.loads(self.ws.recv()))
                quiet_since = time.monotonic()
            else:
                time.sleep(0.05)


_PROBE = """(() => {
  const box = e => { const r = e.getBoundingClientRect(); return {id: e.closest('figure')?.id || e.id || e.tagName,
                     width: r.width, height: r.height}; };
  return JSON.stringify({
    title: document.title,
    headings: [...document.querySelectorAll('h1, h2, h3')].map(h => h.innerText.trim()),
    text: document.body.innerText,
    graphics: [...document.querySelectorAll('svg, img')].filter(e => !e.parentElement.closest('svg')).map(box),
    height: Math.ceil(document.documentElement.scrollHeight),
  });
})()"""


def open_page(url: str, *, width: int = 1280, height: int = 900, screenshot: Path | None = None,
              timeout_s: float = 60.0) -> PageView:
    """Load `url` in headless chromium and report what it shows; `screenshot` saves the whole page."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (apt-get install -y chromium, or set $ABTEST_CHROMIUM)")
    profile = tempfile.mkdtemp(prefix="abtest-chromium-")
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
         f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ws = None
    try:
        browser_ws = _devtools_url(proc, timeout_s)
        ws = _WebSocket(browser_ws, timeout_s)
        s = _Session(ws)
        target = s.call("Target.createTarget", url="about:blank")["targetId"]
        session_ws = browser_ws.rsplit("/devtools/", 1)[0] + f"/devtools/page/{target}"
        ws.close()
        ws = _WebSocket(session_ws, timeout_s)
        s = _Session(ws)
        for domain in ("Page", "Runtime", "Log", "Network"):
            s.call(f"{domain}.enable")
        s.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        s.events.clear()
        s.call("Page.navigate", url=url)
        s.wait_for("Page.loadEventFired", timeout_s)
        s.drain()
        probe = json.loads(s.call("Runtime.evaluate", expression=_PROBE, returnByValue=True)["result"]["value"])
        s.drain(0.1)
        view = PageView(url=url, title=probe["title"], headings=probe["headings"], text=probe["text"],
                        graphics=probe["graphics"], page_height=probe["height"])
        view.console_errors, view.requests = _errors_and_requests(s.events, url)
        if screenshot is not None:
            s.call("Emulation.setDeviceMetricsOverride", width=width, height=max(height, view.page_height),
                   deviceScaleFactor=1, mobile=False)
            shot = s.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        return view
    finally:
        if ws is not None:
            ws.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_url(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The browser's websocket, from the "DevTools listening on ws://…" line chromium prints."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        if not select.select([proc.stderr], [], [], 0.5)[0]:
            if proc.poll() is not None:
                break
            continue
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line.strip())
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:
            return m.group(1)
    raise RuntimeError("chromium did not open its DevTools port: " + " | ".join(seen[-5:]))


def _errors_and_requests(events: list[dict[str, Any]], own_url: str) -> tuple[list[str], list[str]]:
    errors, requests = [], []
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            errors.append(p.get("exceptionDetails", {}).get("text", "exception"))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append(p["entry"].get("text", ""))
        elif m == "Network.requestWillBeSent":
            req = p.get("request", {}).get("url", "")
            if req and req != own_url and not req.startswith("data:"):
                requests.append(req)
    return errors, requests
