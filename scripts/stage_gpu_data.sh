#!/usr/bin/env bash
# Stage the benchmark's clips and weights into DEST (default: .gpu-data/ in the project,
# git-ignored) for a machine that lacks them, e.g. the GPU machine, which takes the folder
# along; point the benchmark at it with --data-dir DEST or DELTACONVERT_DATA_DIR=DEST.
#
#   scripts/stage_gpu_data.sh [DEST]
#
# A thin wrapper over deltaconvert.bench.stage (python3 -m deltaconvert.bench.stage --help),
# run with $PYTHON (default python3) and this checkout first on PYTHONPATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [ $# -eq 0 ]; then set -- "$root/.gpu-data"; fi
exec "${PYTHON:-python3}" -m deltaconvert.bench.stage "$@"
