#!/usr/bin/env bash
# Stage the wheels that the model-coverage GPU tests (tests/models/test_models_cuda.py)
# need on a GPU machine without a package index, into .gpu-wheels/ beside the PyCUDA
# wheel that ../shared/gpu/stage-wheels puts there. scripts/gpu_check.sh installs every
# wheel of that folder (pip --no-index --no-deps --target /tmp/site).
#
#   bash scripts/stage_gpu_wheels.sh          # from the project root, on a machine with PyPI
#   bash scripts/stage_gpu_wheels.sh --check  # also prove, in a fresh venv that sees only
#                                             # what the GPU machine has, that timm and
#                                             # ultralytics import and build models offline
#
# The GPU machine has torch, torchvision (and torch's own requirements), numpy, pyyaml,
# pytest and opencv-python-headless. Measured with --check (timm 1.0.31, ultralytics
# 8.4.190): beyond those, `import timm; timm.create_model(...)` and
# `from ultralytics import YOLO; YOLO("yolov8n.yaml")` need only pillow. timm's
# huggingface_hub/safetensors and ultralytics' matplotlib/polars/psutil/requests/thop
# are imported lazily (downloads, plots, profiling, exports), none of which the tests use.
# Binary wheels (pillow) are fetched for the GPU machine's Python (3.12, manylinux
# x86-64); PYTHON_VERSION=3.11 etc. stages for another one.
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  echo "usage: stage_gpu_wheels.sh [--check]"
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PINS=("timm==1.0.31" "ultralytics==8.4.190" "pillow>=10")

download() {  # download DEST PYTHON_VERSION
  mkdir -p "$1"
  python3 -m pip download -q --no-deps --dest "$1" --only-binary=:all: \
    --python-version "$2" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any "${PINS[@]}"
}

download .gpu-wheels "$PYTHON_VERSION"
ls .gpu-wheels
[ "${1:-}" = "--check" ] || exit 0

# The check: a venv without system packages that sees only what the GPU machine has
# (torch and its own requirements, torchvision, numpy, yaml, cv2, pytest) plus the same
# wheels for this machine's Python, installed the way gpu_check.sh does (--no-deps).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
here=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
download "$work/wheels" "$here"
python3 -m venv --without-pip "$work/venv"
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$work/gpu-site"
for name in torch torchgen functorch torchvision numpy numpy.libs yaml _yaml cv2 opencv_python.libs \
            pytest _pytest pluggy iniconfig py.py typing_extensions.py sympy mpmath networkx jinja2 \
            markupsafe filelock fsspec nvidia triton; do
  for path in "$site/$name" "$site/$name"-*.dist-info; do
    if [ -e "$path" ]; then ln -sf "$path" "$work/gpu-site/"; fi
  done
done
python3 -m pip install -q --no-index --no-deps --target "$work/site" "$work"/wheels/*.whl
PYTHONPATH="$work/site:$work/gpu-site" "$work/venv/bin/python" - <<'PY'
import warnings
warnings.simplefilter("ignore")
import torch
import timm
m = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval()
print("timm", timm.__version__, tuple(m(torch.randn(1, 3, 64, 64)).shape))
from ultralytics import YOLO
y = YOLO("yolov8n.yaml")
print("ultralytics ok:", type(y.model).__name__)
PY
