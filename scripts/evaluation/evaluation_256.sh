#!/usr/bin/env bash
# The authors' name: an alias of evaluation_mergevq.sh (every recipe here is 256 x 256, the evaluation
# resolution defaults to the tokenizer's); same arguments and editable defaults.
exec "$(dirname "${BASH_SOURCE[0]}")/evaluation_mergevq.sh" "$@"
