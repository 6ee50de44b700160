#!/usr/bin/env bash
# scripts/gpu-check.sh [OUT_DIR]: the webgpu backend on a machine with a real GPU (NVIDIA, AMD or
# Intel; Dawn drives it through Vulkan, no CUDA version to match). It
#   1. reports the GPU adapter Dawn picks (vendor, architecture, description, limits),
#   2. runs the model tests on webgpu (packages/core/test/model-webgpu.test.ts),
#   3. runs `qrlhf bench --large` on webgpu and then on wasm (matmuls at the model's shapes and
#      2048², 4096²; the 5m and 25m LoRA steps; KV-cache sampling at batch 1 and 8),
# and keeps every output (and the benches' JSON) in OUT_DIR (default gpu-check-<time>).
#
# It needs no Node on the PATH: set NODE=/path/to/bin/node, or carry a Node folder beside the
# checkout (./node/bin/node or ../node/bin/node); the checkout's node_modules (`npm ci` done on a
# machine of the same OS and architecture) is all else it uses. Nothing is downloaded.
# Vulkan: the GPU driver's ICD (NVIDIA: /usr/share/vulkan/icd.d/nvidia_icd.json; in a container
# the NVIDIA runtime's `graphics` capability) and the loader libvulkan.so.1 (Debian: libvulkan1).
# Without a system loader, the one `. scripts/webgpu-env.sh` unpacked into its cache is used
# (only the loader: VK_DRIVER_FILES is NOT set here, it would hide the real GPU).
# Extra bench arguments: BENCH_ARGS (e.g. BENCH_ARGS=--quick). GPU_CHECK_SOFTWARE=1 keeps
# VK_DRIVER_FILES (after `. scripts/webgpu-env.sh`: a dry run of this script on lavapipe) and
# leaves out --large (a 4096² product takes minutes on a software GPU).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD

NODE=${NODE:-}
if [ -z "$NODE" ]; then
  for c in "$ROOT/node/bin/node" "$ROOT/../node/bin/node" "$(command -v node 2>/dev/null)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then NODE=$c; break; fi
  done
fi
[ -n "$NODE" ] && [ -x "$NODE" ] || { echo "gpu-check: no Node binary: set NODE=/path/to/bin/node or put one in ./node/bin" >&2; exit 1; }
[ -d "$ROOT/node_modules/webgpu" ] || { echo "gpu-check: node_modules/webgpu is missing: run npm ci (with optional dependencies) for this OS first" >&2; exit 1; }
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
export PATH="$(dirname "$NODE"):$PATH"

if ! { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null; } | grep -q 'libvulkan\.so\.1 '; then
  cache=${QRLHF_LAVAPIPE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qrlhf/lavapipe}
  loader=$(find "$cache/current/loader" -name libvulkan.so.1 2>/dev/null | head -n1)
  if [ -n "$loader" ]; then
    export LD_LIBRARY_PATH="$(dirname "$loader")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "gpu-check: no system libvulkan.so.1; using the loader from $cache"
  else
    echo "gpu-check: no libvulkan.so.1 (install Debian's libvulkan1, or source scripts/webgpu-env.sh once for a cached copy)" >&2
  fi
fi
LARGE=--large
if [ "${GPU_CHECK_SOFTWARE:-0}" = 1 ]; then LARGE=''; else unset VK_DRIVER_FILES VK_ICD_FILENAMES; fi

run() { # name, command...: runs it, shows and keeps its output, records its exit status
  local name=$1
  shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc, $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  return "$rc"
}

{
  echo "gpu-check $(date -u +%FT%TZ) on $(uname -srm), node $("$NODE" --version), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null | tr '\n' ' '
  echo
} | tee "$OUT/summary.txt"

run adapter "$NODE" --input-type=module -e '
import { create } from "webgpu";
const gpu = create([]);
const a = await gpu.requestAdapter({ powerPreference: "high-performance" });
if (!a) { console.log("no adapter: Dawn found no Vulkan driver"); process.exit(2); }
const i = a.info;
console.log(`adapter: vendor ${i.vendor}, architecture ${i.architecture}, device ${i.device}, description ${i.description}`);
console.log(`fallback/software: ${a.isFallbackAdapter === true || i.architecture === "software"}`);
const l = a.limits;
console.log(`limits: maxBufferSize ${l.maxBufferSize}, maxStorageBufferBindingSize ${l.maxStorageBufferBindingSize}, maxComputeWorkgroupStorageSize ${l.maxComputeWorkgroupStorageSize}, maxComputeInvocationsPerWorkgroup ${l.maxComputeInvocationsPerWorkgroup}`);
console.log(`features: ${[...a.features].sort().join(" ")}`);
' || { echo "gpu-check: no GPU adapter; stopping" >&2; exit 2; }

run tests "$NODE" "$ROOT/node_modules/ava/entrypoints/cli.mjs" --tap packages/core/test/model-webgpu.test.ts
cli=("$NODE" --conditions=source --import=tsx "$ROOT/packages/cli/src/bin.ts")
# shellcheck disable=SC2086
run bench-webgpu "${cli[@]}" bench --backend webgpu $LARGE --json "$OUT/bench-webgpu.json" ${BENCH_ARGS:-}
# shellcheck disable=SC2086
run bench-wasm "${cli[@]}" bench --backend wasm $LARGE --json "$OUT/bench-wasm.json" ${BENCH_ARGS:-}
echo "gpu-check: outputs in $OUT"
cat "$OUT/summary.txt"
