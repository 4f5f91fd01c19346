"""Orchestration of `abtest run`: arms in order, warm-up, repetitions, load, evidence as it happens.

    resolve binary + models (refuse bad input before launching anything)
    open evidence file, write the manifest
    for each block, each arm in the block's order A B | B A (sequential), or all arms at once (interleaved):
        (with load levels, --concurrency 1,2,4 or --rate 1,2,4: every level in turn inside each session;
         a capacity search, --rate auto: the levels its search picks, one after another)
        launch -> healthy -> memory after load -> cut prompts with this server's /tokenize
        -> arm_start -> warm-up (flagged) -> measured requests (+ memory samples every 100 ms)
        -> ids for requests whose streamed ids were incomplete -> stop -> arm_end
    run_end

A block is one server session per arm (`--blocks`, default 2): every arm's server is started
afresh for each, in a counterbalanced order (A0 B0 B1 A1 A2 B2 ...), so what drifts with time or
with a server's start (a warmer box, the page cache, clocks) falls on both arms alike and the report
can use the session as its unit of analysis.

A failed arm or request is recorded and the run goes on; an arm that failed to start is not
started again in later blocks (its arm_end says why). An interrupt (Ctrl-C, SIGTERM) stops every
server, keeps every record already flushed, and leaves the file without run_end (a partial run).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..analysis import metrics
from ..analysis.slo import Objective, level_meets, level_span, parse_slo
from ..argv import gpu_placement
from ..config import ArmSpec, RunConfig, auto_ctx_size, final_argv, validate
from ..errors import EvidenceError, LaunchError
from ..evidence import EvidenceWriter, check_writable, reserve_new
from ..interrupts import ignore_interrupts, signals_deferred
from ..records import ArmEnd, ArmStart, RequestRecord, RunEnd, RunManifest, TokenIds, measured_window_ms
from ..server.api import ApiClient, ApiError
from ..server.log import parse_memory_breakdown, server_warnings
from ..server.process import (
    LaunchSpec,
    ServerProcess,
    describe_exit,
    explain_log,
    help_text,
    log_tail,
    raise_client_priority,
    supports_flag,
)
from . import capsearch
from .arms import ResolvedArm, evidence_path, host_info, longest_prompt_estimate, resolve_arms
from .load import applied_load, arrival_times, session_order
from .progress import NullProgress, Progress
from .prompts import FittedPrompt, PromptCase, fit_prompts, load_prompts
from .protocol import StreamLimits, StreamRequest
from .sampler import Nvml, VramSampler, summarize
from .transport import HttpTransport
from .untimed import MARGIN_N_PROBS, fetch_token_ids, fetch_top_logprobs


@dataclass(frozen=True)
class RunResult:
    evidence_path: Path
    n_requests: int
    n_failed: int
    arms_failed: list[str]
    duration_s: float


# ------------------------------------------------------------------------------ the run


class Runner:
    def __init__(self, cfg: RunConfig, progress: Progress | None = None, argv: Sequence[str] = ()) -> None:
        self.cfg = validate(cfg)
        self.slo: tuple[Objective, ...] = parse_slo(cfg.slo) if cfg.slo else ()  # ConfigError on a bad one
        self.progress = progress or NullProgress()
        self.argv = list(argv)
        self.nvml = Nvml()
        self.http = HttpTransport(self.cfg.http_client)
        self.client_nice = raise_client_priority()
        self.writer: EvidenceWriter | None = None
        self._evidence_failure: EvidenceError | None = None  # raised once: the run is stopping
        self.n_requests = 0
        self.n_failed = 0
        self.arms_failed: list[str] = []
        self._prompt_text: dict[str, dict[str, str]] = {}  # arm -> prompt id -> text as sent
        self._listeners: list[Callable[[Any], None]] = []
        self._next_seq: dict[str, int] = {}  # arm -> next seq (unique across the arm's blocks)
        self._never_started: dict[str, str] = {}  # arm -> why it did not start (later blocks skip it)

    def subscribe(self, listener: Callable[[Any], None]) -> None:
        """Call `listener(record)` after each record is written (the sweep reads its measurements
        this way). Memory samples come from the sampler thread, every other record from the run."""
        self._listeners.append(listener)

    def write(self, record: Any) -> None:
        """One record into the evidence file: serialised here (tens of µs for a request, on the
        loop), written and fsynced by the writer's thread, so a disk never holds up the loop.
        EvidenceError once the file can no longer be written: the run stops.
        The error is raised once, where it stops the run; the records written while the run unwinds
        (other requests ending, arm_end) are dropped, as the file takes nothing any more."""
        assert self.writer is not None
        if self._evidence_failure is not None:
            return
        try:
            self.writer.write(record)  # thread-safe: the sampler thread writes too
        except EvidenceError as exc:
            self._evidence_failure = exc
            raise
        for listener in self._listeners:
            listener(record)

    def _sync(self) -> None:
        """Every record so far written and fsynced (at each arm's end); EvidenceError as `write`."""
        assert self.writer is not None
        if self._evidence_failure is not None:
            return
        try:
            self.writer.sync()
        except EvidenceError as exc:
            self._evidence_failure = exc
            raise

    def _write_sample(self, record: Any) -> None:
        """The sampler thread's sink: an unwritable evidence file (disk full) is reported by the
        main thread's next write, which stops the run; the thread itself just stops writing."""
        assert self.writer is not None
        try:
            self.writer.write(record)
        except EvidenceError:
            return
        for listener in self._listeners:
            listener(record)

    def manifest(self, path: Path, models: list[dict[str, Any]], arms: Sequence[ArmSpec]) -> RunManifest:
        """The run_start record: who, where, what (models deduplicated by SHA256), the full config."""
        return RunManifest(
            run_id=path.stem,
            abtest_version=__version__,
            started_at=_now(),
            argv=self.argv,
            host={**host_info(), "client_nice": self.client_nice},
            gpu=self.nvml.info().as_dict(),
            models=list({m["sha256"]: m for m in models}.values()),
            config={**self.cfg.as_dict(), "arms": [asdict(a) for a in arms]},
        )

    def run_end(self, t0: float) -> RunEnd:
        """The last record; its absence marks a partial run. `t0` is perf_counter() at the start."""
        return RunEnd(
            finished_at=_now(),
            duration_s=round(time.perf_counter() - t0, 3),
            n_requests=self.n_requests,
            n_failed=self.n_failed,
            arms_failed=self.arms_failed,
        )

    def execute(self) -> RunResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        check_writable(Path(cfg.out_dir))  # fail fast, before launching anything
        cases = load_prompts(Path(cfg.prompts_path) if cfg.prompts_path else None, list(cfg.buckets) or None)
        arms = resolve_arms(cfg, self.progress.note)
        self.writer = EvidenceWriter(evidence_path(cfg, cfg.model), new=True)
        path = self.writer.path  # the name taken: unique even for two runs started in the same second
        with closing_writer(self.writer):
            self.write(self.manifest(path, [a.model for a in arms], [a.spec for a in arms]))
            ctx = cfg.ctx_size or auto_ctx_size(
                longest_prompt_estimate(cases), cfg.max_tokens, cfg.server_slots
            )
            if cfg.schedule == "interleaved":
                for block in range(cfg.blocks):
                    self._interleaved(arms, cases, ctx, path, block)
            else:
                by_name = {a.spec.name: a for a in arms}
                for block, name in session_order(list(by_name), cfg.blocks):
                    self.run_arm(by_name[name], cases, ctx, path, block)
            self.write(self.run_end(t0))
        return RunResult(path, self.n_requests, self.n_failed, self.arms_failed, time.perf_counter() - t0)

    # -- one arm -----------------------------------------------------------------------------
    def _log_path(self, arm: str, evidence: Path, block: int = 0) -> Path:
        """`<evidence stem>.<arm>.log` (block 0; `.<arm>.b<N>.log` for block N), created empty and
        ours alone (a name another run or an earlier launch of this arm holds gets `-2`, `-3`, ...);
        the server's output is appended."""
        suffix = f".b{block}" if block else ""
        try:
            return reserve_new(evidence.with_name(f"{evidence.stem}.{arm}{suffix}.log"))
        except OSError as exc:
            raise EvidenceError(f"cannot create the server log for arm '{arm}' beside {evidence}: "
                                f"{exc.strerror} — pick another --out") from exc

    def _launch(self, arm: ResolvedArm, ctx: int, log_path: Path) -> ServerProcess:
        cfg = self.cfg
        binary = arm.server["path"]
        fit = arm.spec.kind == "llama-server" and supports_flag(help_text(binary), "--fit")
        argv = final_argv(arm.spec, cfg, binary, arm.model["path"], ctx, fit)
        spec = LaunchSpec(
            name=arm.spec.name,
            argv=tuple(argv),
            log_path=log_path,
            health_timeout_s=cfg.health_timeout_s,
            listen_args=arm.spec.listen_args,
        )
        return ServerProcess(spec).start()

    def _arm_up(
        self, arm: ResolvedArm, cases: list[PromptCase], ctx: int, evidence: Path, block: int = 0
    ) -> tuple[ServerProcess, VramSampler, list[FittedPrompt]] | None:
        name = arm.spec.name
        if name in self._never_started:  # recorded, not announced again: the first failure was
            self._arm_failed(name, f"not started in block {block}: {self._never_started[name]}", None, block,
                             announce=False)
            return None
        log_path = self._log_path(name, evidence, block)
        try:
            srv = self._launch(arm, ctx, log_path)
        except LaunchError as exc:
            self._never_started[name] = f"it failed to start in block {block}"
            self._arm_failed(name, str(exc), log_path, block)
            return None
        sampler = VramSampler(self.nvml, name, srv.pid, srv.t_spawn_ns, self._write_sample, self.cfg.sample_interval_s,
                              block)
        after_load = sampler.sample()
        try:
            fitted = fit_prompts(cases, srv.base_url)
        except (ApiError, KeyError, ValueError) as exc:
            died = "" if srv.alive() else f" (the server {describe_exit(srv.proc.returncode if srv.proc else 0)})"
            srv.stop()
            self._arm_failed(name, f"cutting prompts with /tokenize failed on arm '{name}'{died}: {exc}",
                             srv.spec.log_path, block)
            return None
        except BaseException:
            srv.stop()  # interrupted: leave no server behind
            raise
        self._prompt_text[name] = {f.case.id: f.text for f in fitted}
        self.write(after_load)
        self.write(
            ArmStart(
                arm=name,
                model_path=arm.model["path"],
                model_sha256=arm.model["sha256"],
                server_bin=arm.server["path"],
                server_build={k: arm.server[k] for k in ("version_text", "build_id", "backend", "found_via")},
                argv=srv.argv,
                port=srv.port,
                pid=srv.pid,
                ready_ms=round(srv.ready_ms or 0.0, 1),
                spawn_ns=srv.t_spawn_ns,
                started_at=_now(),
                log_path=str(srv.spec.log_path),
                prompt_tokens={f.case.id: f.n_tokens for f in fitted},
                memory_after_load=asdict(after_load),
                block=block,
                placement=gpu_placement(srv.argv),
            )
        )
        sampler.start()
        return srv, sampler, fitted

    def _arm_down(self, name: str, srv: ServerProcess, sampler: VramSampler, records: list[RequestRecord],
                  planned: int = 0, interrupted: bool = False, block: int = 0) -> None:
        """Stop the arm's server and write its arm_end. A second Ctrl-C / SIGTERM meanwhile is held
        until the server is down and the record written (then raised), so no server is orphaned."""
        with signals_deferred():
            self._arm_down_now(name, srv, sampler, records, planned, interrupted, block)

    def _arm_down_now(self, name: str, srv: ServerProcess, sampler: VramSampler, records: list[RequestRecord],
                      planned: int, interrupted: bool, block: int) -> None:
        sampler.stop()
        after_load = sampler.samples[0] if sampler.samples else None
        died = srv.proc is not None and srv.proc.poll() is not None  # gone before we stopped it
        code = srv.stop()
        try:
            log_text = srv.spec.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            log_text = ""
        measured = [r for r in records if not r.warmup]
        failed = [r for r in measured if not r.ok]
        status, error = "ok", None
        if interrupted:
            status = "failed"
            error = (f"interrupted (Ctrl-C or SIGTERM) after {len(measured)} of {planned} measured requests; "
                     "the run is partial")
        elif died:
            status = "failed"
            cause, _ = explain_log(srv.attempt_log())
            error = (
                f"server for arm '{name}' {describe_exit(code if code is not None else 0)} during the measurements: "
                f"{len(failed)} of {len(measured)} measured requests failed, {max(planned - len(measured), 0)} not sent; "
                f"{cause} — see {srv.spec.log_path}"
            )
            self._failed(name)
        self.write(
            ArmEnd(
                arm=name,
                status=status,
                error=error,
                exit_code=code,
                stop_ms=round(srv.stop_ms, 1) if srv.stop_ms is not None else None,
                n_requests=len(measured),
                n_failed=len(failed),
                memory=summarize(sampler.samples[1:] or sampler.samples, after_load,
                                 measured_window_ms(records, srv.t_spawn_ns)),
                breakdown=parse_memory_breakdown(log_text),
                log_path=str(srv.spec.log_path),
                log_tail=log_tail(srv.spec.log_path, 5),
                block=block,
                server_warnings=server_warnings(log_text),
            )
        )
        self._sync()  # every arm's records durable at its end
        if error is None:
            self.progress.arm_end(name, True, f"{len(measured) - len(failed)}/{len(measured)} ok{self._of_blocks(block)}")
        elif not interrupted:
            self.progress.arm_end(name, False, error)

    def _arm_failed(self, name: str, message: str, log_path: Path | None, block: int = 0,
                    announce: bool = True) -> None:
        self._failed(name)
        self.write(
            ArmEnd(
                arm=name, status="failed", error=message, exit_code=None, stop_ms=None, n_requests=0, n_failed=0,
                memory={}, breakdown={}, log_path=str(log_path or ""),
                log_tail=log_tail(log_path, 8) if log_path is not None else [], block=block,
                server_warnings=_warnings_of(log_path),
            )
        )
        if announce:
            self.progress.arm_end(name, False, message)

    def _failed(self, name: str) -> None:
        if name not in self.arms_failed:
            self.arms_failed.append(name)

    def _of_blocks(self, block: int) -> str:
        """" (block 2 of 3)" when the run has several blocks, else ""."""
        return f" (block {block + 1} of {self.cfg.blocks})" if self.cfg.blocks > 1 else ""

    def _plan(self, arm: str, fitted: list[FittedPrompt], block: int = 0, level: RunConfig | None = None,
              level_index: int | None = None, search: str | None = None) -> list[tuple[StreamRequest, FittedPrompt]]:
        """One block's (or one load level's) requests: warm-up first (flagged), then runs x prompts,
        in a stable order. `seq` goes on across the arm's blocks and levels, and `run_index` counts
        repetitions over the run's blocks (block b holds b*runs ... b*runs + runs - 1), so
        (arm, seq) names one request. A level's requests carry its concurrency and, in `load`, its
        index among the run's levels (a capacity search's probe: its index, `levels` None, `search`
        the kind)."""
        cfg = level or self.cfg
        plan: list[tuple[StreamRequest, FittedPrompt]] = []
        seq = self._next_seq.get(arm, 0)
        load = applied_load(cfg)
        if level_index is not None:
            load = {**load, "level": level_index, "levels": None if search else len(self.cfg.levels())}
            if search:
                load["search"] = search

        def req(f: FittedPrompt, run_index: int, warm: bool) -> StreamRequest:
            return StreamRequest(
                arm=arm, bucket=f.case.bucket, prompt_id=f.case.id, prompt=f.text, run_index=run_index, seq=seq,
                warmup=warm, endpoint=cfg.endpoint, concurrency=cfg.concurrency, max_tokens=cfg.max_tokens,
                temperature=cfg.temperature, seed=cfg.seed, block=block, load=load,
            )

        for i in range(cfg.warmup):
            f = fitted[i % len(fitted)]
            plan.append((req(f, -1, True), f))
            seq += 1
        for run_index in range(block * cfg.runs, (block + 1) * cfg.runs):
            for f in fitted:
                plan.append((req(f, run_index, False), f))
                seq += 1
        self._next_seq[arm] = seq
        return plan

    def _limits(self) -> StreamLimits:
        return StreamLimits(stall_timeout_s=self.cfg.stall_timeout_s, request_timeout_s=self.cfg.request_timeout_s)

    def _record(self, rec: RequestRecord, records: list[RequestRecord]) -> None:
        records.append(rec)
        self.write(rec)
        if not rec.warmup:
            self.n_requests += 1
            self.n_failed += 0 if rec.ok else 1
        self.progress.request_done(rec)

    def run_arm(self, arm: ResolvedArm, cases: list[PromptCase], ctx: int, evidence: Path, block: int = 0) -> None:
        """One arm's block on its own: launch, warm-up, measured requests, memory samples, arm_end."""
        up = self._arm_up(arm, cases, ctx, evidence, block)
        if up is None:
            return
        srv, sampler, fitted = up
        records: list[RequestRecord] = []
        levels = self.cfg.levels()
        plans = [] if self.cfg.search else [self._plan(arm.spec.name, fitted, block, lv, i if len(levels) > 1 else None)
                                            for i, lv in enumerate(levels)]
        plan = [p for level_plan in plans for p in level_plan]
        interrupted = False
        try:
            with no_gc_pauses():
                if self.cfg.search:
                    self._search(arm.spec.name, srv, fitted, block, records, plan)
                else:
                    self.progress.arm_begin(arm.spec.name, len(plan))
                    for lv, level_plan in zip(levels, plans, strict=True):  # in turn, each with its warm-up
                        asyncio.run(self._drive(srv.base_url, level_plan, records, srv.alive, lv))
                        if not srv.alive():
                            break
            if srv.alive():
                self._backfill_ids(srv.base_url, records)
            if srv.alive() and self.cfg.margins and block == 0:  # the first session: greedy is deterministic
                self._probe_margins(srv.base_url, records)
        except KeyboardInterrupt:
            ignore_interrupts()  # stopping now: a second Ctrl-C must not cut the cleanup short
            interrupted = True
            raise
        finally:
            planned = sum(1 for r, _ in plan if not r.warmup)
            self._arm_down(arm.spec.name, srv, sampler, records, planned, interrupted, block)

    def _search(self, name: str, srv: ServerProcess, fitted: list[FittedPrompt], block: int,
                records: list[RequestRecord], done: list[tuple[StreamRequest, FittedPrompt]]) -> None:
        """A capacity search in one session: probe the loads `capsearch.next_probe` picks, each a
        load level with its own warm-up, judged against the run's SLO; every probe's plan is added
        to `done` as it starts (what arm_end counts as planned)."""
        import numpy as np  # here, not at the top: only a search needs it, every run's start-up would pay

        cfg = self.cfg
        assert cfg.search is not None
        spec = capsearch.SearchSpec(cfg.search, start=cfg.search_start or 1.0, max_load=cfg.search_max
                                    or (float(cfg.server_slots) if cfg.search == "concurrency" else None),
                                    time_s=cfg.search_time_s)
        probes: list[capsearch.ProbeResult] = []
        t0 = time.perf_counter()
        while srv.alive():
            d = capsearch.next_probe(spec, probes, time.perf_counter() - t0)
            if d.load is None:
                self.progress.note(f"{name}: capacity search done ({d.reason}): met {d.low if d.low is not None else '—'}"
                                   f", failed {d.high if d.high is not None else '—'}{self._of_blocks(block)}")
                break
            lv = cfg.at_load(d.load)
            level_plan = self._plan(name, fitted, block, lv, len(probes), cfg.search)
            done += level_plan
            self.progress.arm_begin(name, len(level_plan))
            t_probe = time.perf_counter()
            n_before = len(records)
            asyncio.run(self._drive(srv.base_url, level_plan, records, srv.alive, lv))
            mine = [r for r in records[n_before:] if not r.warmup]
            ttft = [v for r in mine if r.ok and (v := metrics.ttft_ms(r)) is not None]
            probe = capsearch.ProbeResult(d.load, bool(level_meets(mine, self.slo)), level_span(mine).req_per_s,
                                          float(np.percentile(ttft, 95)) if ttft else None,
                                          time.perf_counter() - t_probe)
            probes.append(probe)
            unit = "" if cfg.search == "concurrency" else " req/s"
            n_failed = sum(1 for r in mine if not r.ok)
            misses = f"; {n_failed} of {len(mine)} requests failed, each a miss" if n_failed else ""
            self.progress.note(f"{name}: {cfg.search} {d.load:g}{unit} {'meets' if probe.meets else 'fails'} "
                               f"{', '.join(map(str, self.slo))} ({d.phase}{misses})")

    async def _drive(self, base_url: str, plan: list[tuple[StreamRequest, FittedPrompt]], records: list[RequestRecord],
                     alive: Callable[[], bool] = lambda: True, level: RunConfig | None = None) -> None:
        """Send the plan at one load level (`level`, default the run's config); once the server has
        died (a request failed and `alive()` is false) the rest of the plan is not sent: arm_end
        says how many were left."""
        cfg = level or self.cfg
        limits = self._limits()
        warm = [p for p in plan if p[0].warmup]
        timed = [p for p in plan if not p[0].warmup]
        http = self.http
        # Open loop: no connection cap (a cap would hold requests back unrecorded: coordinated
        # omission); closed loop: the workers are the cap.
        async with http.client(None if cfg.rate else cfg.concurrency + 4) as client:
            for r, _ in warm:  # warm-up one at a time: it also opens a kept-alive connection
                rec = await http.stream(client, base_url, r, limits)
                self._record(rec, records)
                if not await _still_up(rec, alive):
                    return
            await http.open_connections(client, base_url, cfg.concurrency)
            if cfg.rate:
                await self._open_loop(client, base_url, [r for r, _ in timed], limits, records, alive, cfg)
            else:
                await self._closed_loop(client, base_url, [r for r, _ in timed], limits, records, alive,
                                        cfg.concurrency)

    async def _closed_loop(self, client: Any, base_url: str, reqs: list[StreamRequest],
                           limits: StreamLimits, records: list[RequestRecord],
                           alive: Callable[[], bool] = lambda: True, concurrency: int | None = None) -> None:
        queue: asyncio.Queue[StreamRequest] = asyncio.Queue()
        for r in reqs:
            queue.put_nowait(r)

        async def worker() -> None:
            while not queue.empty() and alive():
                r = queue.get_nowait()
                rec = await self.http.stream(client, base_url, r, limits)
                self._record(rec, records)
                if not await _still_up(rec, alive):
                    return

        await asyncio.gather(*(worker() for _ in range(concurrency or self.cfg.concurrency)))

    async def _open_loop(self, client: Any, base_url: str, reqs: list[StreamRequest],
                         limits: StreamLimits, records: list[RequestRecord],
                         alive: Callable[[], bool] = lambda: True, level: RunConfig | None = None) -> None:
        """Send on a schedule of absolute times: a slow response never delays later sends, and no
        connection cap holds a request back. Each record carries the time it was due
        (`t_scheduled_ns`), so latency can be counted from the schedule as well as from the send.
        `level`: the rate level's config (default the run's)."""
        cfg = level or self.cfg
        times = arrival_times(len(reqs), cfg.rate or 1.0, cfg.arrivals, cfg.seed)
        start_ns = time.perf_counter_ns() + 50_000_000
        in_flight = 0

        async def send_at(at: float, r: StreamRequest) -> None:
            nonlocal in_flight
            due_ns = start_ns + round(at * 1e9)
            await asyncio.sleep(max(0.0, (due_ns - time.perf_counter_ns()) / 1e9))
            if not alive():
                return
            in_flight += 1
            r = dataclasses.replace(r, t_scheduled_ns=due_ns, load={**r.load, "in_flight_at_send": in_flight})
            try:
                rec = await self.http.stream(client, base_url, r, limits)
            finally:
                in_flight -= 1
            self._record(rec, records)

        await asyncio.gather(*(send_at(t, r) for t, r in zip(times, reqs, strict=True)))

    def _backfill_ids(self, base_url: str, records: list[RequestRecord]) -> None:
        """For requests whose streamed ids were incomplete (multi-token events), one extra
        non-streamed request with return_tokens, after the timed runs, supplies the ids (not with
        `backfill_token_ids` off: the sweep compares no outputs)."""
        if self.cfg.endpoint != "completion" or not self.cfg.backfill_token_ids:
            return
        # One extra request per (arm, prompt), not per repetition: on a slow arm a backfill costs as
        # much as the request itself. Other repetitions keep token_ids None (compared by text).
        missing = list({r.prompt_id: r for r in reversed(records)
                        if r.ok and r.token_ids is None and not r.warmup}.values())
        if not missing:
            return
        with ApiClient(base_url, self.cfg.request_timeout_s) as client:
            for r in missing:
                ids = fetch_token_ids(client, self._untimed_request(r))
                if ids is not None:
                    self.write(TokenIds(arm=r.arm, seq=r.seq, token_ids=ids, source="non-streamed return_tokens"))

    def _untimed_request(self, r: RequestRecord) -> StreamRequest:
        """The request `r` was, sent again untimed (token ids, margins): same prompt and sampling."""
        return StreamRequest(
            arm=r.arm, bucket=r.bucket, prompt_id=r.prompt_id, prompt=self._prompt_text[r.arm][r.prompt_id],
            run_index=r.run_index, seq=r.seq, warmup=False, max_tokens=self.cfg.max_tokens,
            temperature=self.cfg.temperature, seed=self.cfg.seed,
        )

    def _probe_margins(self, base_url: str, records: list[RequestRecord]) -> None:
        """`--margins`: per prompt, one greedy non-streamed request with n_probs 3 after the timed
        runs of the arm's first session (never timed), written as TokenIds with the top 3 per token; the reader
        folds it into the prompt's first measured request when the ids are that request's own."""
        if self.cfg.endpoint != "completion":
            return
        first = list({r.prompt_id: r for r in reversed(records) if r.ok and not r.warmup}.values())
        with ApiClient(base_url, self.cfg.request_timeout_s) as client:
            for r in first:
                got = fetch_top_logprobs(client, self._untimed_request(r))
                if got is not None:
                    self.write(TokenIds(arm=r.arm, seq=r.seq, token_ids=got[0], top_logprobs=got[1],
                                        source=f"non-streamed n_probs={MARGIN_N_PROBS} (--margins)"))

    # -- interleaved ---------------------------------------------------------------------------
    def _interleaved(self, arms: list[ResolvedArm], cases: list[PromptCase], ctx: int, evidence: Path,
                     block: int = 0) -> None:
        """One block with all arms up at once; each (run, prompt) goes to every arm, order
        alternating A B, B A. Servers start in the block's order (A B, then B A next block)."""
        ups = []
        order = arms if block % 2 == 0 else arms[::-1]
        for arm in order:
            up = self._arm_up(arm, cases, ctx, evidence, block)
            if up is not None:
                ups.append((arm, *up))
        ups.sort(key=lambda u: arms.index(u[0]))  # requests alternate in the arms' own order
        records: dict[str, list[RequestRecord]] = {a.spec.name: [] for a, *_ in ups}
        plans = {a.spec.name: self._plan(a.spec.name, fitted, block) for a, _, _, fitted in ups}
        interrupted = False
        try:
            for a, *_ in ups:
                self.progress.arm_begin(a.spec.name, len(plans[a.spec.name]))
            urls = {a.spec.name: srv.base_url for a, srv, _, _ in ups}
            alive = {a.spec.name: srv.alive for a, srv, _, _ in ups}
            with no_gc_pauses():
                asyncio.run(self._drive_interleaved(urls, plans, records, alive))
            for a, srv, _, _ in ups:
                if srv.alive():
                    self._backfill_ids(srv.base_url, records[a.spec.name])
        except KeyboardInterrupt:
            ignore_interrupts()  # stopping now: a second Ctrl-C must not cut the cleanup short
            interrupted = True
            raise
        finally:
            failure: EvidenceError | None = None
            for a, srv, sampler, _ in ups:  # every server stopped, even once the evidence is unwritable
                planned = sum(1 for r, _ in plans[a.spec.name] if not r.warmup)
                try:
                    self._arm_down(a.spec.name, srv, sampler, records[a.spec.name], planned, interrupted, block)
                except EvidenceError as exc:
                    failure = failure or exc
            if failure is not None:
                raise failure

    async def _drive_interleaved(self, urls: dict[str, str], plans: dict[str, list[tuple[StreamRequest, FittedPrompt]]],
                                 records: dict[str, list[RequestRecord]],
                                 alive: dict[str, Callable[[], bool]] | None = None) -> None:
        limits = self._limits()
        names = list(plans)
        n = max((len(p) for p in plans.values()), default=0)
        async with self.http.client(len(names) + 2) as client:
            for i in range(n):
                order = names if i % 2 == 0 else names[::-1]
                for name in order:
                    if i < len(plans[name]) and (alive is None or alive[name]()):
                        r = plans[name][i][0]
                        rec = await self.http.stream(client, urls[name], r, limits)
                        self._record(rec, records[name])
                        if alive is not None:
                            await _still_up(rec, alive[name])  # settles alive() for the next round


@contextlib.contextmanager
def closing_writer(writer: EvidenceWriter) -> Iterator[None]:
    """Close the evidence file at the end of the run: what is queued written and fsynced. A failed
    write surfaces as EvidenceError from the close, unless another error is already on its way out
    (then that one is the run's end, and the evidence failure was its cause or came after)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(EvidenceError):
            writer.close()
        raise
    writer.close()


@contextlib.contextmanager
def no_gc_pauses() -> Iterator[None]:
    """No cyclic garbage collection while requests are timed.

    A full collection in a process holding many records stops the event loop for tens of
    milliseconds, and every token that arrives meanwhile is stamped late (seen as one request in a
    full test run with its decode rate far above the server's). Collect before, freeze what survives,
    and collect again once the timed requests are done; reference counting still frees everything
    that is not cyclic in between.
    """
    gc.collect()
    gc.freeze()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.unfreeze()
        gc.collect()


async def _still_up(rec: RequestRecord, alive: Callable[[], bool]) -> bool:
    """Whether to go on sending to this server. A failed request can be the first sign of a dying
    server: its sockets close before the kernel lets us reap it, so look again for a moment."""
    if rec.ok or not alive():
        return alive()
    for _ in range(10):
        await asyncio.sleep(0.01)
        if not alive():
            return False
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(cfg: RunConfig, progress: Progress | None = None, argv: Sequence[str] = ()) -> RunResult:
    return Runner(cfg, progress, argv).execute()


def _warnings_of(log_path: Path | None) -> list[str]:
    """The warning lines of a server log that may not exist (a launch that failed early)."""
    if log_path is None:
        return []
    try:
        return server_warnings(log_path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []
