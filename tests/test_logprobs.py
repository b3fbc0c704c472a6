"""Tests for popo.logprobs."""

import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from popo.logprobs import (
    CompletionOutputs,
    completion_outputs,
    masked_mean,
    selected_token_logprobs,
    token_entropy,
)

F64 = torch.float64


def test_selected_logprobs_hand_value():
    # logits (0, ln 3) -> probs (1/4, 3/4): log p(token 1) = ln 3 - ln 4, log p(token 0) = -ln 4
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    lp = selected_token_logprobs(logits, torch.tensor([[1, 0]]))
    expected = torch.tensor([[math.log(0.75), math.log(0.25)]])
    torch.testing.assert_close(lp, expected, atol=1e-6, rtol=0)
    assert lp.dtype == torch.float32


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 4096])
def test_selected_logprobs_chunked_equals_unchunked(chunk_size):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 5, 11, generator=gen, dtype=F64)).requires_grad_(True)
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    ref = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1).float()
    lp = selected_token_logprobs(logits, tokens, chunk_size=chunk_size)
    torch.testing.assert_close(lp, ref, atol=1e-6, rtol=0)
    # gradients also agree with the full log_softmax reference
    w = torch.randn(3, 5, generator=gen)
    g, = torch.autograd.grad((lp * w).sum(), logits)
    g_ref, = torch.autograd.grad((ref * w).sum(), logits)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=0)


def test_selected_logprobs_bf16_and_validation():
    logits = torch.randn(2, 3, 5).bfloat16()
    lp = selected_token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long))
    assert lp.dtype == torch.float32 and lp.shape == (2, 3)
    with pytest.raises(ValueError, match="tokens"):
        selected_token_logprobs(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        selected_token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), chunk_size=0)


def test_token_entropy_hand_values():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0],                 # uniform over 4: ln 4
                            [0.0, -math.inf, -math.inf, -math.inf],  # one-hot: 0
                            [0.0, 0.0, -math.inf, -math.inf]]])      # uniform over 2: ln 2
    logits.requires_grad_(True)
    h = token_entropy(logits)
    torch.testing.assert_close(h, torch.tensor([[math.log(4), 0.0, math.log(2)]]), atol=1e-6, rtol=0)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_token_entropy_chunked_matches_reference(chunk_size):
    gen = torch.Generator().manual_seed(1)
    logits = (2 * torch.randn(2, 6, 9, generator=gen, dtype=F64)).requires_grad_(True)
    logp = torch.log_softmax(logits, -1)
    ref = -(logp.exp() * logp).sum(-1).float()
    h = token_entropy(logits, chunk_size=chunk_size)
    torch.testing.assert_close(h, ref, atol=1e-6, rtol=0)
    g, = torch.autograd.grad(h.sum(), logits)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=0)


def test_masked_mean_hand_values_empty_rows_and_nan():
    values = torch.tensor([[1.0, 2.0, math.nan], [math.inf, math.nan, 5.0], [math.nan] * 3],
                          dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    out = masked_mean(values, mask)
    # (1+2)/2 = 1.5; 5/1 = 5; empty row -> 0
    torch.testing.assert_close(out, torch.tensor([1.5, 5.0, 0.0], dtype=F64), atol=0, rtol=0)
    out.sum().backward()
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(values.grad, expected, atol=0, rtol=0)


def test_masked_mean_trailing_dims():
    values = torch.arange(2 * 3 * 2, dtype=F64).view(2, 3, 2)
    values[1, 0] = math.nan
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]])
    out = masked_mean(values, mask)
    # row 0: mean of positions 0 and 2 -> ((0,1) + (4,5)) / 2 = (2, 3)
    # row 1: positions 1, 2 -> ((8,9) + (10,11)) / 2 = (9, 10)
    torch.testing.assert_close(out, torch.tensor([[2.0, 3.0], [9.0, 10.0]], dtype=F64), atol=0, rtol=0)
    with pytest.raises(ValueError, match="mask"):
        masked_mean(values, mask[:, :2])


# ----------------------------------------------------------------------------- completion_outputs


@pytest.fixture(scope="module")
def tiny_qwen():
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).eval()


def _batch():
    # P = 4 (left padded), C = 5 (right padded); pad id 0
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 50, (3, 9), generator=gen)
    am = torch.ones(3, 9, dtype=torch.long)
    am[1, :2] = 0           # prompt of length 2
    am[2, :3] = 0           # prompt of length 1
    am[0, 7:] = 0           # completion of length 3
    am[2, 5:] = 0           # completion of length 1
    ids = torch.where(am.bool(), ids, 0)
    return ids, am, 4


