#!/usr/bin/env bash
# Device call 1 (see prepare.sh): keep the GGUF's first half in /tmp, install gguf, show the stack.
set -u
mkdir -p /tmp/g && cp .gpu/a/part.aa .gpu/a/gguf-*.whl /tmp/g/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site /tmp/g/gguf-*.whl
export PYTHONPATH=/tmp/site
python3 -c "import sys, torch, transformers, peft, accelerate, gguf, rich
print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__,
      accelerate.__version__, torch.cuda.get_device_name(0))"
python3 bench/implant.py --help > /dev/null && echo "bench/implant.py imports"
echo "$(nproc) CPUs"
