#!/usr/bin/env bash
# Every GPU row of the reproduction report, on one NVIDIA H100 or H200, in about 10 minutes.
#
#   benchmarks/gpu.sh                      # on the GPU machine: writes benchmarks/results/*-gpu*.json
#   benchmarks/gpu.sh --data-dir DATA      # where cifar10/ is (default ../shared/datasets)
#   benchmarks/gpu.sh --dry-run            # the same steps, tiny, on the CPU, into a temporary folder
#
# Then `python -m benchmarks.report` renders the rows. Steps (and their share of the budget):
#   1. inference latency, batch 1 and 256, every path (eager, merged, merged+compile, threads,
#      CUDA graph) against the ViT twin prepared the same way      -> latency-gpu.json     (~3 min)
#   2. training throughput of each mode, fp32 vs bf16 and eager vs torch.compile, the paper
#      input (224 px), modes taking turns                          -> throughput-gpu-*.json (~2 min)
#   3. the paper recipe on CIFAR-10 at equal wall-clock for the ViT twin, fused and
#      progressive (120 s each)                                    -> gpu-recipe.json       (~5 min)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
DATA_DIR="../shared/datasets"
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --data-dir) DATA_DIR="$2"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (use --dry-run or --data-dir DIR)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$DRY_RUN" = 1 ]; then
  RESULTS="$(mktemp -d "${TMPDIR:-/tmp}/gpu-dry-run-XXXXXX")"
  echo "dry run on the CPU: tiny models, a few rounds; raw files go to $RESULTS"
  "$PYTHON" benchmarks/latency.py --device cpu --threads 1 --name latency-gpu --results-dir "$RESULTS" \
    --models paraformer_tiny_fmnist --batches 1 2 --rounds 2 --warmup 1 --paths eager merged threads
  "$PYTHON" benchmarks/throughput.py --device cpu --threads 1 --inputs fashion-mnist --dim 16 --heads 2 \
    --branches 2 --branch-depth 1 --batch-size 4 --batches 1 --rounds 2 --bf16 \
    --name throughput-gpu-bf16 --results-dir "$RESULTS"
  "$PYTHON" benchmarks/throughput.py --device cpu --threads 1 --inputs fashion-mnist --dim 16 --heads 2 \
    --branches 2 --branch-depth 1 --batch-size 4 --batches 1 --rounds 2 \
    --name throughput-gpu --results-dir "$RESULTS"
  "$PYTHON" benchmarks/gpu_recipe.py --dry-run --results-dir "$RESULTS"
  echo "dry run done: $(ls "$RESULTS" | tr '\n' ' ')"
  exit 0
fi

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device here; run on a GPU machine, or try benchmarks/gpu.sh --dry-run" >&2
  exit 1
fi
"$PYTHON" benchmarks/latency.py --device cuda --name latency-gpu \
  --models paraformer_small_cifar paraformer_paper --batches 1 256 --rounds 50 --rounds-large 20
"$PYTHON" benchmarks/throughput.py --device cuda --inputs paper --batch-size 128 --rounds 5 --bf16 \
  --name throughput-gpu-bf16
"$PYTHON" benchmarks/throughput.py --device cuda --inputs paper --batch-size 128 --rounds 5 --compile \
  --name throughput-gpu-compile
"$PYTHON" benchmarks/gpu_recipe.py --device cuda --seconds 120 --data-dir "$DATA_DIR"
echo "done: python -m benchmarks.report renders the GPU rows"