def _reference(model, ids, am, p):
    pos = (am.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=am, position_ids=pos, output_hidden_states=True)
    logp = torch.log_softmax(out.logits.float(), -1)[:, p - 1:-1]          # [N, C, V]
    lp = logp.gather(-1, ids[:, p:].unsqueeze(-1)).squeeze(-1)             # [N, C]
    ent = -(logp.exp() * logp).sum(-1)                                     # [N, C]
    return out.logits, lp, ent, out.hidden_states[-1][:, p:]


@pytest.mark.parametrize("chunk_size", [2, 4096])
def test_completion_outputs_match_full_forward(tiny_qwen, chunk_size):
    ids, am, p = _batch()
    out = completion_outputs(tiny_qwen, ids, am, p, need_entropy=True, need_features=True,
                             chunk_size=chunk_size)
    assert isinstance(out, CompletionOutputs)
    with torch.no_grad():
        _, lp_ref, ent_ref, feat_ref = _reference(tiny_qwen, ids, am, p)
    cmask = am[:, p:].bool()
    # float32 end to end; the LM head on a slice vs the whole sequence may round differently,
    # so compare with 1e-5 on real completion tokens.
    torch.testing.assert_close(out.logprobs[cmask], lp_ref[cmask], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.entropy[cmask], ent_ref[cmask], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.features[cmask], feat_ref[cmask], atol=1e-5, rtol=0)
    assert out.logprobs.shape == (3, 5) and out.features.shape == (3, 5, 32)
    assert torch.isfinite(out.logprobs).all() and torch.isfinite(out.features).all()


def test_left_padding_equals_unpadded_row(tiny_qwen):
    ids, am, p = _batch()
    out = completion_outputs(tiny_qwen, ids, am, p)
    # row 1 without its two pad tokens, run alone: same completion log-probs
    solo = completion_outputs(tiny_qwen, ids[1:2, 2:], am[1:2, 2:], p - 2)
    torch.testing.assert_close(out.logprobs[1], solo.logprobs[0], atol=1e-5, rtol=0)


def test_lm_head_only_sees_completion_positions(tiny_qwen):
    ids, am, p = _batch()
    seen = []
    handle = tiny_qwen.get_output_embeddings().register_forward_hook(
        lambda mod, inp, out: seen.append(inp[0].shape[0]))
    try:
        completion_outputs(tiny_qwen, ids, am, p, chunk_size=4)
    finally:
        handle.remove()
    assert sum(seen) == 3 * 5  # N * C rows, never the prompt positions
    assert max(seen) <= 4


def test_completion_outputs_flags_gradients_and_validation(tiny_qwen):
    ids, am, p = _batch()
    out = completion_outputs(tiny_qwen, ids, am, p, need_logprobs=False, need_features=True)
    assert out.logprobs is None and out.entropy is None and out.features is not None
    none = completion_outputs(tiny_qwen, ids, am, p, need_logprobs=False)
    assert none.logprobs is None and none.features is None
    out = completion_outputs(tiny_qwen, ids, am, p, need_entropy=True)
    (out.logprobs.sum() + out.entropy.sum()).backward()
    grads = [q.grad for q in tiny_qwen.parameters() if q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    tiny_qwen.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="prompt_length"):
        completion_outputs(tiny_qwen, ids, am, 0)
    with pytest.raises(ValueError, match="prompt_length"):
        completion_outputs(tiny_qwen, ids, am, 9)


def test_final_logit_softcapping_is_applied(tiny_qwen):
    ids, am, p = _batch()
    tiny_qwen.config.final_logit_softcapping = 0.5
    try:
        out = completion_outputs(tiny_qwen, ids, am, p)
    finally:
        tiny_qwen.config.final_logit_softcapping = None
    with torch.no_grad():
        logits, _, _, _ = _reference(tiny_qwen, ids, am, p)
    capped = 0.5 * torch.tanh(logits[:, p - 1:-1].float() / 0.5)
    lp_ref = torch.log_softmax(capped, -1).gather(-1, ids[:, p:].unsqueeze(-1)).squeeze(-1)
    cmask = am[:, p:].bool()
    torch.testing.assert_close(out.logprobs[cmask], lp_ref[cmask], atol=1e-5, rtol=0)
