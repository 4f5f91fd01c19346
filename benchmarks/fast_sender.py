"""A minimal scripted SSE sender for benchmarks/client_accuracy.py: the same wire format and the
same log as `tests/fakes/scripted.py` (llama-server's /completion stream), built to send fast on one core.

Why: the stock `tests/fakes/scripted.py` server (one coroutine per request, StreamReader parsing, an
``await drain()`` and a ``asyncio.sleep`` per event) saturates its core near 30k events/s, so
the ingest sweep measured the sender, not the client. Differences from `tests/fakes/scripted.py`:

- one ``asyncio.Protocol`` per connection on uvloop; no StreamReader, no coroutine per request;
- "request read" (``kind="request"``) is stamped at the top of ``data_received`` for the bytes
  that completed the request -- the first moment user space holds the whole request -- not
  after the HTTP parse, the JSON parse and the coroutine switches (``tests/fakes/scripted.py`` stamps at
  the start of ``_completion``). The post-parse time is kept too (``parsed`` in the dump);
- one timer for the whole server: a heap of (planned time, stream) and one callback that writes
  every due event of every connection in the same loop iteration (lockstep events of N
  connections = N ``transport.write`` calls back to back, no awaits in between). An event is
  due when its planned time is at most 0.25 ms away (libuv timers have 1 ms granularity; the
  alternative is 1 ms late or a spin); ``planned_ns`` is logged, so the lateness is visible;
- ``t_ns`` of a chunk is taken right after ``transport.write`` returned (uvloop tries the
  ``send`` at once; if the kernel did not take it all the rest is buffered -- counted as
  ``buffered_writes`` in the dump);
- the log is a list of tuples in memory, handed over on ``POST /_bench/dump`` (no per-chunk
  write); payloads are built from a cache; the garbage collector is off (refcounting frees all).

Faults, pings, non-streamed answers, empty-content events and the OpenAI face are not here (the
accuracy/sweep points use none of them; ``peers`` keeps the `BenchServer` subclass).
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from fakes.scripted import TOKEN_OFFSET, Script, _prompt_tokens, _timings

EARLY_NS = 250_000
MAX_BURST_NS = 5_000_000  # yield to the loop (reads, new requests) after this long writing
_pc = time.perf_counter_ns
_SSE_HEAD = (b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nAccess-Control-Allow-Origin: \r\nX-Accel-Buffering: no\r\n"
             b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5, max=100\r\n\r\n")


def _json_response(status: int, obj: Any) -> bytes:
    body = json.dumps(obj).encode()
    reason = {200: "OK", 404: "Not Found", 400: "Bad Request"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nServer: llama.cpp\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nKeep-Alive: timeout=5, max=100\r\n\r\n").encode() + body


class _Stream:
    __slots__ = ("conn", "index", "events", "pos", "produced", "n_prompt", "t_recv", "t_first", "t_last", "seq")

    def __init__(self, conn: _Conn, index: int, events: list[tuple[int, int]], n_prompt: int, t_recv: int) -> None:
        self.conn, self.index, self.events, self.n_prompt, self.t_recv = conn, index, events, n_prompt, t_recv
        self.pos = self.produced = 0
        self.t_first = self.t_last = 0
        self.seq = 1


class FastSender:
    def __init__(self) -> None:
        self.script = Script()
        self.text = self.script.text.encode()
        self.n_requests = 0
        self.tags: dict[int, str] = {}
        self.parsed: dict[int, int] = {}
        self.log: list[tuple[Any, ...]] = []
        self.buffered_writes = 0
        self.heap: list[tuple[int, int, _Stream]] = []
        self._cnt = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._payloads: dict[tuple[int, int, int, int], bytes] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- requests ---------------------------------------------------------------------------------
    def handle(self, conn: _Conn, method: str, path: str, body: bytes, t_rx: int) -> None:
        if path == "/health":
            conn.transport.write(_json_response(200, {"status": "ok"}))
            return
        if method != "POST":
            conn.transport.write(_json_response(404, {"error": "not found"}))
            return
        req = json.loads(body) if body else {}
        if path == "/completion" and req.get("stream"):
            self._completion(conn, req, t_rx)
        elif path == "/_bench/reset":
            self.script = Script.from_dict(req)
            self.text = self.script.text.encode()
            if any(b > 127 for b in self.text):
                raise ValueError("fast_sender: ASCII script text only")
            self._payloads.clear()
            self.n_requests = 0
            self.tags, self.parsed, self.log = {}, {}, []
            self.buffered_writes = 0
            conn.transport.write(_json_response(200, {"ok": True}))
        elif path == "/_bench/dump":
            log, self.log = self.log, []
            tags, self.tags = self.tags, {}
            parsed, self.parsed = self.parsed, {}
            keys = ("req", "seq", "kind", "t_ns", "planned_ns", "n_tokens", "tokens_predicted", "content_bytes",
                    "nbytes")
            Path(req["path"]).write_text(json.dumps({
                "tags": tags, "parsed": parsed, "buffered_writes": self.buffered_writes,
                "sent": [dict(zip(keys, row, strict=True)) for row in log]}))
            self.buffered_writes = 0
            conn.transport.write(_json_response(200, {"chunks": len(log)}))
        else:
            conn.transport.write(_json_response(404, {"error": f"fast_sender: no {path} (stream only)"}))

    def _completion(self, conn: _Conn, req: dict[str, Any], t_rx: int) -> None:
        index = self.n_requests
        self.n_requests += 1
        prompt = req.get("prompt", "")
        self.tags[index] = str(prompt)[:80]
        n_predict = int(req.get("n_predict", req.get("max_tokens", self.script.n_predict)))
        if n_predict < 0:
            n_predict = self.script.n_predict
        plan = self.script.schedule_for(index).plan(n_predict)
        events = [(t_rx + int(off * 1e6), k) for off, k in plan]
        st = _Stream(conn, index, events, _prompt_tokens(prompt), t_rx)
        self.log.append((index, 0, "request", t_rx, None, 0, 0, 0, 0))
        self.parsed[index] = _pc()
        conn.transport.write(_SSE_HEAD)
        self.log.append((index, 1, "headers", _pc(), None, 0, 0, 0, len(_SSE_HEAD)))
        if events:
            self._push(events[0][0], st)
        else:
            self._finish(st)

    # -- sending ----------------------------------------------------------------------------------
    def _push(self, at: int, st: _Stream) -> None:
        self._cnt += 1
        heapq.heappush(self.heap, (at, self._cnt, st))
        if self._timer is None or at < self._timer_at:
            self._arm(at)

    def _arm(self, at: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self.loop is not None
        self._timer_at = at
        self._timer = self.loop.call_later(max(0.0, (at - EARLY_NS - _pc()) / 1e9), self._tick)

    def _payload(self, start: int, k: int, produced: int, n_prompt: int) -> bytes:
        key = (start % len(self.text), k, produced, n_prompt)
        p = self._payloads.get(key)
        if p is None:
            raw = bytes(self.text[(start + i) % len(self.text)] for i in range(k))
            ev = {"index": 0, "content": raw.decode(), "tokens": [raw[-1] + TOKEN_OFFSET], "stop": False,
                  "id_slot": -1, "tokens_predicted": produced, "tokens_evaluated": n_prompt}
            data = b"data: " + json.dumps(ev, separators=(",", ":")).encode() + b"\n\n"
            p = b"%x\r\n%s\r\n" % (len(data), data)
            self._payloads[key] = p
        return p

    def _tick(self) -> None:
        self._timer = None
        heap, log, pop, push = self.heap, self.log.append, heapq.heappop, heapq.heappush
        t0 = now = _pc()
        while heap and heap[0][0] <= now + EARLY_NS:
            planned, _, st = pop(heap)
            tr = st.conn.transport
            if st.conn.closed:
                continue
            k = st.events[st.pos][1]
            start = st.produced
            st.produced += k
            payload = self._payload(start, k, st.produced, st.n_prompt)
            tr.write(payload)
            now = _pc()
            if tr.get_write_buffer_size():
                self.buffered_writes += 1
            st.seq += 1
            log((st.index, st.seq, "data", now, planned, k, st.produced, k, len(payload)))
            if not st.t_first:
                st.t_first = now
            st.t_last = now
            st.pos += 1
            if st.pos < len(st.events):
                self._cnt += 1
                push(heap, (st.events[st.pos][0], self._cnt, st))
            else:
                self._finish(st)
                now = _pc()
            if now - t0 > MAX_BURST_NS:
                break
        if heap:
            self._arm(heap[0][0])

    def _finish(self, st: _Stream) -> None:
        n = st.produced
        final = {"index": 0, "content": "", "tokens": [], "id_slot": 0, "stop": True, "model": "scripted",
                 "tokens_predicted": n, "tokens_evaluated": st.n_prompt, "prompt": "", "has_new_line": False,
                 "truncated": False, "stop_type": "limit", "stopping_word": "", "tokens_cached": st.n_prompt + n,
                 "timings": _timings(st.n_prompt, n, st.t_recv, st.t_first or None, st.t_last or None)}
        data = b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n"
        st.conn.transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
        t = _pc()
        self.log.append((st.index, st.seq + 1, "stop", t, None, 0, n, 0, len(data)))
        self.log.append((st.index, st.seq + 2, "end", t, None, 0, 0, 0, 5))


class _Conn(asyncio.Protocol):
    def __init__(self, srv: FastSender) -> None:
        self.srv = srv
        self.buf = bytearray()
        self.closed = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        t_rx = _pc()  # "request read": the bytes that complete the request are in user space now
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            n, close = 0, False
            for line in head[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    n = int(v.strip())
                elif k == "connection":
                    close = v.strip().lower() == "close"
            if len(buf) < end + 4 + n:
                return
            body = bytes(buf[end + 4:end + 4 + n])
            del buf[:end + 4 + n]
            method, target = head[0].split(" ")[:2]
            path = target.split("?", 1)[0]
            self.srv.handle(self, method, path, body, t_rx)
            if close and path != "/completion":  # the benchmark's own reset/dump/health: answered, close
                self.transport.close()
                return


def serve(port: int, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    import uvloop

    gc.disable()
    srv = FastSender()

    async def main() -> None:
        srv.loop = asyncio.get_running_loop()
        server = await srv.loop.create_server(lambda: _Conn(srv), "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())
