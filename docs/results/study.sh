#!/usr/bin/env bash
# The testbed study behind docs/results.md (about 3 hours on 2 shared CPU cores). Re-running skips
# finished runs and resumes interrupted ones. Two runs at a time, one torch thread each.
# Usage: bash docs/results/study.sh [OUT]
set -euo pipefail
OUT=${1:-runs/study}
# 1. methods, ablations and the supervised control: 3 paired seeds each
popo compare --methods popo,grpo,raft,grpo-kl,popo-nosim,popo-noent,popo-frozen,popo-uniform,sft-more \
  --seeds 3 --out "$OUT" --workers 2 --threads 1 --no-report
# 2. POPO sensitivity to alpha and tau (2 x 2 grid around the default 0.1 / 0.995), one seed
popo sweep --methods popo --grid algo.alpha=0.05,0.3 --grid algo.tau=0.99,0.999 --seeds 1 --out "$OUT" \
  --workers 2 --threads 1 --no-report
# 3. learning-rate robustness: 4x the default learning rate, one seed
popo sweep --methods popo,grpo --grid optim.lr=2e-4 --seeds 1 --out "$OUT" --workers 2 --threads 1 --no-report
popo report "$OUT" --baseline popo,grpo
