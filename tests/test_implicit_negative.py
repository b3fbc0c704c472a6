"""POPO's implicit negative gradient.

Under a softmax policy, raising the log-probability of the positives pushes
probability mass away from everything else, including negatives that were
never fed to the loss.  For a bandit over K whole sequences with logits
theta and POPO's NLL over the positives ``L = -sum_i w_i log pi(a_i) / N+``::

    dL/dtheta_k = sum_i w_i (pi_k - [k == a_i]) / N+

which is ``pi_k * sum_i w_i / N+ > 0`` on every arm that is not a positive:
a gradient step always lowers those logits.  The first-order change of a
non-positive arm's log-probability under a step of size lr is

    d log pi_k = -(lr / N+) * sum_i w_i (pi_k + pi(a_i) - sum_j pi_j^2)

which is negative whenever ``pi_k + pi(a_i) > ||pi||^2``.  That holds unless
the policy is dominated by some third arm (whose lost mass can then spill
onto a rare negative), so the bandit test starts near uniform, checks that
condition, and then checks the actual probability drop.
"""

import pytest
import torch

from popo.credit import popo_weights
from popo.losses import popo_loss

F64 = torch.float64


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", ["softmax", "uniform"])
def test_one_popo_step_lowers_every_sampled_negative(seed, mode):
    gen = torch.Generator().manual_seed(seed)
    k, g = 12, 8
    # near-uniform start (see the module docstring for why this matters)
    theta = (0.2 * torch.randn(k, generator=gen, dtype=F64)).requires_grad_(True)
    correct = torch.zeros(k, dtype=torch.bool)
    correct[torch.randperm(k, generator=gen)[:4]] = True  # 4 arms earn reward 1

    # sample a group of G rollouts from the policy, until it has a positive and a negative
    while True:
        arms = torch.multinomial(torch.softmax(theta.detach(), 0), g, replacement=True, generator=gen)
        rewards = correct[arms].to(F64)
        if 0 < rewards.sum() < g:
            break
    pos = rewards > 0
    logp_all = torch.log_softmax(theta, 0)                      # [K]
    seq_logp = logp_all[arms]                                   # [G], one "token" per sequence
    weights = popo_weights(seq_logp.detach(), rewards, g, mode=mode)

    # POPO's loss sees only the positive rows; negatives are never computed on.
    pos_rows = pos.nonzero().squeeze(1)
    loss, _ = popo_loss(seq_logp[pos_rows].unsqueeze(1), torch.ones(len(pos_rows), 1, dtype=torch.bool),
                        weights[pos_rows], alpha=0.0, beta=0.0)
    loss.backward()

    probs_before = torch.softmax(theta.detach(), 0)
    # hand gradient: d loss / d theta_k = sum_{i in S+} w_i (pi_k - [k == a_i]) / N+
    expected = torch.zeros(k, dtype=F64)
    for i in pos_rows.tolist():
        expected += weights[i] * (probs_before - torch.nn.functional.one_hot(arms[i], k).to(F64))
    expected /= len(pos_rows)
    torch.testing.assert_close(theta.grad, expected, atol=1e-12, rtol=0)

    positive_arms = set(arms[pos].tolist())
    negative_arms = set(arms[~pos].tolist())
    assert negative_arms and not (negative_arms & positive_arms)
    non_positive = torch.tensor([a not in positive_arms for a in range(k)])
    assert (theta.grad[non_positive] > 0).all()  # every non-positive logit is pushed down
    # the first-order drop sum_i w_i (pi_k + pi(a_i) - ||pi||^2) > 0 holds at this start
    sq = probs_before.square().sum()
    for a in negative_arms:
        assert sum(weights[i] * (probs_before[a] + probs_before[arms[i]] - sq) for i in pos_rows) > 0

    with torch.no_grad():
        probs_after = torch.softmax(theta - 0.5 * theta.grad, 0)
    for arm in negative_arms:
        assert probs_after[arm] < probs_before[arm], f"negative arm {arm} did not drop"
    # the positives' total probability rises
    idx = torch.tensor(sorted(positive_arms))
    assert probs_after[idx].sum() > probs_before[idx].sum()


def test_implicit_negative_in_a_tiny_lm():
    """Two-token sequences from an LM with context-free per-step logits [2, V].

    Positives and negatives share no token at any position here, so every
    negative sequence's probability (a product of two per-step probabilities,
    each of a token absent from the positives) strictly falls after one step.
    """
    gen = torch.Generator().manual_seed(0)
    v = 6
    table = torch.randn(2, v, generator=gen, dtype=F64, requires_grad=True)  # [T, V]
    positives = torch.tensor([[0, 1], [2, 1], [0, 3]])   # tokens {0, 2} then {1, 3}
    negatives = torch.tensor([[4, 5], [5, 0], [1, 4]])   # first {4, 5, 1}, second {5, 0, 4}

    def seq_logprobs(seqs, tbl):
        logp = torch.log_softmax(tbl, -1)                   # [T, V]
        return logp[torch.arange(2), seqs]                  # [S, T]

    tok_lp = seq_logprobs(positives, table)
    rewards = torch.ones(3, dtype=F64)
    w = popo_weights(tok_lp.detach().mean(1), rewards, 3)
    loss, m = popo_loss(tok_lp, torch.ones(3, 2, dtype=torch.bool), w, alpha=0.0, beta=0.0)
    assert m["num_positive"] == 3.0
    loss.backward()
    with torch.no_grad():
        before = seq_logprobs(negatives, table).sum(1)
        after = seq_logprobs(negatives, table - 1.0 * table.grad).sum(1)
        pos_before = seq_logprobs(positives, table).sum(1)
        pos_after = seq_logprobs(positives, table - 1.0 * table.grad).sum(1)
    assert (after < before).all()
    assert (pos_after > pos_before).all()
