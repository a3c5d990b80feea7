#!/usr/bin/env bash
# `mergevq sample` on every local Ascend NPU of this node: sample_gpu.sh with --accelerator npu
# (DEVICES_PER_NODE default: torch_npu's device count). Arguments and environment: see sample_gpu.sh.
MERGEVQ_ACCELERATOR=npu exec "$(dirname "${BASH_SOURCE[0]}")/sample_gpu.sh" "$@"
