"""HFEngine's own decoding loop (shared prompt prefill, finished rows leave the batch) draws the same
rollouts as the `generate` path with the seeded sampler as a logits processor.

Both paths pick each token as argmax(log p + Gumbel noise keyed by (row seed, position, token)), so the
tokens must be identical. The log-probs agree to float32 rounding only: the shared prefill and the
shrinking batch change matmul shapes, which changes the order of float32 additions (observed
differences are ~1e-6; 1e-4 leaves room without hiding a wrong distribution, where differences
would be of order 0.1).
"""

import pytest
import torch

from popo.rollout import HFEngine, SamplingParams
from popo.rollout.hf import sample_seeds
from popo.seeds import row_seed
from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
from popo.testbed.tokenizer import build_tokenizer

PROMPTS = ["12+34=", "5+6=", "123+456=", "9+99="]  # different lengths: left padding in the batch


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = build_tokenizer()
    model = build_tiny_qwen2(tokenizer, TinyModelSpec(hidden_size=32, num_hidden_layers=2, intermediate_size=64),
                             seed=3)
    with torch.no_grad():  # make end-of-sequence likely enough that rows finish at different steps
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= 4.0
    return model, tokenizer


@pytest.mark.parametrize("sampling", [SamplingParams(12, 1.0, 1.0), SamplingParams(12, 0.7, 0.9),
                                      SamplingParams(12, 0.0, 1.0)])
@pytest.mark.parametrize("n", [1, 4])
def test_own_loop_draws_what_generate_draws(model_and_tokenizer, sampling, n):
    model, tokenizer = model_and_tokenizer
    fast = HFEngine(model, tokenizer).generate(PROMPTS, n, sampling, seed=11)
    slow = HFEngine(model, tokenizer, share_prompt_prefill=False, drop_finished_rows=False).generate(
        PROMPTS, n, sampling, seed=11)
    assert torch.equal(fast.completion_ids, slow.completion_ids)
    assert torch.equal(fast.completion_mask, slow.completion_mask)
    assert torch.equal(fast.truncated, slow.truncated)
    assert fast.texts == slow.texts
    assert torch.allclose(fast.sampling_logprobs, slow.sampling_logprobs, atol=1e-4, rtol=0)
    if sampling.temperature > 0 and n > 1:  # the case where rows really do leave the batch early
        lengths = fast.lengths
        assert lengths.min() < lengths.max() and not bool(fast.truncated.all())


def test_finished_rows_are_padded_and_carry_no_logprob(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    r = HFEngine(model, tokenizer).generate(PROMPTS, 4, SamplingParams(12, 1.0, 1.0), seed=5)
    after = ~r.completion_mask  # [N, C] positions after each row's eos
    assert bool((r.completion_ids[after] == tokenizer.pad_token_id).all())
    assert bool((r.sampling_logprobs[after] == 0).all())
    assert bool((r.sampling_logprobs[r.completion_mask] < 0).all())


def test_sample_seeds_equal_row_seed():
    prompt_seeds = [0, 1, 2**31, 2**32 - 1, 2**40 + 17, -5, 123456789]
    expected = [row_seed(s, j) for s in prompt_seeds for j in range(8)]
    assert sample_seeds(prompt_seeds, 8).tolist() == expected
