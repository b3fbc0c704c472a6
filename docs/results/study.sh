#!/usr/bin/env bash
# The testbed study behind docs/results.md: about 3 hours of two runs at a time on 2 shared CPU cores.
# Re-running skips finished runs and resumes interrupted ones. Usage: bash docs/results/study.sh [OUT]
set -euo pipefail
OUT=${1:-runs/study}
PAR=(--workers 2 --threads 1 --no-report)
# 1. the main methods and the supervised control (sft-more): 3 paired seeds
popo compare --methods popo,grpo,raft,sft-more --seeds 3 --out "$OUT" "${PAR[@]}"
# 2. the ablations, seeds 0 and 1
popo compare --methods popo-nosim,popo-noent,popo-frozen,popo-uniform,grpo-kl --seeds 2 --out "$OUT" "${PAR[@]}"
# 3. POPO sensitivity: a 2 x 2 grid of alpha and tau around the default (0.1, 0.995), seed 0
popo sweep --methods popo --grid algo.alpha=0.05,0.3 --grid algo.tau=0.99,0.999 --seeds 1 --out "$OUT" "${PAR[@]}"
# 4. the ablations' third seed
popo compare --methods popo-nosim,popo-noent,popo-frozen,popo-uniform,grpo-kl --seeds 3 --out "$OUT" "${PAR[@]}"
# 5. learning-rate robustness: 4x the default learning rate, seed 0
popo sweep --methods popo,grpo,raft --grid optim.lr=2e-4 --seeds 1 --out "$OUT" "${PAR[@]}"
popo report "$OUT" --baseline popo,grpo
