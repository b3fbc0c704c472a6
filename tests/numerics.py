"""Tolerances for comparing the same computation done in two layouts (one process against two, DDP or FSDP
shards, a resumed run, another CPU instruction set), derived from float32 rounding rather than from what one
machine printed.

A layout change does not change the math, only the order of float32 reductions: inner products in the
forward and backward passes (batch shapes and kernels differ), and the sums of per-rank gradients and metrics.
One reduction of n terms in another order differs by at most about n * u relative to the sum of the terms'
magnitudes (u = 2**-24, the float32 unit roundoff; Higham, Accuracy and Stability of Numerical Algorithms,
section 4.2). The testbed model's widest reduction is its MLP's 512-wide projection, so one pass can move a
value by up to 512 u = 3.1e-5 of its magnitude. A logged number of a training step goes through the forward,
the backward and the update of weights that themselves carry the earlier steps' rounding, so comparisons of
training records allow REORDER_REL = 1e-4 (about three such passes), with an absolute floor REORDER_ABS for
values near zero whose error is set by their terms' magnitude, not their own (cosines, shares, a KL between
two close models). What rounding cannot change stays exact: token counts, rewards and positives of
prompts sampled before any update (see each test).
"""

from __future__ import annotations

U32 = 2.0 ** -24
WIDEST_REDUCTION = 512  # popo.testbed.model.TinyModelSpec.intermediate_size
REORDER_REL = 1e-4  # > 3 * WIDEST_REDUCTION * U32 = 9.2e-5
REORDER_ABS = 1e-5  # REORDER_REL of a unit-scale term (log-probs, cosines and shares are O(1))

assert 3 * WIDEST_REDUCTION * U32 < REORDER_REL
