#!/usr/bin/env bash
# One prepared device session for issue 9 (items 3 and 4): run on a machine with one CUDA GPU, from the repo
# root, with the lent image's CUDA torch (nothing is installed here; the package is put on PYTHONPATH).
# Writes every JSON result to ${OUT:-gpu_results}/. About 12 minutes on an H100/H200:
#   gpu_check_train  ~1 min   the real train/evaluate stages on CUDA, graphs (auto) vs eager
#   bench_gpu        ~3 min   eager vs sync_free vs cuda_graph, A0 and A6, fp32 (steps/s, peak memory)
#   bench_grid       ~8 min   K = 1, 2, 4, 8 concurrent A6 jobs per GPU, with (auto) and without (eager) the new step
set -uo pipefail
out="${OUT:-gpu_results}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
python -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)" \
    > "$out/versions.txt" 2>&1
run() {  # name, timeout seconds, command...
    local name=$1 limit=$2; shift 2
    timeout -k 10 "$limit" "$@" > "$out/$name.json" 2> "$out/$name.log"
    echo "$name: exit $?" | tee -a "$out/exits.txt"
}
run gpu_check_train 150 python benchmarks/gpu_check_train.py
run bench_gpu 240 python benchmarks/bench_gpu.py --steps 50
run grid_auto 240 python benchmarks/bench_grid_throughput.py --steps 150 --warmup 10
run grid_eager 240 python benchmarks/bench_grid_throughput.py --steps 150 --warmup 10 --set train.step=eager
