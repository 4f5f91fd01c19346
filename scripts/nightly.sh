#!/usr/bin/env bash
# Nightly A/B on a GPU box, safe under cron:
#   17 2 * * *  /path/to/abtest/scripts/nightly.sh --config /path/to/nightly.conf
#
# Runs `abtest run` for each configured model into EVIDENCE_DIR/YYYY-MM-DD/, makes tonight's report
# and the history report (`abtest report --history`), prunes evidence older than RETENTION_DAYS,
# logs everything to EVIDENCE_DIR/nightly.log and prints a short summary on stdout.
# Exit codes (docs/cli.md): 0 ok, 1 regression found, 2 usage error, 3 missing binary or model,
# 4 partial run, 75 another nightly is still running.
set -uo pipefail

here="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
export PATH="$here/.venv/bin:/usr/local/bin:/usr/bin:/bin"
config="$here/scripts/nightly.conf"
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "nightly: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -f "$config" ] || { echo "nightly: no config at $config — copy scripts/nightly.conf.example there or pass --config FILE" >&2; exit 2; }
# shellcheck source=/dev/null
. "$config"
: "${MODELS:?nightly: MODELS is empty in $config}" "${ARMS:=baseline cpu-moe}" "${RUNS:=5}" "${BUCKETS:=}"
: "${MAX_TOKENS:=128}" "${EVIDENCE_DIR:=evidence/nightly}" "${RETENTION_DAYS:=60}" "${REPORT_FLAGS:=}"
case "$EVIDENCE_DIR" in /*) ;; *) EVIDENCE_DIR="$here/$EVIDENCE_DIR" ;; esac
mkdir -p "$EVIDENCE_DIR" || { echo "nightly: cannot create $EVIDENCE_DIR" >&2; exit 2; }

# One nightly at a time: a second one exits at once.
exec 9>"$EVIDENCE_DIR/.nightly.lock"
if ! flock -n 9; then
  echo "nightly: another nightly run holds $EVIDENCE_DIR/.nightly.lock (pid $(cat "$EVIDENCE_DIR/.nightly.pid" 2>/dev/null || echo '?')); exiting" >&2
  exit 75
fi
echo $$ > "$EVIDENCE_DIR/.nightly.pid"

night="$(date +%Y-%m-%d)"
out="$EVIDENCE_DIR/$night"
log="$EVIDENCE_DIR/nightly.log"
mkdir -p "$out"
say() { echo "[$(date '+%F %T')] $*" >> "$log"; }
say "nightly $night starting (config $config)"

arm_flags=()
for a in $ARMS; do arm_flags+=(--arm "$a"); done
bucket_flags=()
[ -n "$BUCKETS" ] && bucket_flags=(--buckets "$BUCKETS")

status=0
for model in $MODELS; do
  say "run $model"
  abtest run --model "$model" "${arm_flags[@]}" --runs "$RUNS" --max-tokens "$MAX_TOKENS" \
    "${bucket_flags[@]}" --out "$out" --quiet >> "$log" 2>&1
  rc=$?
  say "run $model exit $rc"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
done

abtest report "$out" --format markdown --out "$out/report" > "$out/report.md" 2>> "$log"
abtest report --history "$EVIDENCE_DIR" --format markdown --out "$EVIDENCE_DIR/trends" $REPORT_FLAGS \
  > "$out/history.md" 2>> "$log"
hist=$?
say "history exit $hist"

# Retention: nights older than RETENTION_DAYS go (only YYYY-MM-DD directories are touched).
find "$EVIDENCE_DIR" -mindepth 1 -maxdepth 1 -type d -name '????-??-??' -mtime +"$RETENTION_DAYS" \
  -print -exec rm -rf {} + | sed 's/^/pruned /' >> "$log"

echo "abtest nightly $night: runs exit $status, history exit $hist; evidence $out"
head -n 20 "$out/history.md" 2>/dev/null
if [ "$hist" -eq 1 ]; then exit 1; fi
if [ "$status" -ne 0 ]; then exit "$status"; fi
[ "$hist" -eq 0 ] || exit "$hist"
exit 0
