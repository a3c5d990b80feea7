#!/usr/bin/env bash
# G_d64 tokenizer (configs/tokenizer/G_d64.yaml), one node, one process per local device. See _launch.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" single G_d64 "$@"
