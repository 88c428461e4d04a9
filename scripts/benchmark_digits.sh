#!/usr/bin/env bash
# The digits benchmark: small_cnn from `prunegym demo` on scikit-learn's digits, host-CPU latency budgets 0.6 and 0.5,
# every method, 3 seeds, with the demo's search and fine-tuning settings (60 episodes, 3 epochs), every search scoring
# plans by BN recalibration alone like the CIFAR-10 benchmark (--finetune-steps 0; see benchmark_cifar10.sh). Resumable: run it
# again after an interruption and finished cells are kept. Needs only the installed packages.
# At batch 1 this tiny model's latency is mostly per-call overhead: every group at 90% sparsity (the search's limit)
# still takes about 0.48 of dense here, so at 0.5 every method is squeezed to nearly the same thinnest plan, and 0.6
# is where methods can differ.
# Usage: bash scripts/benchmark_digits.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/small_cnn_digits}"
.venv/bin/prunegym benchmark --model small_cnn --data digits --device host-cpu --budgets 0.6 0.5 --methods all \
    --episodes 60 --finetune-steps 0 --finetune-epochs 3 --seeds 3 --threads 1 --centre-on-uniform --action-std 0.4 --out "$out"
