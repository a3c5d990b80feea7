#!/usr/bin/env bash
# G_d32 tokenizer (configs/tokenizer/G_d32.yaml), one launch per node: run_256_G_d32_multi.sh MASTER_ADDR MASTER_PORT NODE_RANK [KEY=VALUE ...]. See _launch.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" multi G_d32 "$@"
