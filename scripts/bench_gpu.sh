#!/usr/bin/env bash
# Device benchmark of the product's engine (px/s, MFU vs the device's bf16 dense peak, ratio to the seed).
# Usage: bash scripts/bench_gpu.sh [--device cuda|cpu] [--quick] [extra bench_gpu.py options]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
exec "$PY" scripts/bench_gpu.py "$@"
