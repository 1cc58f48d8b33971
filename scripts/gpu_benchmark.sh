#!/usr/bin/env bash
# One-GPU benchmark of issue 15 (item 8). PREPARED BUT NOT YET RUN: no GPU was lent to the
# session that wrote it. On one H100/H200 it measures, each in one process:
#   1. switch_base_8 and its dense twin (switch_base_dense) at 32 x 512/128 and 8 x 2048/512,
#      ours (AdamW, bf16, default dispatch/remat) vs Hugging Face transformers (PyTorch,
#      bf16 autocast, AdamW) on the same device, printing ours / HF;
#   2. the MoE dispatch paths (einsum, gather, dropless) in the switch_base_8 train step;
#   3. the attention implementations (xla einsums, jax.nn.dot_product_attention, cuDNN) at
#      512 and 2048 input tokens (dropout 0 for all three: the fused paths have no attention
#      dropout).
# Every table is appended to benchmarks/RESULTS.md with the date, device and command.
# Usage (repository root, GPU JAX + torch installed): bash scripts/gpu_benchmark.sh
# Budget: about 10 minutes on an H100 (compiles dominate); STEPS=5 makes it shorter.
set -euo pipefail
STEPS=${STEPS:-20}
OUT=${OUT:-/tmp/flan_moe_gpu_benchmark}
mkdir -p "$OUT"
DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
DATE=$(date -u +%Y-%m-%d)
BENCH="python scripts/benchmark_train_step.py --steps $STEPS --warmup 3 --optimizer adamw"

run() {  # run NAME ARGS...: one benchmark, its output kept, its table appended to RESULTS
  local name=$1; shift
  echo "== $name: $BENCH $*"
  $BENCH "$@" | tee "$OUT/$name.txt"
  {
    echo
    echo "### $name ($DATE, $DEVICE)"
    echo
    echo "Command: \`$BENCH $*\`"
    echo
    grep '^|' "$OUT/$name.txt"
  } >> benchmarks/RESULTS.md
}

echo -e "\n## GPU run of scripts/gpu_benchmark.sh ($DATE, $DEVICE)" >> benchmarks/RESULTS.md
for setting in 32x512x128 8x2048x512; do
  run "vs_hf_$setting" --model switch_base_8 --model switch_base_dense --setting "$setting" --vs-hf
done
for dispatch in einsum gather dropless; do
  run "dispatch_$dispatch" --model switch_base_8 --setting 32x512x128 --dispatch "$dispatch"
done
for attention in xla dot_product cudnn; do
  run "attention_$attention" --model switch_base_dense --setting 32x512x128 \
    --setting 8x2048x512 --attention "$attention" --dropout 0
done
echo "done: tables appended to benchmarks/RESULTS.md, raw output in $OUT"
