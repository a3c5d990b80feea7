#!/usr/bin/env bash
# Under the authors' folder name (`train_autogressive`): an alias of scripts/train_autoregressive/extract_codes.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/../train_autoregressive/extract_codes.sh" "$@"
