#!/usr/bin/env bash
# The one prepared device session: run on a machine with one CUDA GPU, from the repository root, with the
# machine's CUDA torch (nothing is installed; the package is put on PYTHONPATH; a missing dvclive is stubbed by
# gpu_check_train.py):
#
#     OUT=/some/folder bash benchmarks/gpu_session.sh        # results in $OUT (default gpu_results/)
#
# Time: the whole script, summary included, ends within SESSION_LIMIT_S (default 540 s): the steps share a budget
# of BUDGET_S seconds (default 500; at most SESSION_LIMIT_S - 25, the rest is for the kill grace and the summary).
# Each step runs under `timeout` with its own limit, cut to what is left of the budget; a step with less than
# MIN_STEP_S (default 20) left is skipped. Steps run in order of importance.
# Results: every step is its own process (a failed CUDA graph capture, or a crash, costs only that step) and its
# JSON is written to $OUT/<step>.json as soon as that step ends (stdout into a temporary file, renamed then);
# its stderr goes to $OUT/<step>.log and one line per step to $OUT/exits.txt. At the end one table of every
# result is printed (benchmarks/gpu_session_summary.py), also written to $OUT/summary.md.
# Other settings: PYTHON (default python3); ONLY=<regex> runs only the steps whose name matches;
# SMOKE=1 runs the bench_gpu steps with --smoke on the CPU (a check of this script, see tests/).
# To add a step: one `step NAME LIMIT_S COMMAND...` line below.
set -uo pipefail
out="${OUT:-gpu_results}"
PY="${PYTHON:-python3}"
session_limit="${SESSION_LIMIT_S:-540}"
budget="${BUDGET_S:-500}"
(( budget > session_limit - 25 )) && budget=$(( session_limit - 25 ))
min_step="${MIN_STEP_S:-20}"
only="${ONLY:-}"
smoke=()
[[ "${SMOKE:-0}" == 1 ]] && smoke=(--smoke)
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$SECONDS
: > "$out/exits.txt"
timeout -k 2 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
timeout -k 2 30 "$PY" -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)" \
    > "$out/versions.txt" 2>&1

step() {  # NAME LIMIT_S COMMAND...: run one step within what is left of the budget
    local name=$1 limit=$2; shift 2
    [[ -n "$only" && ! "$name" =~ $only ]] && return
    local left=$(( budget - (SECONDS - start) ))
    if (( left < min_step )); then
        echo "$name: skipped (budget: ${left} s left)" | tee -a "$out/exits.txt"
        return
    fi
    (( limit > left )) && limit=$left
    timeout -k 5 "$limit" "$@" > "$out/$name.json.tmp" 2> "$out/$name.log"
    local code=$?
    if [[ -s "$out/$name.json.tmp" ]]; then mv "$out/$name.json.tmp" "$out/$name.json"; else rm -f "$out/$name.json.tmp"; fi
    local why=""
    (( code == 124 || code == 137 )) && why=" (timeout after ${limit} s)"
    echo "$name: exit ${code}${why} at $((SECONDS - start)) s" | tee -a "$out/exits.txt"
}
bench() {  # NAME LIMIT_S bench_gpu.py ARGS...
    local name=$1 limit=$2; shift 2
    step "$name" "$limit" "$PY" benchmarks/bench_gpu.py "$@" "${smoke[@]}"
}

# 1. the headline: the step modes for the full model, fp32 (auto = CUDA graphs, verified, reporting what ran)
bench bench_A6_fp32_eager       45 --ablation A6 --step eager
bench bench_A6_fp32_sync_free   45 --ablation A6 --step sync_free
bench bench_A6_fp32_auto        60 --ablation A6 --step auto
# 2. the real train + evaluate stages on CUDA, fp32 and bf16, auto (graphs) against eager
step gpu_check_train           150 "$PY" benchmarks/gpu_check_train.py
# 3. bf16 autocast, same modes
bench bench_A6_bf16_eager       45 --ablation A6 --step eager --precision bf16
bench bench_A6_bf16_sync_free   45 --ablation A6 --step sync_free --precision bf16
bench bench_A6_bf16_auto        60 --ablation A6 --step auto --precision bf16
# 4. AdamW: fused against foreach; the whole step (capturable AdamW) in the graph
bench bench_A6_fp32_eager_fused 45 --ablation A6 --step eager --optimizer fused
bench bench_A6_fp32_auto_fused  60 --ablation A6 --step auto --optimizer fused
bench bench_A6_fp32_auto_step   60 --ablation A6 --step auto --scope step
bench bench_A6_fp32_auto_step_fused 60 --ablation A6 --step auto --scope step --optimizer fused
# 5. the Table 1 baselines against A6 (issue 14): step time and peak memory of each row's real step, eager and auto
baselines=(--device cuda --text-model deberta-v3-base-arch --modes eager,auto --steps 20)
[[ "${SMOKE:-0}" == 1 ]] && baselines=(--device cpu --text-model tiny --steps 2 --warmup 1 --block 1)
step bench_baselines           120 "$PY" benchmarks/bench_baselines.py "${baselines[@]}"
# 6. the CP+SL baseline row A0
bench bench_A0_fp32_eager       45 --ablation A0 --step eager
bench bench_A0_fp32_sync_free   45 --ablation A0 --step sync_free
bench bench_A0_fp32_auto        60 --ablation A0 --step auto
bench bench_A0_bf16_eager       45 --ablation A0 --step eager --precision bf16
bench bench_A0_bf16_sync_free   45 --ablation A0 --step sync_free --precision bf16
bench bench_A0_bf16_auto        60 --ablation A0 --step auto --precision bf16
# 7. K concurrent A6 jobs on the GPU, graphs (auto) and eager
for k in 1 4; do
    step "grid_${k}_auto"  90 "$PY" benchmarks/bench_grid_throughput.py --jobs "$k" --steps 100 --warmup 10
    step "grid_${k}_eager" 90 "$PY" benchmarks/bench_grid_throughput.py --jobs "$k" --steps 100 --warmup 10 \
        --set execution.step=eager
done

timeout -k 2 15 "$PY" benchmarks/gpu_session_summary.py "$out" | tee "$out/summary.md"
echo "gpu_session: done in $((SECONDS - start)) s (budget ${budget} s, limit ${session_limit} s)"
