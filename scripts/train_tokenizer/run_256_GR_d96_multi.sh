#!/usr/bin/env bash
# GR_d96 tokenizer (configs/tokenizer/GR_d96.yaml), one launch per node: run_256_GR_d96_multi.sh MASTER_ADDR MASTER_PORT NODE_RANK [KEY=VALUE ...]. See _launch.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" multi GR_d96 "$@"
