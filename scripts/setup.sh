#!/usr/bin/env bash
# Set up qkv for development in ./.venv: torch 2.13.0 first (the CPU build that lies on this machine's disk, so pip
# never resolves a multi-GB CUDA build), then qkv itself in editable mode with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv

pip_args=(--quiet --disable-pip-version-check)
# the machine's local wheel directory holds torch-2.13.0+cpu; elsewhere pip takes torch==2.13.0 from the index
[ -d /opt/wheels ] && pip_args+=(--find-links /opt/wheels)

# system packages for the attention page's browser tests and for Korean labels in plots (Debian; skipped elsewhere)
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && ! { [ -x /usr/bin/chromium ] && fc-list | grep -q "Noto Sans CJK"; }; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-cjk; } \
    >/dev/null 2>&1 || echo "warning: could not install chromium/fonts-noto-cjk; browser tests will be skipped" >&2
fi

.venv/bin/python -m pip install "${pip_args[@]}" "torch==2.13.0"
.venv/bin/python -m pip install "${pip_args[@]}" -e ".[dev]"
echo "qkv is set up in .venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))" >&2
