"""`RunConfig` and `ArmSpec`: what to measure, validated before anything is launched.

Arms come from three places, in this order of precedence: ``--arm NAME="ARGS"`` flags, an
``--arms-file`` profile (a TOML path, or the name of one shipped in abtest/data/servers/), and the defaults for a MoE model (``baseline``:
``-ngl 99``; ``cpu-moe``: ``-ngl 99 --cpu-moe``). A name ``ncmoe<N>`` with no args is the
ready-made arm ``-ngl 99 --n-cpu-moe N``.

An arm may run its own llama-server (implementations as arms: build A against build B): in the
profile ``server_bin = "PATH"`` or ``build = "NAME"`` (a cache build named by ``abtest server
install --name``, or its build id); on the command line ``--arm-server ARM=PATH`` and
``--arm-build ARM=NAME`` (`bind_servers`). An arm without either runs the run's ``--server-bin``
or the discovered one.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

from .argv import FLAGS, flag_value, has_flag
from .errors import ConfigError

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable
else:  # pragma: no cover
    from importlib.abc import Traversable

DEFAULT_ARMS: dict[str, tuple[str, ...]] = {
    "baseline": ("-ngl", "99"),
    "cpu-moe": ("-ngl", "99", "--cpu-moe"),
}
_NCMOE = re.compile(r"^ncmoe(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
LLAMA_LISTEN = ("--host", "{host}", "--port", "{port}")
# The arm profiles shipped as package data: `--arms-file llama-server` reads llama-server.toml.
PROFILES: Traversable = files("abtest") / "data" / "servers"


@dataclass(frozen=True)
class ArmSpec:
    """One configuration to measure."""

    name: str
    args: tuple[str, ...]
    model: str | None = None  # overrides the run's --model for this arm
    server_bin: str | None = None  # overrides the run's server binary for this arm
    kind: str = "llama-server"
    listen_args: tuple[str, ...] = LLAMA_LISTEN
    model_args: tuple[str, ...] = ("-m", "{model}")
    pin: bool = True  # add llama-server's pinning flags where the arm does not set them
    build: str | None = None  # a cache build's name or id (`abtest server install --name`); not with server_bin


@dataclass(frozen=True)
class RunConfig:
    model: str
    arms: tuple[ArmSpec, ...]
    runs: int = 3  # repetitions of every prompt per block
    blocks: int = 2  # server sessions per arm, in the order A B B A (a restart per block)
    warmup: int = 2
    max_tokens: int = 128
    concurrency: int = 1
    # closed-loop load levels (`--concurrency 1,2,4`): each arm session runs every level in turn,
    # low to high, each with its own warm-up; () = the one level `concurrency`
    concurrency_levels: tuple[int, ...] = ()
    rate: float | None = None  # requests/s, open loop; None = closed loop at `concurrency`
    # open-loop load levels (`--rate 0.5,1,2,4`): each arm session offers every rate in turn, low to
    # high, each with its own warm-up, on one server of `server_slots` slots; () = the one `rate`
    rate_levels: tuple[float, ...] = ()
    # a capacity search (`--concurrency auto` / `--rate auto` with --slo): each session probes the
    # loads `measure.capsearch` picks until the SLO fails or the arm saturates, then bisects
    search: str | None = None  # None | "concurrency" | "rate"
    slo: str | None = None  # the objectives each probe is judged by (the report's default --slo)
    search_time_s: float = 300.0  # per arm session: no probe starts that would end past this
    search_max: float | None = None  # the highest load probed (concurrency: default 32, the -np)
    search_start: float | None = None  # the first load probed (default 1: concurrency 1, 1 req/s)
    arrivals: str = "uniform"  # "uniform" | "poisson"
    schedule: str = "sequential"  # "sequential" | "interleaved"
    endpoint: str = "completion"  # "completion" | "chat"
    prompts_path: str | None = None
    buckets: tuple[str, ...] = ()
    seed: int = 42
    temperature: float = 0.0
    ctx_size: int | None = None  # None: longest prompt + max_tokens, rounded up
    parallel: int | None = None  # -np; None: the concurrency
    threads: int | None = None  # -t; None: os.cpu_count()
    flash_attn: str = "on"
    out_dir: str = "evidence"
    models_dir: str | None = None
    server_bin: str | None = None
    health_timeout_s: float = 600.0
    stall_timeout_s: float = 60.0
    request_timeout_s: float = 600.0
    sample_interval_s: float = 0.1
    http_client: str = "raw"  # "raw" (abtest.measure.rawclient) or "httpx" (abtest.measure.stream)
    verbose_log: bool = True  # -lv 4: buffer sizes and the exit memory table in the log
    # --margins: after the timed runs of each arm's first session, one greedy non-streamed request
    # per prompt with n_probs 3, so the report can give the logit margin where two arms' outputs part
    margins: bool = False
    # after the timed runs, one untimed non-streamed request per prompt supplies the token ids a
    # streamed request lacked (for `report`'s output comparison); the sweep turns it off: it
    # compares no outputs, and on a slow setting the backfill costs as much as the requests
    backfill_token_ids: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def at_load(self, load: float) -> RunConfig:
        """The config of one probe of a capacity search at `load` (a concurrency or a rate)."""
        if self.search == "concurrency":
            return replace(self, concurrency=int(load), concurrency_levels=(), search=None)
        return replace(self, rate=float(load), rate_levels=(), search=None)

    def levels(self) -> list[RunConfig]:
        """The load levels a session runs, each as the config of a one-level run."""
        if self.rate_levels:
            return [replace(self, rate=r, rate_levels=()) for r in self.rate_levels]
        if not self.concurrency_levels:
            return [self]
        return [replace(self, concurrency=c, concurrency_levels=()) for c in self.concurrency_levels]

    @property
    def server_slots(self) -> int:
        """`-np` for every server: --parallel, else the highest concurrency the run applies (an open
        loop, one rate or rate levels, applies --concurrency as its slots: default 1)."""
        if self.search == "concurrency":
            return self.parallel or int(self.search_max or SEARCH_MAX_CONCURRENCY)
        return self.parallel or max((self.concurrency, *self.concurrency_levels))


def parse_arm(text: str) -> ArmSpec:
    """``NAME="ARGS"`` (shell-style quoting inside ARGS) or a bare ready-made name."""
    name, sep, args = text.partition("=")
    name = name.strip()
    if not _NAME.match(name or "-"):
        raise ConfigError(f"--arm {text!r}: expected NAME=\"ARGS\", e.g. --arm ncmoe12=\"-ngl 99 --n-cpu-moe 12\"")
    if not sep:
        return ready_made_arm(name)
    try:
        argv = tuple(shlex.split(args))
    except ValueError as exc:
        raise ConfigError(f"--arm {text!r}: cannot split ARGS ({exc}) — check the quotes") from exc
    return ArmSpec(name=name, args=argv)


def ready_made_arm(name: str) -> ArmSpec:
    if name in DEFAULT_ARMS:
        return ArmSpec(name=name, args=DEFAULT_ARMS[name])
    m = _NCMOE.match(name)
    if m:
        return ArmSpec(name=name, args=("-ngl", "99", "--n-cpu-moe", m.group(1)))
    raise ConfigError(
        f"--arm {name!r}: unknown ready-made arm; use baseline, cpu-moe, ncmoe<N>, or NAME=\"ARGS\""
    )


def shipped_profiles() -> list[str]:
    """The names `--arms-file` takes besides a path: the profiles in abtest/data/servers/."""
    return sorted(t.name.removesuffix(".toml") for t in PROFILES.iterdir() if t.name.endswith(".toml"))


def _profile_source(path: str | os.PathLike[str]) -> tuple[str, Path | Traversable]:
    """A path that exists is read as given; else a bare name (`llama-server` or `llama-server.toml`)
    of a shipped profile. The label names what was read, for messages."""
    p = Path(path)
    if p.exists() or str(path) != p.name:
        return str(path), p
    name = p.name.removesuffix(".toml")
    if name in shipped_profiles():
        return name, PROFILES / f"{name}.toml"
    return str(path), p


def load_arms_file(path: str | os.PathLike[str]) -> list[ArmSpec]:
    """Arms from an arm profile: a TOML file, or the name of a shipped one (see `shipped_profiles`)."""
    if sys.version_info >= (3, 11):
        import tomllib  # here, not at the top: only a profile is TOML (a part of `abtest run`'s start-up)
    else:  # pragma: no cover
        import tomli as tomllib
    p, source = _profile_source(path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        shipped = ", ".join(shipped_profiles())
        raise ConfigError(f"--arms-file {p}: cannot read ({exc.strerror}); give a TOML path or one of "
                          f"the shipped profiles: {shipped}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--arms-file {p}: not valid TOML ({exc})") from exc
    kind = str(data.get("kind", "llama-server"))
    listen = tuple(data.get("listen_args", LLAMA_LISTEN))
    model_args = tuple(data.get("model_args", ("-m", "{model}")))
    pin = bool(data.get("pin", kind == "llama-server"))
    arms_table = data.get("arms")
    if not isinstance(arms_table, dict) or not arms_table:
        raise ConfigError(f"--arms-file {p}: no [arms.NAME] tables — see the shipped profile llama-server "
                          f"(abtest/data/servers/llama-server.toml)")
    arms = []
    for name, body in arms_table.items():
        if not _NAME.match(name):
            raise ConfigError(f"--arms-file {p}: arm name {name!r} must be letters, digits, '_', '.' or '-' "
                              "(it names the server log file)")
        if not isinstance(body, dict) or not isinstance(body.get("args", []), list):
            raise ConfigError(f"--arms-file {p}: [arms.{name}] needs args = [\"...\", ...]")
        for key in ("server_bin", "build", "model"):
            if key in body and not (isinstance(body[key], str) and body[key]):
                raise ConfigError(f"--arms-file {p}: [arms.{name}] {key} must be a non-empty string")
        if body.get("server_bin") and body.get("build"):
            raise ConfigError(f"--arms-file {p}: [arms.{name}] sets both server_bin and build; an arm runs one "
                              "server: a path (server_bin) or a cache build's name (build)")
        arms.append(
            ArmSpec(
                name=name,
                args=tuple(str(a) for a in body.get("args", [])),
                model=body.get("model"),
                server_bin=body.get("server_bin"),
                build=body.get("build"),
                kind=kind,
                listen_args=listen,
                model_args=model_args,
                pin=pin,
            )
        )
    return arms


def resolve_arms(
    arm_flags: list[str], arms_file: str | None, *, servers: Sequence[str] = (), builds: Sequence[str] = (),
    models: Sequence[str] = (),
) -> tuple[ArmSpec, ...]:
    """The run's arms: the profile's, replaced or joined by the --arm flags (else the defaults),
    then the per-arm binaries of --arm-server (`servers`) and --arm-build (`builds`) and the
    per-arm models of --arm-model (`models`) applied."""
    arms: list[ArmSpec] = []
    if arms_file:
        arms.extend(load_arms_file(arms_file))
    flag_arms = [parse_arm(a) for a in arm_flags]
    for arm in flag_arms:
        arms = [a for a in arms if a.name != arm.name] + [arm]
    if not arms:
        arms = [ArmSpec(name=n, args=a) for n, a in DEFAULT_ARMS.items()]
    names = [a.name for a in arms]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"arm names must be unique; repeated: {', '.join(sorted(dupes))}")
    return bind_models(bind_servers(tuple(arms), servers=servers, builds=builds), models)


def bind_models(arms: tuple[ArmSpec, ...], models: Sequence[str]) -> tuple[ArmSpec, ...]:
    """Arms with ``ARM=MODEL`` (--arm-model: a name or a GGUF path) applied: that arm runs MODEL
    instead of the run's --model (MoE vs dense in one run), replacing what the profile said."""
    by_name = {a.name: a for a in arms}
    seen: set[str] = set()
    for text in models:
        arm, value = _arm_value("--arm-model", text, by_name, seen, "dense=smollm2-135m",
                                "a model from --arm-model", "ARM=MODEL")
        by_name[arm] = replace(by_name[arm], model=value)
    return tuple(by_name[a.name] for a in arms)


