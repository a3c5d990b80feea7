#!/usr/bin/env bash
# Install mergevq into ./.venv (or $MERGEVQ_VENV) on a CPU machine, without CUDA wheels.
#   bash scripts/install.sh          # library, CLI and demo
#   bash scripts/install.sh --test   # plus the test extras
# GPU / NPU users: see README "GPU (CUDA) install" and "Ascend NPU install" instead.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MERGEVQ_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test]" ;;
    *) echo "install.sh: unknown argument '$arg' (expected --test)" >&2; exit 2 ;;
  esac
done

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# The constraints pin torch/torchvision to the local CPU build; exported so that pip's isolated
# build environments obey them too (an unpinned torch there would pull several GB of CUDA wheels).
export PIP_CONSTRAINT="$repo/constraints.txt"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$repo/requirements.txt"
# A regular (non-editable) install also places the torchvision CPU shim (.pth) in site-packages, and
# records this checkout's path: the installed `mergevq` reads "$repo/configs" (your edits) while it
# exists, and the copy packaged now only once it is gone (README "Where configs come from").
"$venv/bin/python" -m pip install --quiet "$repo$extras"
"$venv/bin/python" -m pip check
"$venv/bin/python" -c "import mergevq, taming, torchvision, lightning; print('mergevq', mergevq.__version__, 'installed in', '$venv')"
