#!/usr/bin/env bash
# GPU check of the fused spike-LoRA op, in one go and under 8 minutes on an H100/H200-class machine:
#   1. preflight: a GPU, a CUDA build of torch, the Python packages the reference needs;
#   2. build the CUDA extension (first-use build, ahead of time: python -m hybridtune.ops.cuda_ext build);
#   3. GPU tests: kernel vs reference (tests/ops/test_cuda_parity.py) and the nvcc compile check;
#   4. FSDP on 2 GPUs (only when nvidia-smi -L lists two or more; recorded as skipped otherwise):
#      benchmarks/fsdp_check.py, trainer.sharding=fsdp on 2 processes vs one unsharded process, 3 steps;
#   5. benchmark: benchmarks/spike_lora_op.py --quick (skipped when the parity tests fail: numbers of a wrong kernel
#      would mislead; FORCE_BENCH=1 runs it anyway).
# Everything lands in ${OUT:-benchmarks/results}: spike_lora_op.json, gpu_check.json (status and seconds per step),
# gpu_tests.xml, parity_stamp.json (when parity passed), fsdp_2gpu.json (with 2+ GPUs) and logs/<step>.log. Exit status: 0 when every step passed, 1 when one failed, 3 without a GPU.
# Usage: [OUT=dir] [PYTHON=python3] [DEADLINE_S=450] bash benchmarks/gpu_check.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/benchmarks/results}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python || true)}"
DEADLINE_S="${DEADLINE_S:-450}"  # whole script; leaves margin under 8 minutes
START=$SECONDS
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}"
export HYBRIDTUNE_OP_BACKEND=cuda  # asking for the kernel: any failure to provide it is an error, not a fallback
cd "$REPO"

declare -a STEPS=()
FAILED=0
LOGFILE=/dev/null  # becomes $OUT/logs/gpu_check.log once a GPU is confirmed (nothing is written without one)

log() { printf '[gpu_check %4ds] %s\n' "$((SECONDS - START))" "$*" | tee -a "$LOGFILE" >&2; }

remaining() { echo $((DEADLINE_S - (SECONDS - START))); }

# run_step NAME LIMIT_S CMD...: runs CMD under a timeout (never past the deadline), logs to $OUT/logs/NAME.log
run_step() {
  local name="$1" limit="$2"
  shift 2
  local left
  left="$(remaining)"
  if ((left < 20)); then
    log "$name: skipped, deadline reached"
    STEPS+=("{\"step\": \"$name\", \"status\": \"skipped_deadline\", \"seconds\": 0}")
    FAILED=1
    return 1
  fi
  ((limit > left)) && limit=$left
  log "$name: start (limit ${limit}s)"
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1 || rc=$?
  local dt=$((SECONDS - t0)) status=passed
  if ((rc == 124 || rc == 137)); then status=timeout; elif ((rc != 0)); then status=failed; fi
  STEPS+=("{\"step\": \"$name\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $dt}")
  log "$name: $status (rc=$rc, ${dt}s); last lines:"
  tail -n 15 "$OUT/logs/$name.log" | sed 's/^/    /' | tee -a "$LOGFILE" >&2
  if [[ $status != passed ]]; then
    FAILED=1
    return 1
  fi
  return 0
}

write_summary() {
  local joined
  joined="$(IFS=,; echo "${STEPS[*]:-}")"
  printf '{"check": "spike_lora gpu_check", "failed": %s, "elapsed_s": %d, "steps": [%s]}\n' \
    "$FAILED" "$((SECONDS - START))" "$joined" >"$OUT/gpu_check.json"
  log "summary written to $OUT/gpu_check.json"
}
if [[ -z "$PYTHON" ]]; then
  log "no python interpreter found (set PYTHON=...); nothing written"
  exit 3
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! GPUS="$(nvidia-smi -L 2>&1)"; then
  log "no NVIDIA GPU visible (nvidia-smi missing or failing): nothing to check here, nothing written"
  exit 3
fi
mkdir -p "$OUT/logs"
LOGFILE="$OUT/logs/gpu_check.log"
: >"$LOGFILE"
log "GPUs: $GPUS"
trap write_summary EXIT

run_step preflight 60 "$PYTHON" - <<'EOF' || exit 1
import importlib, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
assert torch.cuda.is_available(), "torch sees no CUDA device (CPU-only build or driver problem)"
print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
missing = [m for m in ("ninja", "pytest", "snntorch") if importlib.util.find_spec(m) is None]
assert not missing, f"missing Python packages: {missing} (pip install them; the reference backward needs snntorch)"
import hybridtune.ops  # noqa: F401
EOF

run_step build 240 "$PYTHON" -m hybridtune.ops.cuda_ext build --verbose || exit 1

TESTS_OK=1
# --noconftest: the repository conftest imports transformers; these tests need only torch, snntorch and pytest
run_step gpu_tests 200 "$PYTHON" -m pytest -q -rs -p no:cacheprovider --noconftest \
  --junitxml="$OUT/gpu_tests.xml" tests/ops/test_cuda_parity.py tests/ops/test_cuda_compile.py || TESTS_OK=0

# parity passed: stamp this device class so that ops.backend=auto may choose the kernel here (the copy in $OUT is
# what a developer merges into hybridtune/ops/verified_devices.json with: python -m hybridtune.ops.parity stamp ...)
if ((TESTS_OK == 1)); then
  run_step parity_stamp 30 "$PYTHON" -m hybridtune.ops.parity stamp --junit "$OUT/gpu_tests.xml" \
    --copy "$OUT/parity_stamp.json" || true
fi

# sharded training needs two devices; it uses the PyTorch reference op, so it does not depend on the kernel above
NGPUS="$(grep -c '^GPU ' <<<"$GPUS" || true)"
if ((NGPUS >= 2)); then
  run_step fsdp_2gpu 150 "$PYTHON" benchmarks/fsdp_check.py --out "$OUT/fsdp_2gpu.json" || true
else
  log "fsdp_2gpu: skipped, $NGPUS GPU(s) listed by nvidia-smi -L (2 needed)"
  STEPS+=("{\"step\": \"fsdp_2gpu\", \"status\": \"skipped_fewer_than_2_gpus\", \"gpus\": $NGPUS, \"seconds\": 0}")
fi

if ((TESTS_OK == 1)) || [[ "${FORCE_BENCH:-0}" == 1 ]]; then
  BUDGET=$(($(remaining) - 90))
  ((BUDGET < 30)) && BUDGET=30
  run_step benchmark 300 "$PYTHON" benchmarks/spike_lora_op.py --quick --budget-s "$BUDGET" \
    --out "$OUT/spike_lora_op.json" || true
else
  log "benchmark: skipped because the parity tests failed (FORCE_BENCH=1 runs it anyway)"
  STEPS+=("{\"step\": \"benchmark\", \"status\": \"skipped_tests_failed\", \"seconds\": 0}")
fi

log "done in $((SECONDS - START))s; failed=$FAILED"
exit "$FAILED"