def _arm_value(flag: str, text: str, by_name: dict[str, ArmSpec], seen: set[str], example: str,
               what: str, form: str = "ARM=VALUE") -> tuple[str, str]:
    """``ARM=VALUE`` of a per-arm flag, checked: the arm exists and gets `what` only once."""
    arm, sep, value = (part.strip() for part in text.partition("="))
    if not sep or not arm or not value:
        raise ConfigError(f"{flag} {text!r}: expected {form}, e.g. {flag} {example}")
    if arm not in by_name:
        raise ConfigError(f"{flag} {text!r}: no arm named {arm!r}; the arms are {', '.join(by_name)}")
    if arm in seen:
        raise ConfigError(f"{flag} {text!r}: arm {arm!r} already has {what}")
    seen.add(arm)
    return arm, value


def bind_servers(
    arms: tuple[ArmSpec, ...], *, servers: Sequence[str] = (), builds: Sequence[str] = ()
) -> tuple[ArmSpec, ...]:
    """Arms with ``ARM=PATH`` (--arm-server) and ``ARM=NAME`` (--arm-build) applied: a flag
    replaces what the profile said for that arm (its server_bin or build)."""
    by_name = {a.name: a for a in arms}
    seen: set[str] = set()
    for flag, values, key in (("--arm-server", servers, "server_bin"), ("--arm-build", builds, "build")):
        for text in values:
            example = "cpu-moe=/opt/llama-b2/llama-server" if key == "server_bin" else "cpu-moe=new"
            arm, value = _arm_value(flag, text, by_name, seen, example, "a server from --arm-server/--arm-build")
            if key == "server_bin":
                by_name[arm] = replace(by_name[arm], server_bin=value, build=None)
            else:
                by_name[arm] = replace(by_name[arm], build=value, server_bin=None)
    return tuple(by_name[a.name] for a in arms)


