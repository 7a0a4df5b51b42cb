#!/usr/bin/env bash
# Here, before a GPU lease: put what the device needs under .gpu/ (git-ignored). One call may
# carry 64 MiB, the bundled SmolLM2 GGUF is 98 MB, so it goes in two halves:
#   .gpu/a: the first half and the gguf wheel for the device's Python 3.12 (call 1, stage.sh)
#   .gpu/b: the second half (call 2, run.sh)
# Then, through the device tool, one call right after the other (the machine stays warm 30 s):
#   run  command "bash bench/device/stage.sh"            carry [".gpu/a"]  timeout_s 120
#   run  command "LIMIT=520 bash bench/device/run.sh"    carry [".gpu/b"]  timeout_s 600
# run.sh's figures come back as $OUT/NAME.json (bench/implant.py's --json-out) and NAME.log.
# The 2026-12-04 set (tiny-model tests, a shadow, 1,000 look-alikes): in call 2 run
#   "JOBS_FILE=bench/device/gpu-checks.jobs LIMIT=470 bash bench/device/run.sh"
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
gguf=$($py -c "from providers.local_models import smollm2_gguf_path; print(smollm2_gguf_path())")
version=$($py -c "import importlib.metadata as m; print(m.version('gguf'))")
rm -rf .gpu && mkdir -p .gpu/a .gpu/b
split -b 50000000 "$gguf" .gpu/part.
mv .gpu/part.aa .gpu/a/ && mv .gpu/part.ab .gpu/b/
$py -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d .gpu/a \
  "gguf==$version"
echo "GGUF sha256 $(sha256sum "$gguf" | cut -c1-16) (run.sh prints the device's)"
du -sh .gpu/a .gpu/b
