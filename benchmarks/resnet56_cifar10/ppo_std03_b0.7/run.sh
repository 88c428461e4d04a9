#!/bin/bash
# Session 33: ppo at action std 0.3 beside greedy-lut at 0.7, every search at greedy-lut's evaluations, each search's
# 10 finalists budget-checked together, then their checked plans re-scored with 50 SGD steps (the best kept).
# Made in runs/s33/b07 (then copied here) with greedy-lut's search log (searches/greedy-lut_b0.7.jsonl) and the
# latency correction (corrections/b0.7.json, timed 2026-12-07T06:36) taken from ../rerank/, so greedy-lut's search
# replays from its log; the ppo searches are new.
export PATH=$PWD/.venv/bin:$PATH PRUNEGYM_CIFAR10=$(cd .. && pwd)/shared/data/cifar10
out=runs/s33/b07
mkdir -p $out/searches $out/corrections
cp -n benchmarks/resnet56_cifar10/rerank/searches/greedy-lut_b0.7.jsonl $out/searches/
cp -n benchmarks/resnet56_cifar10/rerank/corrections/b0.7.json $out/corrections/
prunegym benchmark --model resnet56 --checkpoint checkpoints/resnet56_cifar10.pt --data cifar10 --device host-cpu \
  --budgets 0.7 --methods ppo greedy-lut --match-greedy --finetune-steps 0 --finetune-epochs 2 --seeds 3 --threads 2 \
  --sensitivity --action-mapping scaled --agent-reward residual --action-std 0.3 --calibrate-latency --rerank 10 \
  --out $out