def final_argv(
    arm: ArmSpec,
    cfg: RunConfig,
    server_bin: str,
    model_path: str,
    ctx_size: int,
    supports_fit: bool,
) -> list[str]:
    """The exact argv an arm's server starts with (host/port added by the launcher)."""
    argv = [server_bin, *(a.format(model=model_path) for a in arm.model_args), *arm.args]
    if not arm.pin:
        return argv
    pinned: list[str] = []
    # An arm that turns --fit on places the layers itself: a pinned -ngl would make fit abort
    # ("n_gpu_layers already set by user", common/fit.cpp, common_params_fit_impl).
    fit_on = (flag_value(arm.args, FLAGS["fit"]) or "").lower() in ("on", "1", "true", "yes")
    if not has_flag(arm.args, *FLAGS["gpu_layers"]) and not fit_on:
        pinned += ["-ngl", "99"]
    if supports_fit and not has_flag(arm.args, *FLAGS["fit"]):
        pinned += ["--fit", "off"]
    if not has_flag(arm.args, *FLAGS["ctx_size"]):
        pinned += ["-c", str(ctx_size)]
    if not has_flag(arm.args, *FLAGS["parallel"]):
        pinned += ["-np", str(cfg.server_slots)]
    if not has_flag(arm.args, *FLAGS["threads"]):
        pinned += ["-t", str(cfg.threads or default_threads())]
    if not has_flag(arm.args, *FLAGS["flash_attn"]):
        pinned += ["-fa", cfg.flash_attn]
    if cfg.verbose_log and not has_flag(arm.args, *FLAGS["verbosity"]):
        pinned += ["-lv", "4"]
    return argv + pinned


