#!/usr/bin/env bash
# One device call: GPU tests, memcheck, (tuning,) benchmarks; logs and a short table land in $OUT.
# Usage from the repo root on a CUDA machine:  bash scripts/gpu.sh [PHASES] [SEQLENS] [BASELINES]
#   PHASES    comma list of tests,realtests,memcheck,fault,tune,tune64,bench,fp8,fp8v,atomic,offload,volta,ampere
#             (default tests,memcheck,bench)
#   SEQLENS   for bench (default 1024,4096,16384)
#   BASELINES for bench (default torch.sdpa.flash,torch.sdpa.cudnn,torch.sdpa.efficient,torch.flex)
set -uo pipefail
PHASES=${1:-tests,memcheck,bench}
SEQ=${2:-1024,4096,16384}
BASE=${3:-torch.sdpa.flash,torch.sdpa.cudnn,torch.sdpa.efficient,torch.flex}
OUT=${OUT:-/tmp/portattn-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
has() { [[ ",$PHASES," == *",$1,"* ]]; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
  | tee -a "$OUT/device.txt"

if has tests; then
  echo "== GPU tests"
  timeout 330 $PY -m pytest -q -m "gpu or hopper" tests/test_gpu.py -p no:cacheprovider --durations=5 >"$OUT/gpu_tests.log" 2>&1 || status=1
  grep -E "^(FAILED|ERROR)" "$OUT/gpu_tests.log" | head -20
  tail -2 "$OUT/gpu_tests.log"
fi
if has realtests; then
  echo "== GPU tests at real sizes"
  timeout 150 $PY -m pytest -q tests/test_gpu.py -k "real_sizes or deterministic or dispatch or compile" -p no:cacheprovider \
    >"$OUT/gpu_real.log" 2>&1 || status=1
  grep -E "^(FAILED|ERROR)" "$OUT/gpu_real.log" | head -20
  tail -1 "$OUT/gpu_real.log"
fi
if has memcheck && command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck (small shapes)"
  timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 $PY benchmarks/sanitize_shapes.py >"$OUT/memcheck.log" 2>&1 \
    || status=1
  grep -E "ERROR SUMMARY|fail" "$OUT/memcheck.log" | head -5
fi
if has fault; then
  echo "== pointer-path fault, one kernel at a time (see benchmarks/pointer_fault.py)"
  for k in fwd dq dkdv; do
    timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $PY benchmarks/pointer_fault.py $k \
      >"$OUT/fault_$k.log" 2>&1; echo "$k: exit $? $(grep -m1 -E 'Invalid|ok$' "$OUT/fault_$k.log")"
  done
fi
if has tune; then
  echo "== tuning"
  timeout 200 $PY benchmarks/tune_triton_hopper.py 2>&1 | tee "$OUT/tune.log" | grep best
fi
if has tune64; then
  echo "== the Gluon forward at d=64: registers and stack per config, then shipped against serial candidates"
  timeout 120 $PY benchmarks/gluon_sass.py --resources 2>/dev/null | tee "$OUT/gluon_resources.md"
  PORTATTN_GPU_TEST_BACKENDS=triton_hopper timeout 200 $PY -m pytest -q -m "gpu or hopper" tests/test_gpu.py \
    -k serial -p no:cacheprovider >"$OUT/serial_tests.log" 2>&1 || status=1
  tail -1 "$OUT/serial_tests.log"
  # shipped 2 and 3 consumers; serial 4 consumers (64-key blocks, 4 and 6 stages) and 3 consumers
  cfgs="64,128,3,240,0,1,2;64,128,3,160,0,1,3;64,64,4,120,0,1,4,0,0;64,64,6,120,0,1,4,0,0;64,128,3,160,0,1,3,0,0"
  for s in 1024 4096 16384; do
    timeout 200 $PY benchmarks/tune_triton_hopper.py --kernels fwdws --head-dims 64 --causal 0,1 --seqlen $s \
      --ws-configs "$cfgs" --rounds 2 --json "$OUT/tune64.jsonl" 2>&1 | grep -A4 best
  done
  timeout 100 $PY -m portattn bench --seqlens 1024 --head-dims 64 --mode fwd --no-progress --backends triton_hopper \
    --baselines torch.sdpa.flash --json "$OUT/d64_1k_anchor.json" 2>&1 | tail -4
fi
if has fp8v; then
  echo "== precision='fp8' with V^T's keys in P's register order (permute_v): FP8 tests, then plain against permuted"
  PORTATTN_GPU_TEST_BACKENDS=triton_hopper timeout 200 $PY -m pytest -q -m "gpu or hopper" tests/test_gpu.py \
    -k fp8 -p no:cacheprovider >"$OUT/fp8v_tests.log" 2>&1 || status=1
  grep -E "^(FAILED|ERROR)" "$OUT/fp8v_tests.log" | head -20
  tail -1 "$OUT/fp8v_tests.log"
  for d in 128 256; do
    bn=$([ $d = 256 ] && echo 64 || echo 128)
    for s in 1024 4096 16384; do
      timeout 150 $PY benchmarks/tune_triton_hopper.py --kernels fwdws8 --head-dims $d --causal 0,1 --seqlen $s \
        --ws-configs "64,$bn,3,240,0,1,2;64,$bn,3,240,0,1,2,0,1,1" --rounds 2 --json "$OUT/tune_fp8v.jsonl" 2>&1 \
        | grep -A3 best
    done
  done
fi
if has bench; then
  echo "== benchmarks"
  timeout 420 $PY -m portattn bench --seqlens "$SEQ" --head-dims 64,128 --mode both --no-progress \
    --backends triton_hopper,cuda_ampere --baselines "$BASE" --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1 || status=1
  $PY benchmarks/ratios.py "$OUT/bench.json" | tee "$OUT/table.md"
fi
if has fp8; then
  echo "== precision='fp8': where the time goes, accuracy, speed against bf16 and the anchors"
  for s in 16384 4096; do timeout 60 $PY benchmarks/fp8_profile.py --seqlen $s 2>&1 | tee -a "$OUT/fp8_profile.log"; done
  for d in 64 128 256; do
    timeout 90 $PY benchmarks/fp8_accuracy.py --seqlen 1024 --head-dim $d 2>&1 | tee -a "$OUT/fp8_accuracy.md"
  done
  timeout 300 $PY -m portattn bench --seqlens "$SEQ" --head-dims 128,256 --mode fwd --no-progress \
    --backends triton_hopper,triton_hopper:fp8 --baselines "$BASE" --json "$OUT/fp8_bench.json" >"$OUT/fp8_bench.log" 2>&1 \
    || status=1
  $PY benchmarks/ratios.py "$OUT/fp8_bench.json" | tee "$OUT/fp8_table.md"
fi
if has atomic; then
  echo "== PORTATTN_TRITON_DQ=atomic: determinism-free backward against the default, fwd+bwd"
  for dq in separate atomic; do
    PORTATTN_TRITON_DQ=$dq timeout 200 $PY -m portattn bench --seqlens "$SEQ" --head-dims 64,128 --mode fwd+bwd \
      --no-progress --backends triton_hopper --baselines torch.sdpa.flash,torch.flex --json "$OUT/dq_$dq.json" \
      >"$OUT/dq_$dq.log" 2>&1 || status=1
    $PY benchmarks/ratios.py "$OUT/dq_$dq.json" | tee "$OUT/dq_$dq.md"
  done
  PORTATTN_TRITON_DQ=atomic timeout 150 $PY -m pytest -q tests/test_gpu.py -k "real_sizes" -p no:cacheprovider \
    >"$OUT/dq_atomic_tests.log" 2>&1 || status=1
  tail -1 "$OUT/dq_atomic_tests.log"
fi
if has offload; then
  echo "== KV offload: the GPU tests, then 1M keys from host memory against the same keys on the device"
  timeout 200 $PY -m pytest -q tests/test_gpu.py -k "kv_offload" -p no:cacheprovider >"$OUT/offload_tests.log" 2>&1 \
    || status=1
  grep -E "^(FAILED|ERROR)" "$OUT/offload_tests.log" | head -20
  tail -1 "$OUT/offload_tests.log"
  timeout 300 $PY benchmarks/kv_offload.py --json "$OUT/kv_offload.json" 2>&1 | tee "$OUT/kv_offload.md" || status=1
fi
if has volta; then
  echo "== cuda_volta (sm70 instructions, run here as the stand-in): the probed WMMA order, fp16 tests with the"
  echo "   register softmax (where the order allows it) and the shared-memory one, then fwd against mem-efficient"
  timeout 60 $PY benchmarks/wmma_layout.py --json "$OUT/wmma_layout.json" >"$OUT/wmma_layout.txt" 2>&1 || status=1
  tail -2 "$OUT/wmma_layout.txt"
  # most telling first (an outer timeout keeps what finished): the shipped path's tests, the configs, then the rest
  volta_tests() {
    PORTATTN_CUDA_VOLTA_SOFTMAX=$1 PORTATTN_GPU_TEST_BACKENDS=cuda_volta timeout 200 $PY -m pytest -q tests/test_gpu.py \
      -k "cuda_volta or battery" -p no:cacheprovider >"$OUT/volta_tests_$1.log" 2>&1 || status=1
    grep -E "^(FAILED|ERROR)" "$OUT/volta_tests_$1.log" | head -20
    echo "softmax $1: $(tail -1 "$OUT/volta_tests_$1.log")"
  }
  volta_tests auto
  echo "-- each FWD_CONFIG with each softmax path, against mem-efficient"
  timeout 240 $PY benchmarks/tune_cuda_volta.py --seqlens "$SEQ" --configs "${VOLTA_CONFIGS:-4,1;4,0;8,1;8,0}" --json "$OUT/volta_tune.jsonl" 2>&1 \
    | tee "$OUT/volta_tune.txt" | grep -E "^d=|best|Error"
  volta_tests shared
  timeout 200 $PY -m portattn bench --dtype float16 --seqlens "$SEQ" --head-dims 64,128 --mode both --no-progress \
    --backends cuda_volta --baselines torch.sdpa.efficient,torch.sdpa.flash --json "$OUT/volta_bench.json" \
    >"$OUT/volta_bench.log" 2>&1 || status=1
  $PY benchmarks/ratios.py "$OUT/volta_bench.json" | tee "$OUT/volta_table.md"
fi
if has ampere; then
  echo "== cuda_ampere: GPU tests (one-kernel backward, then the two-kernel one), sanitizers, fwd and fwd+bwd against FA2"
  for dq in atomic separate; do
    PORTATTN_CUDA_AMPERE_DQ=$dq PORTATTN_GPU_TEST_BACKENDS=cuda_ampere timeout 240 $PY -m pytest -q tests/test_gpu.py \
      -k "battery or cuda_ampere" -p no:cacheprovider >"$OUT/ampere_tests_$dq.log" 2>&1 || status=1
    grep -E "^(FAILED|ERROR)" "$OUT/ampere_tests_$dq.log" | head -20
    echo "dq=$dq: $(tail -1 "$OUT/ampere_tests_$dq.log")"
  done
  for tool in memcheck racecheck; do
    timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 $PY benchmarks/sanitize_cupy.py cuda_ampere \
      >"$OUT/ampere_$tool.log" 2>&1 || status=1
    echo "$tool: $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|failed$" "$OUT/ampere_$tool.log" | tr '\n' ' ')"
  done
  timeout 300 $PY -m portattn bench --seqlens "$SEQ" --head-dims 64,128 --mode both --no-progress \
    --backends cuda_ampere --baselines torch.sdpa.flash --json "$OUT/ampere_bench.json" >"$OUT/ampere_bench.log" 2>&1 \
    || status=1
  $PY benchmarks/ratios.py "$OUT/ampere_bench.json" | tee "$OUT/ampere_table.md"
fi
exit $status
