#!/usr/bin/env bash
# The GPU check of the CUDA backend, run from the project root on a GPU machine:
#
#   bash scripts/gpu_check.sh
#
# 1. installs the staged PyCUDA wheel (.gpu-wheels/, see ../shared/gpu/stage-wheels) into
#    /tmp/site, puts /usr/local/cuda/bin first on PATH (PyCUDA runs nvcc at run time) and
#    gives each process 2 CPU threads unless OMP_NUM_THREADS is set;
# 2. runs the GPU suite (tests marked cuda: every op against the reference backend, whole models
#    at threshold 0 eagerly and under CUDA-graph replay, graph-mode behaviour);
# 3. runs the op and work-list tests again under compute-sanitizer memcheck (caching allocator off, so
#    out-of-bounds accesses are not hidden inside pooled blocks) unless SANITIZER=0;
# 4. runs the speed probe (scripts/speed_probe.py) unless PROBE=0, and
#    scripts/bench.py --quick unless BENCH=0, on the clips and weights staged in .gpu-data/
#    (scripts/stage_gpu_data.sh) and the tuned thresholds of configs/;
# 5. prints a summary table last.
# The GPU suite takes about 10 minutes (the whole-architecture tests about 7 of them): where
# one command may run 10 minutes, split it over two calls with PYTEST_ARGS='-k "not
# test_model_matches_dense"' and PYTEST_ARGS='-k test_model_matches_dense' (SANITIZER=0
# PROBE=0 BENCH=0 for the second).
# Logs and JSON go to $OUT (default /tmp/gpu_check). Extra arguments, parsed as shell words
# (quote inside them): PYTEST_ARGS (GPU suite), SANITIZER_ARGS (e.g. '-k "conv2d or fused"'),
# PROBE_ARGS (speed probe, e.g. '--frames 20 --profile').
set -uo pipefail
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then  # the comment above, without running anything
    sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "$0"
    exit 0
fi
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu-wheels/*.whl || {
    echo "installing .gpu-wheels failed: run ../shared/gpu/stage-wheels here and carry .gpu-wheels"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD
export DELTACONVERT_DATA_DIR=$PWD/.gpu-data
export PATH=/usr/local/cuda/bin:$PATH
# torch's CPU thread pool per process: with pytest-xdist workers (-n) at the default (one
# thread per core each) they oversubscribe the cores and the architecture tests crawl
# (session 12: 1 of 68 done in 150 s at -n 8; 49 in 55 s with 2 threads each).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/gpu.txt"

eval "pytest_args=(${PYTEST_ARGS:-})"
eval "sanitizer_args=(${SANITIZER_ARGS:-})"
eval "probe_args=(${PROBE_ARGS:-})"
declare -A STATUS SECONDS_TAKEN
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, record status and time
    local name=$1; shift
    local start=$SECONDS
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    STATUS[$name]=$rc
    SECONDS_TAKEN[$name]=$((SECONDS - start))
}

export DELTACONVERT_REPORT="$OUT/models.jsonl"
rm -f "$DELTACONVERT_REPORT"
step gpu_suite python3 -m pytest tests -m cuda -q -rfEs --durations=10 --junitxml="$OUT/gpu_suite.xml" "${pytest_args[@]}"
if [ "${SANITIZER:-1}" != 0 ]; then
    step sanitizer env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 86 \
        python3 -m pytest tests/ops/test_cuda_ops.py tests/ops/test_work_lists.py -q -x -p no:cacheprovider \
        --junitxml="$OUT/sanitizer.xml" \
        "${sanitizer_args[@]}"
fi
if [ "${PROBE:-1}" != 0 ]; then
    step speed_probe python3 scripts/speed_probe.py --json "$OUT/speed_probe.json" "${probe_args[@]}"
fi
if [ "${BENCH:-1}" != 0 ]; then
    step bench python3 scripts/bench.py --quick --configs-dir configs --out "$OUT/bench"
fi

python3 - "$OUT" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

out = Path(sys.argv[1])
print("\n## GPU check summary\n")
print((out / "gpu.txt").read_text().strip().replace("\n", " | "), "\n")
for name in ("gpu_suite", "sanitizer"):
    path = out / f"{name}.xml"
    if not path.exists():
        print(f"{name}: no junit report")
        continue
    counts = defaultdict(lambda: defaultdict(int))
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "?").split(".")[-1]
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        counts[module][kind] += 1
    print(f"| {name}: module | passed | failed | errors | skipped |\n|---|---|---|---|---|")
    for module, c in sorted(counts.items()):
        print(f"| {module} | {c['passed']} | {c['failure']} | {c['error']} | {c['skipped']} |")
    print()
log = out / "sanitizer.log"
if log.exists():
    lines = [l for l in log.read_text().splitlines() if "ERROR SUMMARY" in l]
    print("compute-sanitizer memcheck:", lines[-1].strip() if lines else "no summary line")
report = out / "models.jsonl"
if report.exists():
    fmt = lambda v: "" if v is None else f"{v:.2e}"
    print("\n| model | dtype | mode | max rel. error vs dense fp32 (≥50 frames) | frame 0 "
          "| vs float64 (fp32) | dense fp32 vs float64 | vs reference backend (fp16) | dense fp16 vs fp32 "
          "| dense vs dense channels_last | accelerated ops |\n|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    for r in (r for r in rows if "dtype" in r):  # tests/convert/test_architectures_cuda.py
        print(f"| {r['model']} | {r['dtype'].replace('torch.', '')} | {'graph' if r['graph'] else 'eager'} "
              f"| {fmt(r['max_rel_error'])} | {fmt(r.get('frame0_error'))} "
              f"| {fmt(r.get('max_rel_error_vs_fp64'))} | {fmt(r.get('dense_fp32_error_vs_fp64'))} "
              f"| {fmt(r.get('max_rel_error_vs_reference'))} "
              f"| {fmt(r.get('dense_fp16_error'))} | {fmt(r.get('dense_layout_error'))} "
              f"| {r['accelerated_ops']}/{r['ops']} |")
    print("\n| source | model | dense islands | max rel. error (fp32) | fp32 vs fp64 noise | "
          "accelerated ops |\n|---|---|---|---|---|---|")
    for r in (r for r in rows if "source" in r):  # tests/models/test_models_cuda.py
        print(f"| {r['source']} | {r['model']} | {r['dense_islands']} | {fmt(r['max_rel_error'])} "
              f"| {fmt(r['fp32_vs_fp64_noise'])} | {r['accelerated_ops']}/{r['ops']} |")
PY
probe=$OUT/speed_probe.log
[ -f "$probe" ] && { echo; grep '^|' "$probe"; }
echo
echo "| step | exit status | seconds |"
echo "|---|---|---|"
for name in gpu_suite sanitizer speed_probe bench; do
    [ -n "${STATUS[$name]+x}" ] && echo "| $name | ${STATUS[$name]} | ${SECONDS_TAKEN[$name]} |"
done
worst=0
for rc in "${STATUS[@]}"; do [ "$rc" != 0 ] && worst=1; done
exit $worst
