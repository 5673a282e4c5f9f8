#!/usr/bin/env bash
# Train-step MFU of a ~1B model (L20-D1536, bf16, S=2048) on one GPU or TPU, for each attention
# implementation, against the chip's measured bf16 matmul rate. Under 8 minutes; exits 2 on a
# machine without an accelerator. `tools/bench_device.sh --smoke` checks it on the CPU (tiny model).
# Other flags: --batch=8 --layers=20 --d_model=1536 --repeats=5.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 470 "$PY" -m dlmjax.benchmarks.device "$@"
