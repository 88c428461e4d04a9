#!/bin/bash
# Session 35: ppo (action std 0.3) beside greedy-lut at 0.5, every plan aimed at 0.98 of the budget (--search-aim,
# where the measured budget check aims), the latency correction timed at the start of this run (nothing copied from
# an earlier one), every search at greedy-lut's evaluations; each search's 10 finalists budget-checked together,
# their checked plans re-scored with 50 SGD steps (the best kept), then fine-tuned for 2 epochs. Resumable.
export PATH=$PWD/.venv/bin:$PATH PRUNEGYM_CIFAR10=$(cd .. && pwd)/shared/data/cifar10
out=runs/s35/b05
prunegym benchmark --model resnet56 --checkpoint checkpoints/resnet56_cifar10.pt --data cifar10 --device host-cpu \
  --budgets 0.5 --methods ppo greedy-lut --match-greedy --finetune-steps 0 --finetune-epochs 2 --seeds 3 --threads 2 \
  --sensitivity --action-mapping scaled --agent-reward residual --action-std 0.3 --calibrate-latency --rerank 10 \
  --search-aim 0.98 --out $out
