#!/usr/bin/env bash
# G_d64 tokenizer (configs/tokenizer/G_d64.yaml), one launch per node: run_256_G_d64_multi.sh MASTER_ADDR MASTER_PORT NODE_RANK [KEY=VALUE ...]. See _launch.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" multi G_d64 "$@"
