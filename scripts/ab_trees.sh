#!/usr/bin/env bash
# A/B benchmarks of several source trees in one GPU session: ratios are compared only
# within one run (PERF_NOTES), so every tree runs in the same call, one process per tree
# and round, rounds interleaved.
#
#   bash scripts/ab_trees.sh stage REF...       # here, with git: export each commit into
#                                               # .gpu-trees/NAME (NAME: REF with / as _)
#                                               # and compile its kernels into the shared
#                                               # cubin cache .gpu-trees/cache (skipped
#                                               # with NO_CUBINS=1); carry .gpu-trees
#   bash scripts/ab_trees.sh run MODELS SWEEP ROUNDS TREE...
#                                               # on the GPU machine: scripts/bench.py
#                                               # (static clip, 720×1280, delta fp16 graph
#                                               # against dense fp16 graph) per TREE and round
#
# TREE is `.` (this working tree) or a staged NAME, optionally with one environment
# setting, NAME:VAR=value (e.g. `main .:DELTACONVERT_CUDA_GATHERED=0 .`). MODELS and SWEEP
# are bench.py's --models and --sweep. `run` installs .gpu-wheels into /tmp/site where
# PyCUDA is missing (as gpu_check.sh does), reads clips and weights from .gpu-data, and
# writes each process's bench.json/bench.md under $OUT (default /tmp/ab_trees)/TAG_rROUND
# and its whole output to TAG_rROUND.log; it prints bench.py's per-runner lines, headed by
# tree and round, and the end of the log of a process that failed (then exits 1).
set -euo pipefail
if [ $# -eq 0 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    echo "usage: ab_trees.sh stage REF... | run MODELS SWEEP ROUNDS TREE..."
    sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "$0"
    exit 0
fi
root=$(cd "$(dirname "$0")/.." && pwd)
trees=${AB_TREES:-$root/.gpu-trees}
command=$1
shift
case $command in
stage)
    mkdir -p "$trees"
    for ref in "$@"; do
        name=${ref//\//_}
        rm -rf "$trees/$name.tmp"
        mkdir -p "$trees/$name.tmp"
        git -C "$root" archive "$ref" | tar -x -C "$trees/$name.tmp"
        rm -rf "${trees:?}/$name"
        mv "$trees/$name.tmp" "$trees/$name"
        echo "$ref → $trees/$name ($(git -C "$root" rev-parse --short "$ref"))"
        if [ "${NO_CUBINS:-0}" != 1 ]; then
            (cd "$trees/$name" && DELTACONVERT_CACHE="$trees/cache" PYTHONPATH="$PWD" \
                "${PYTHON:-python3}" scripts/precompile_cubins.py)
        fi
    done
    ;;
run)
    [ $# -ge 4 ] || { echo "usage: ab_trees.sh run MODELS SWEEP ROUNDS TREE..." >&2; exit 2; }
    models=$1 sweep=$2 rounds=$3
    shift 3
    out=${OUT:-/tmp/ab_trees}
    tree_dir() {  # the folder of TREE (`.` or a staged name, setting stripped)
        local name=${1%%:*}
        if [ "$name" = . ]; then echo "$root"; else echo "$trees/$name"; fi
    }
    for tree in "$@"; do
        [ -f "$(tree_dir "$tree")/scripts/bench.py" ] || {
            echo "no tree $(tree_dir "$tree"): stage it first (ab_trees.sh stage REF)" >&2; exit 2; }
    done
    mkdir -p "$out"
    if ! python3 -c 'import pycuda' 2>/dev/null && compgen -G "$root/.gpu-wheels/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --target /tmp/site "$root"/.gpu-wheels/*.whl
    fi
    export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1 DELTACONVERT_CACHE=$trees/cache
    for round in $(seq 1 "$rounds"); do
        for tree in "$@"; do
            setting="" dir=$(tree_dir "$tree")
            [[ $tree == *:* ]] && setting=${tree#*:}
            tag=$(echo "$tree" | tr './:=' '____')
            log=$out/${tag}_r$round.log
            echo "##### tree $tree, round $round"
            rc=0
            (cd "$dir" && env ${setting:+"$setting"} PYTHONPATH="/tmp/site:$dir" python3 scripts/bench.py \
                --clips static --resolutions 720x1280 --delta-precisions fp16 --delta-modes graph \
                --no-compile --baselines fp16-graph --models "$models" --sweep "$sweep" \
                --data-dir "$root/.gpu-data" --configs-dir configs --no-plots \
                --out "$out/${tag}_r$round" > "$log" 2>&1) || rc=$?
            grep '^\[bench\]' "$log" || true
            if [ "$rc" != 0 ]; then
                echo "bench.py failed (exit status $rc) for tree $tree; the end of $log:"
                tail -n 20 "$log"
                failed=1
            fi
        done
    done
    exit "${failed:-0}"
    ;;
*)
    echo "unknown command $command: stage or run (--help)" >&2
    exit 2
    ;;
esac
