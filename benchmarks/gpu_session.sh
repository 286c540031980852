#!/usr/bin/env bash
# One prepared device session for issue 9 (items 3 and 4): run on a machine with one CUDA GPU, from the repo
# root, with the machine's CUDA torch (nothing is installed here; the package is put on PYTHONPATH).
# Every result is its own JSON file in ${OUT:-gpu_results}/, written as soon as that step ends, so a session cut
# short keeps what it finished. Steps run in order of importance and are skipped once ${BUDGET_S:-600} seconds
# have passed (about 10 minutes on an H100/H200 for all of them):
#   gpu_check_train   the real train/evaluate stages on CUDA, fp32 and bf16, execution.step auto (graphs) vs eager
#   bench_gpu         eager vs sync_free vs cuda_graph, A0 and A6, fp32: steps/s, speed-up, peak memory
#   grid_K_<mode>     K concurrent A6 jobs on the GPU (K = 1, 4, 8, 2), auto (graphs) and eager
set -uo pipefail
out="${OUT:-gpu_results}"
budget="${BUDGET_S:-600}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
python -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)" \
    > "$out/versions.txt" 2>&1
run() {  # name, timeout seconds, command...
    local name=$1 limit=$2; shift 2
    if (( SECONDS - start + limit / 2 > budget )); then
        echo "$name: skipped (budget)" | tee -a "$out/exits.txt"
        return
    fi
    timeout -k 10 "$limit" "$@" > "$out/$name.json" 2> "$out/$name.log"
    echo "$name: exit $? after $((SECONDS - start)) s" | tee -a "$out/exits.txt"
}
run gpu_check_train 150 python benchmarks/gpu_check_train.py
run bench_gpu 240 python benchmarks/bench_gpu.py --steps 50
for k in 1 4 8 2; do
    run "grid_${k}_auto" 120 python benchmarks/bench_grid_throughput.py --jobs "$k" --steps 150 --warmup 10
    run "grid_${k}_eager" 120 python benchmarks/bench_grid_throughput.py --jobs "$k" --steps 150 --warmup 10 \
        --set execution.step=eager
done