def _validate_search(cfg: RunConfig) -> None:
    flag = f"--{cfg.search} auto"
    if cfg.search not in ("concurrency", "rate"):
        raise ConfigError(f"a capacity search is over concurrency or rate, got {cfg.search!r}")
    if not cfg.slo:
        raise ConfigError(f"{flag} searches for the highest load within an SLO: give --slo, "
                          "e.g. --slo ttft_p95<=500ms")
    if cfg.concurrency_levels or cfg.rate_levels or (cfg.search == "concurrency" and cfg.rate is not None):
        raise ConfigError(f"{flag} picks its own levels: drop the --concurrency/--rate list")
    if cfg.schedule == "interleaved":
        raise ConfigError(f"{flag} needs --schedule sequential (interleaved runs one request at a time)")
    if not cfg.search_time_s > 0:
        raise ConfigError(f"--search-time-s must be > 0 seconds, got {cfg.search_time_s}")
    for name, v in (("--search-max", cfg.search_max), ("--search-start", cfg.search_start)):
        if v is not None and not v > 0:
            raise ConfigError(f"{name} must be > 0, got {v}")
        if v is not None and cfg.search == "concurrency" and v != int(v):
            raise ConfigError(f"{name} of a concurrency search must be a whole number, got {v}")
    if cfg.search_max is not None and cfg.search_start is not None and cfg.search_start > cfg.search_max:
        raise ConfigError(f"--search-start {cfg.search_start:g} is above --search-max {cfg.search_max:g}")
    if cfg.search == "concurrency" and cfg.search_max and cfg.parallel and cfg.parallel < cfg.search_max:
        raise ConfigError(f"--parallel {cfg.parallel} gives fewer slots than --search-max {cfg.search_max:g}: "
                          "the higher concurrencies would queue in the server")


