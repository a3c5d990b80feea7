#!/usr/bin/env bash
# R tokenizer (configs/tokenizer/R.yaml), one launch per node: run_256_R_multi.sh MASTER_ADDR MASTER_PORT NODE_RANK [KEY=VALUE ...]. See _launch.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" multi R "$@"
