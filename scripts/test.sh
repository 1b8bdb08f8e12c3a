#!/usr/bin/env bash
# Run the test suite. Default: everything but the `slow` marker (under 10 minutes on 2 cores).
#   scripts/test.sh           the default suite (what CI runs)
#   scripts/test.sh --slow    only the slow job: long fuzzing (1,000 hypothesis examples) and heavy tests
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--slow" ]; then
  shift
  export HYPOTHESIS_PROFILE=slow
  exec .venv/bin/python -m pytest -q -n 2 -m slow "$@"
fi
exec .venv/bin/python -m pytest -q -n 2 "$@"
