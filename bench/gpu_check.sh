#!/usr/bin/env bash
# One command for a GPU lease: the device, the vendor library anchors (torch), every Numba
# suite, the JSON documents, the roofline plot, a markdown table and the PTX shape, into one
# folder of at most 8 files (device.json results.json results.md roofline.png ptx.md log.txt).
#
#   bench/gpu_check.sh [OUT] [--gemm MxNxK]     on a GPU host (about 3-5 minutes on an H200)
#   bench/gpu_check.sh [OUT] --simulate          under the Numba CUDA simulator (tiny sizes,
#                                                says SIMULATOR, holds no GPU figure)
#
# OUT defaults to bench/results/gpu-check-<UTC time>. PYTHON picks the interpreter (python3).
# Exit status: 0 all checked and timed; 1 a benchmark failed its check; 2 usage; 69 no GPU.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --simulate) export NUMBA_ENABLE_CUDASIM=1; args+=("$1") ;;
    --gemm) args+=("$1" "${2:?gpu_check.sh: --gemm needs MxNxK}"); shift ;;
    -*) echo "gpu_check.sh: unknown option $1 (expected --simulate or --gemm MxNxK)" >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "gpu_check.sh: one OUT folder only, got $out and $1" >&2; exit 2; }
       out=$1 ;;
  esac
  shift
done
out=${out:-$root/bench/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
# The suite runs from the checkout as tether_kernels (its installed name) without installing
# tether: a folder holding only a link of that name goes on the path, so nothing else of the
# checkout (its daemon/ and kernels/ folders) can shadow a package of the host's.
lib=$(mktemp -d)
trap 'rm -rf "$lib"' EXIT
ln -s "$root/kernels" "$lib/tether_kernels"
cd "$root"
PYTHONPATH="$lib${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m tether_kernels gpu-check \
  "$out" ${args[@]+"${args[@]}"} 2>&1 | tee "$out/log.txt"
