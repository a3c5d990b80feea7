#!/usr/bin/env bash
# The authors' name (their spelling, `train_autogressive`): an alias of scripts/train_autoregressive/run.sh,
#   NNODES=N bash scripts/train_autogressive/run.sh MASTER_ADDR MASTER_PORT NODE_RANK [CONFIG] [KEY=VALUE ...]
exec "$(dirname "${BASH_SOURCE[0]}")/../train_autoregressive/run.sh" "$@"
