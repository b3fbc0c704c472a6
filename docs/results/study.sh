#!/usr/bin/env bash
# The testbed study behind docs/results.md: about 1.5 to 3 hours (depending on the load) of two runs at a time on 2 shared CPU cores.
# Re-running skips finished runs and resumes interrupted ones. Usage: bash docs/results/study.sh [OUT]
# Steps are ordered by priority so that a study cut short still has complete, paired seeds.
set -euo pipefail
# the study defaults this script was written against (popo compare/sweep without a CONFIG used them until
# 2026-12-07; they now follow `popo demo`): every run keeps the settings it had
BASE=docs/results/study_defaults_v1.yaml
OUT=${1:-runs/study}
PAR=(--workers 2 --threads 1 --no-report)
ABLATIONS=popo-nosim,popo-noent,popo-frozen,popo-uniform,grpo-kl
# 1. the main methods and the supervised control (sft-more): 3 paired seeds
popo compare "$BASE" --methods popo,grpo,raft,sft-more --seeds 3 --out "$OUT" "${PAR[@]}"
# 2. the ablations, seeds 0 and 1
popo compare "$BASE" --methods "$ABLATIONS" --seeds 2 --out "$OUT" "${PAR[@]}"
# 3. POPO sensitivity: a 2 x 2 grid of alpha and tau around the default (0.1, 0.995), seed 0
popo sweep "$BASE" --methods popo --grid algo.alpha=0.05,0.3 --grid algo.tau=0.99,0.999 --seeds 1 --out "$OUT" "${PAR[@]}"
# 4. the ablations' third seed
popo compare "$BASE" --methods "$ABLATIONS" --seeds 3 --out "$OUT" "${PAR[@]}"
# 5. learning-rate robustness: 4x the default learning rate, seed 0
popo sweep "$BASE" --methods popo,grpo,raft --grid optim.lr=2e-4 --seeds 1 --out "$OUT" "${PAR[@]}"
# 6. the main methods to 5 seeds
popo compare "$BASE" --methods popo,grpo,raft,sft-more --seeds 5 --out "$OUT" "${PAR[@]}"
# 7. learning-rate robustness: 0.4x the default learning rate, seed 0
popo sweep "$BASE" --methods popo,grpo,raft --grid optim.lr=2e-5 --seeds 1 --out "$OUT" "${PAR[@]}"
# 8. a second seed for the alpha/tau grid and both learning rates
popo sweep "$BASE" --methods popo --grid algo.alpha=0.05,0.3 --grid algo.tau=0.99,0.999 --seeds 2 --out "$OUT" "${PAR[@]}"
popo sweep "$BASE" --methods popo,grpo,raft --grid optim.lr=2e-4 --seeds 2 --out "$OUT" "${PAR[@]}"
popo sweep "$BASE" --methods popo,grpo,raft --grid optim.lr=2e-5 --seeds 2 --out "$OUT" "${PAR[@]}"
# 9. the ablations to 5 seeds
popo compare "$BASE" --methods "$ABLATIONS" --seeds 5 --out "$OUT" "${PAR[@]}"
# 10. where the learning rate breaks: 2x the default, seeds 0 and 1
popo sweep "$BASE" --methods popo,grpo,raft --grid optim.lr=1e-4 --seeds 2 --out "$OUT" "${PAR[@]}"
popo report "$OUT" --baseline popo,grpo
