#!/usr/bin/env bash
# Run the test suite. Default: everything but the `slow` marker (measured on a 2-core AVX2-only EPYC: about 9 minutes;
# on AVX-512 machines the AVX2 pass adds about a minute; CI must stay under 10 minutes). Workers take whole modules
# (--dist loadscope), so a module's expensive fixtures (a trained model, the tour) are built once, not once per worker.
#   scripts/test.sh           the default suite (what CI runs)
#   scripts/test.sh --slow    only the slow job: long fuzzing (1,000 hypothesis examples), every README command
#                             exactly as written, and other heavy tests
# On a CPU with AVX-512 the numerical tests run a second time on PyTorch's AVX2 kernels (ATEN_CPU_CAPABILITY=avx2):
# kernels sum in different orders, and a tolerance that holds on one CPU must hold on the others.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--slow" ]; then
  shift
  export HYPOTHESIS_PROFILE=slow
  exec .venv/bin/python -m pytest -q -n 2 --dist loadscope -m slow "$@"
fi
.venv/bin/lint-imports --no-cache  # the layers and what the core and the models may import (pyproject.toml)
.venv/bin/mypy  # src/ type-checks clean ([tool.mypy] in pyproject.toml)
.venv/bin/python -m pytest -q -n 2 --dist loadscope "$@"
if [ $# -eq 0 ] && grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  echo "again on AVX2 kernels (ATEN_CPU_CAPABILITY=avx2): the numerical tests"
  ATEN_CPU_CAPABILITY=avx2 .venv/bin/python -m pytest -q -n 2 tests/attention tests/models tests/decoding \
    tests/visualization/test_capture.py tests/pretrained tests/analysis
fi
