#!/usr/bin/env bash
# Every GPU measurement of the project in one run, one table (printed and written under docs/):
#   bash scripts/benchmarks/gpu_suite.sh                        # CUDA device 0, about 8 minutes on one H100
#   bash scripts/benchmarks/gpu_suite.sh --device cpu --tiny    # the same code paths on tiny configs
# All options: python scripts/benchmarks/gpu_suite.py --help
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python scripts/benchmarks/gpu_suite.py "$@"
