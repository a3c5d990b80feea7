#!/usr/bin/env bash
# `mergevq sample` on every local Ascend NPU of this node: sample_gpu.sh with --accelerator npu (devices
# counted from ASCEND_RT_VISIBLE_DEVICES / npu-smi). Both forms, the authors' `sample_npu.sh TOTAL_RANK`
# included, the recipe and the environment: see sample_gpu.sh.
MERGEVQ_ACCELERATOR=npu exec "$(dirname "${BASH_SOURCE[0]}")/sample_gpu.sh" "$@"