def default_threads() -> int:
    """All cores but one: llama-server's worker threads spin, and a client starved of CPU
    stamps arrivals late (seen on a 2-core box: 8 ms send delays with -t 2, 0.1 ms with -t 1)."""
    return max(1, (os.cpu_count() or 2) - 1)


def auto_ctx_size(longest_prompt_tokens: int, max_tokens: int, parallel: int) -> int:
    """Context for the longest prompt plus max_tokens per slot, +64 slack, rounded up to 256."""
    per_slot = longest_prompt_tokens + max_tokens + 64
    total = per_slot * max(parallel, 1)
    return -(-total // 256) * 256


SEARCH_MAX_CONCURRENCY = 32  # a concurrency search's ceiling (and -np) without --search-max or --parallel
MAX_RUNS = 100_000  # repetitions of every prompt per arm: the plan is built in memory
MAX_BLOCKS = 1_000  # server sessions per arm (each one a launch)


def validate(cfg: RunConfig) -> RunConfig:
    if not 1 <= cfg.blocks <= MAX_BLOCKS:
        raise ConfigError(f"--blocks must be 1 to {MAX_BLOCKS} server sessions per arm, got {cfg.blocks}")
    if cfg.runs <= 0:
        raise ConfigError(f"--runs must be >= 1, got {cfg.runs}")
    if cfg.runs > MAX_RUNS:
        raise ConfigError(f"--runs {cfg.runs} is more than {MAX_RUNS:,} repetitions of every prompt; "
                          "run nights or several runs instead (the report pools files)")
    if cfg.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {cfg.warmup}")
    if cfg.max_tokens < 2:
        raise ConfigError(f"--max-tokens must be >= 2 (TTFT and one decode step), got {cfg.max_tokens}; "
                          "a decode rate needs at least 12 (docs/metrics.md)")
    if cfg.concurrency < 1 or any(c < 1 for c in cfg.concurrency_levels):
        raise ConfigError(f"--concurrency must be >= 1, got {cfg.concurrency_levels or cfg.concurrency}")
    if len(set(cfg.concurrency_levels)) != len(cfg.concurrency_levels):
        raise ConfigError(f"--concurrency levels must differ, got {','.join(map(str, cfg.concurrency_levels))}")
    if cfg.concurrency_levels and (cfg.rate is not None or cfg.rate_levels):
        raise ConfigError("--concurrency levels are a closed loop: drop --rate (or give --rate levels and one "
                          "--concurrency, the server's slots)")
    if cfg.rate is not None and cfg.rate <= 0 or any(not r > 0 for r in cfg.rate_levels):
        raise ConfigError(f"--rate must be > 0 requests/s, got {cfg.rate_levels or cfg.rate}")
    if len(set(cfg.rate_levels)) != len(cfg.rate_levels):
        raise ConfigError(f"--rate levels must differ, got {','.join(f'{r:g}' for r in cfg.rate_levels)}")
    if cfg.parallel is not None and cfg.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1 slots, got {cfg.parallel}")
    if cfg.schedule not in ("sequential", "interleaved"):
        raise ConfigError(f"--schedule must be sequential or interleaved, got {cfg.schedule!r}")
    if cfg.schedule == "interleaved" and (cfg.concurrency > 1 or cfg.rate is not None or cfg.concurrency_levels
                                          or cfg.rate_levels):
        raise ConfigError("--schedule interleaved runs one request at a time: drop --concurrency/--rate "
                          f"(got --concurrency {cfg.concurrency}, --rate {cfg.rate})")
    if cfg.search is not None:
        _validate_search(cfg)
    if cfg.endpoint not in ("completion", "chat"):
        raise ConfigError(f"--endpoint must be completion or chat, got {cfg.endpoint!r}")
    if cfg.http_client not in ("raw", "httpx"):
        raise ConfigError(f"--http-client must be raw or httpx, got {cfg.http_client!r}")
    if not cfg.arms:
        raise ConfigError("no arms to run")
    return cfg
