"""CPU per SSE event of the raw client's parse: HTTP/1.1 framing alone, and framing + SSE + counting.

    python benchmarks/parse_cost.py [--before REV]

Feeds a chunked llama-server /completion stream (20 000 events, one chunk each) to a connection
object's ``data_received`` without a socket, one event per read and 16 per read, and reports the
process CPU per event (best of 5). ``--before REV`` also measures the parser and the counting of
an older commit (its abtest/measure/rawclient.py and stream.py, taken with ``git show``), for a
before/after comparison. Results: docs/performance.md ("Framing by llhttp").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N = 20_000
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _event(i: int) -> bytes:
    obj = {"index": 0, "content": "The", "tokens": [87], "stop": False, "id_slot": -1,
           "tokens_predicted": i + 1, "tokens_evaluated": 12}
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


CHUNKS = [_event(i) for i in range(N)]


def _reads(per_read: int) -> list[bytes]:
    return [HEAD, *(b"".join(CHUNKS[i:i + per_read]) for i in range(0, N, per_read)), b"0\r\n\r\n"]


def _cpu_per_event_us(conn_cls: Any, reads: list[bytes], make_sink: Callable[[], Callable[[bytes, int], None]]) -> float:
    async def once() -> int:
        conn = conn_cls(("http", "127.0.0.1", 1))
        done = conn.begin(make_sink())
        t0 = time.process_time_ns()
        for data in reads:
            conn.data_received(data)
        took = time.process_time_ns() - t0
        assert done.done() and done.exception() is None, done.exception()
        return took

    return min(asyncio.run(once()) for _ in range(5)) / N / 1e3


def _noop() -> Callable[[bytes, int], None]:
    return lambda _b, _t: None


def _load_rev(rev: str) -> tuple[Any, Callable[[], Callable[[bytes, int], None]]]:
    """An older commit's _Conn and its SSE + counting, as modules in a scratch folder."""
    tmp = Path(tempfile.mkdtemp(prefix="parse_cost_"))
    for name in ("rawclient", "stream"):
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:abtest/measure/{name}.py"], check=True,
                             capture_output=True, text=True).stdout
        src = src.replace("from ..records", "from abtest.records").replace("from .stream import", "from old_stream import")
        (tmp / f"old_{name}.py").write_text(src)
    sys.path.insert(0, str(tmp))
    import old_rawclient  # type: ignore[import-not-found]
    import old_stream  # type: ignore[import-not-found]

    def sink() -> Callable[[bytes, int], None]:
        tracker, buf = old_stream._Tracker("completion"), bytearray()

        def feed(part: bytes, t_ns: int) -> None:
            buf.extend(part)
            old_stream._feed_sse(buf, tracker, t_ns)

        return feed

    return old_rawclient._Conn, sink


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", metavar="REV", help="also measure this older commit (e.g. c36df93)")
    args = ap.parse_args(argv)
    from abtest.measure import protocol, rawclient

    rows = [("now", rawclient._Conn, lambda: protocol.Tracker("completion").feed)]
    if args.before:
        old_conn, old_sink = _load_rev(args.before)
        rows.append((args.before, old_conn, old_sink))
    with open("/proc/loadavg") as fh:
        print(f"load average {fh.read().split()[0]}; {N} events, best of 5, process CPU per event")
    for per_read in (1, 16):
        reads = _reads(per_read)
        for label, conn, sink in rows:
            print(f"{label:>10}  {per_read:>2} event(s)/read: framing {_cpu_per_event_us(conn, reads, _noop):.2f} us, "
                  f"framing + SSE + counting {_cpu_per_event_us(conn, reads, sink):.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
