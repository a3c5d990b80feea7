#!/usr/bin/env bash
# One GPU benchmark command (issue #14): GR-d64 bf16 training step with MFU, tokenizer encode / decode
# images/s by K, MergeAR-L sampling tokens/s at batch 1 / 64 / 256 with the full and the compressed KV
# cache, peak memory of each. Prints one markdown table; writes JSON to --json PATH, else
# $OUT/gpu_suite.json when $OUT is set, else benchmarks/results/gpu_suite-<device>-<time>.json.
#
# On a machine with one GPU (< 8 minutes; about 5 on an H100 / H200), from the repository root:
#     bash benchmarks/gpu_suite.sh
# A CPU check of the whole path (< 60 s; tests/test_gpu_suite.py runs it):
#     bash benchmarks/gpu_suite.sh --device cpu --quick
# Other options: python benchmarks/gpu_suite.py --help (--compile, --peak-tflops, --train-batch,
# --tok-batch, --ar-batches, --ar-weights bf16, --only train,tokenizer,sample, --precision 32).
#
# The interpreter is $PYTHON, else the checkout's .venv/bin/python, else python3. Needs the packages
# of requirements.txt that the suite imports (torch, lightning, transformers, timm, einops, omegaconf,
# lpips). A GPU image that has torch but lacks omegaconf / lpips: pip-download their wheels
# (omegaconf==2.4.0 lpips==0.1.4, both pure Python, --no-deps), `pip install --target DIR` them there,
# put DIR on PYTHONPATH, then run this script (it keeps PYTHONPATH).
# The exit status is 1 when any row failed (its error is in the table and the JSON).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" "$root/benchmarks/gpu_suite.py" "$@"
