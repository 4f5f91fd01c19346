#!/usr/bin/env bash
# Nightly A/B on a GPU box, safe under cron:
#   17 2 * * *  /path/to/abtest/scripts/nightly.sh --config /path/to/nightly.conf
#
# Runs `abtest run` for each configured model into EVIDENCE_DIR/YYYY-MM-DD/, makes tonight's report
# and gates tonight (`abtest report --history --night`), prunes evidence older than RETENTION_DAYS,
# logs everything to EVIDENCE_DIR/nightly.log and prints a short summary on stdout. Writes
# EVIDENCE_DIR/index.html: trends per (model, arm), tonight's gate, links to each night's report.
# --night YYYY-MM-DD files tonight under that date instead of today's (a backfill, a test).
# Exit codes (docs/cli.md): 0 ok or no verdict yet, 1 regression found, 2 usage error, 3 missing
# binary or model, 4 partial run, 5 no evidence tonight (or a model/arm missing), 75 busy.
set -uo pipefail

# The exit codes of abtest/errors.py (tests/unit/test_gate.py holds these equal to it).
EXIT_USAGE=2
EXIT_REGRESSION=1
EXIT_BUSY=75

here="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
export PATH="$here/.venv/bin:/usr/local/bin:/usr/bin:/bin"
config="$here/scripts/nightly.conf"
night="$(date +%Y-%m-%d)"
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --night)
      case "${2:-}" in
        [0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]) night="$2"; shift 2 ;;
        *) echo "nightly: --night needs a date YYYY-MM-DD, got '${2:-}'" >&2; exit "$EXIT_USAGE" ;;
      esac ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "nightly: unknown argument $1 (see --help)" >&2; exit "$EXIT_USAGE" ;;
  esac
done
[ -f "$config" ] || { echo "nightly: no config at $config — copy scripts/nightly.conf.example there or pass --config FILE" >&2; exit "$EXIT_USAGE"; }
# shellcheck source=/dev/null
. "$config"
: "${MODELS:?nightly: MODELS is empty in $config}" "${ARMS:=baseline cpu-moe}" "${RUNS:=5}" "${BLOCKS:=2}" "${BUCKETS:=}"
: "${MAX_TOKENS:=128}" "${EVIDENCE_DIR:=evidence/nightly}" "${RETENTION_DAYS:=60}" "${REPORT_FLAGS:=}"
case "$EVIDENCE_DIR" in /*) ;; *) EVIDENCE_DIR="$here/$EVIDENCE_DIR" ;; esac
mkdir -p "$EVIDENCE_DIR" || { echo "nightly: cannot create $EVIDENCE_DIR" >&2; exit "$EXIT_USAGE"; }

# One nightly at a time: a second one exits at once.
exec 9>"$EVIDENCE_DIR/.nightly.lock"
if ! flock -n 9; then
  echo "nightly: another nightly run holds $EVIDENCE_DIR/.nightly.lock (pid $(cat "$EVIDENCE_DIR/.nightly.pid" 2>/dev/null || echo '?')); exiting" >&2
  exit "$EXIT_BUSY"
fi
echo $$ > "$EVIDENCE_DIR/.nightly.pid"

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
  abtest run --model "$model" "${arm_flags[@]}" --runs "$RUNS" --blocks "$BLOCKS" --max-tokens "$MAX_TOKENS" \
    "${bucket_flags[@]}" --out "$out" --quiet >> "$log" 2>&1
  rc=$?
  say "run $model exit $rc"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
done

abtest report "$out" --format markdown --out "$out/report" > "$out/report.md" 2>> "$log"
# The gate judges tonight's folder by name: a night whose runs wrote nothing is exit 5, never
# the previous night judged again. Its one-line verdict (stderr) goes to the log and the summary.
# shellcheck disable=SC2086  # REPORT_FLAGS is a list of flags
# It also writes the index page, EVIDENCE_DIR/index.html: tonight's gate, trends per (model, arm),
# each night linked to its report/report.html.
abtest report --history "$EVIDENCE_DIR" --night "$night" --format markdown --out "$EVIDENCE_DIR/trends" \
  --html "$EVIDENCE_DIR/index.html" $REPORT_FLAGS > "$out/history.md" 2> "$out/history.err"
hist=$?
cat "$out/history.err" >> "$log"
say "history exit $hist"

# Retention: nights older than RETENTION_DAYS go (only YYYY-MM-DD directories are touched).
find "$EVIDENCE_DIR" -mindepth 1 -maxdepth 1 -type d -name '????-??-??' -mtime +"$RETENTION_DAYS" \
  -print -exec rm -rf {} + | sed 's/^/pruned /' >> "$log"

echo "abtest nightly $night: runs exit $status, history exit $hist; evidence $out; index $EVIDENCE_DIR/index.html"
head -n 20 "$out/history.md" 2>/dev/null
tail -n 3 "$out/history.err" 2>/dev/null
# A regression first; else the runs' own code (it names the cause: 3 a model file gone, 4 a
# partial run), else the gate's (5 no evidence tonight, 2 bad REPORT_FLAGS).
if [ "$hist" -eq "$EXIT_REGRESSION" ]; then exit "$EXIT_REGRESSION"; fi
if [ "$status" -ne 0 ]; then exit "$status"; fi
exit "$hist"
