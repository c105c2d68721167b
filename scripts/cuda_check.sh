#!/usr/bin/env bash
# The GPU session's whole job, in about ten minutes on a machine with an NVIDIA GPU:
#   1. what the machine has (GPU, driver, nvcc, the Python packages the baselines need);
#   2. the cuda test tier: tests/test_cuda.py -m "cuda and not slow" (MiniLM from artifacts built
#      for cuda-sm90, for the detected GPU and for cuda-sm80 at seq 128, batch 1 and 32, within
#      1e-3; the attention kernel; the backend fast sample; a failing run-time check);
#   3. bench/gpu.py: MiniLM batch 1 and 32, seq 128 -- optc vs PyTorch eager, torch.compile and
#      ONNX Runtime's CUDA provider (each baseline that cannot run here says why).
# Logs go to $OUT (the device runner's output folder) or out/cuda_check.
#
#     bash scripts/cuda_check.sh                    # GPU tests and the benchmark
#     CUDA_CHECK_ALL=1 bash scripts/cuda_check.sh   # also test_cuda.py's compile-time tier (runs
#                                                   # without a GPU too; ~3 more minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
logs="${OUT:-out/cuda_check}"
mkdir -p "$logs"
status=0

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1 | tee "$logs/gpu.txt" \
  || { echo "no NVIDIA GPU here (nvidia-smi failed): nothing to check"; exit 2; }
python3 - <<'EOF' 2>&1 | tee "$logs/env.txt"
import importlib, tvm
from optc.codegen.gpu import toolchain
nvcc = toolchain.find_nvcc()
print("tvm", tvm.__version__, "| cuda device:", tvm.cuda(0).exist, getattr(tvm.cuda(0), "device_name", ""),
      "| nvcc:", nvcc, toolchain.nvcc_version(nvcc) if nvcc else "")
for name in ("torch", "onnxruntime", "triton"):
    try:
        m = importlib.import_module(name)
        extra = ""
        if name == "torch":
            extra = f"cuda available: {m.cuda.is_available()} (built for CUDA {m.version.cuda})"
        if name == "onnxruntime":
            extra = f"providers: {m.get_available_providers()}"
        print(name, m.__version__, extra)
    except Exception as e:  # noqa: BLE001
        print(name, "unavailable:", type(e).__name__, e)
EOF

echo "== cuda test tier"
markers="cuda and not slow"
[ -z "${CUDA_CHECK_ALL:-}" ] || markers=""  # every tier of test_cuda.py, the ~120-build sample included
timeout 480 python3 -m pytest -p no:xdist tests/test_cuda.py -m "$markers" -q -rs --durations=10 \
  2>&1 | tee "$logs/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== bench/gpu.py"
timeout 300 python3 bench/gpu.py --repeat 50 --out "$logs/bench" --json "$logs/bench.json" 2>&1 | tee "$logs/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
