#!/usr/bin/env bash
# The headline benchmark: resnet56 on CIFAR-10, host-CPU latency budgets 0.7 and 0.5, every method, 3 seeds.
# Resumable: run it again after an interruption and finished cells are kept. Needs checkpoints/resnet56_cifar10.pt
# and the shared CIFAR-10 copy. Usage: bash scripts/benchmark_cifar10.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/benchmark_resnet56}"
export PRUNEGYM_CIFAR10="${PRUNEGYM_CIFAR10:-$(cd .. && pwd)/shared/data/cifar10}"
.venv/bin/prunegym benchmark --model resnet56 --checkpoint checkpoints/resnet56_cifar10.pt --data cifar10 \
    --device host-cpu --budgets 0.7 0.5 --methods all --episodes 100 --finetune-epochs 2 --seeds 3 --threads 2 \
    --out "$out"
