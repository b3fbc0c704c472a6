"""`LeanDecoder` computes the model's own function (prefill, decoding steps, dropped and repeated rows) on
every architecture it accepts, the engine samples the same tokens with it as with the model's forward,
and it refuses what it cannot compute.

Tolerance: the logits agree to float32 rounding only (fused products, the norm weights folded into them,
a complex rotation, a hand-written attention: the order of additions differs). Observed differences
are below 1e-5 on logits of size ~1-10; 1e-4 leaves room without hiding a wrong function (a missing
bias, rotation or mask moves logits by 1e-2 or more).
"""

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

from popo.rollout import HFEngine, SamplingParams
from popo.rollout.decoder import LeanDecoder
from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
from popo.testbed.tokenizer import build_tokenizer

ATOL = 1e-4
COMMON = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)


def _model(cls, config_cls, **extra):
    torch.manual_seed(0)
    model = cls(config_cls(**{**COMMON, **extra})).eval()
    with torch.no_grad():  # random biases (zero at init) so a dropped bias would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


ARCHITECTURES = {
    "qwen2": lambda: _model(Qwen2ForCausalLM, Qwen2Config),  # q/k/v biases
    "llama": lambda: _model(LlamaForCausalLM, LlamaConfig),
    "llama-rope-scaled": lambda: _model(LlamaForCausalLM, LlamaConfig, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "mistral": lambda: _model(MistralForCausalLM, MistralConfig, sliding_window=None),
    "qwen3": lambda: _model(Qwen3ForCausalLM, Qwen3Config, head_dim=8),  # per-head q/k norms
    "llama-no-gqa": lambda: _model(LlamaForCausalLM, LlamaConfig, num_key_value_heads=4),
}


def _reference(model, ids, mask):
    """Next-token logits [R, T, V] of the model's own forward over ids [R, T] (left-padded)."""
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_prefill_and_steps_match_the_model(arch):
    model = ARCHITECTURES[arch]()
    assert LeanDecoder.supports(model) is None
    torch.manual_seed(1)
    rows, prompt, steps = 5, 6, 7
    ids = torch.randint(0, 40, (rows, prompt + steps))
    mask = torch.ones(rows, prompt + steps, dtype=torch.long)
    mask[0, :3] = 0  # left padding in two rows
    mask[3, :1] = 0
    with torch.no_grad():
        want = _reference(model, ids, mask)  # [R, T, V]
        decoder = LeanDecoder(model, mask[:, :prompt], limit=steps)
        got = decoder.prefill(ids[:, :prompt - 1])
        assert torch.allclose(got, want[:, prompt - 2], atol=ATOL, rtol=0)
        for t in range(prompt - 1, prompt + steps - 1):
            got = decoder.step(ids[:, t])
            assert torch.isfinite(got).all()
            assert torch.allclose(got, want[:, t], atol=ATOL, rtol=0), (arch, t, (got - want[:, t]).abs().max())


def test_selected_and_repeated_rows_keep_their_own_cache():
    """`select` both drops rows (finished) and repeats them (a shared prompt prefill)."""
    model = ARCHITECTURES["qwen2"]()
    torch.manual_seed(2)
    ids = torch.randint(0, 40, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :2] = 0
    with torch.no_grad():
        want = _reference(model, ids, mask)
        decoder = LeanDecoder(model, mask[:, :5], limit=4)
        decoder.prefill(ids[:, :4])
        index = torch.tensor([2, 1, 1, 0, 2])
        decoder.select(index)
        got = decoder.step(ids[index, 4])
        assert torch.allclose(got, want[index, 4], atol=ATOL, rtol=0)
        keep = torch.tensor([1, 3])  # rows 1 and 0 of the prompts
        decoder.select(keep)
        got = decoder.step(ids[index[keep], 5])
        assert torch.allclose(got, want[index[keep], 5], atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def testbed_pair():
    tokenizer = build_tokenizer()
    model = build_tiny_qwen2(tokenizer, TinyModelSpec(hidden_size=32, num_hidden_layers=2, intermediate_size=64),
                             seed=4)
    with torch.no_grad():  # rows end at different steps, so rows leave the batch
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= 4.0
    return model, tokenizer


@pytest.mark.parametrize("sampling", [SamplingParams(16, 1.0, 1.0), SamplingParams(16, 0.8, 0.9),
                                      SamplingParams(16, 0.0, 1.0)])
@pytest.mark.parametrize("share", [True, False])
def test_engine_samples_the_same_tokens_with_either_stepper(testbed_pair, sampling, share):
    model, tokenizer = testbed_pair
    prompts = ["12+34=", "5+6=", "123+456=", "9+99=", "7+1=", "40+2="]
    lean = HFEngine(model, tokenizer, share_prompt_prefill=share).generate(prompts, 8, sampling, seed=3)
    own = HFEngine(model, tokenizer, share_prompt_prefill=share, lean_decode=False).generate(
        prompts, 8, sampling, seed=3)
    assert torch.equal(lean.completion_ids, own.completion_ids)
    assert torch.equal(lean.completion_mask, own.completion_mask)
    assert lean.texts == own.texts
    assert torch.allclose(lean.sampling_logprobs, own.sampling_logprobs, atol=ATOL, rtol=0)
    if sampling.temperature > 0:
        assert lean.lengths.min() < lean.lengths.max()  # rows did leave the batch at different steps


def test_refuses_what_it_cannot_compute(monkeypatch):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=1, n_head=2, n_positions=32))
    assert "model type" in LeanDecoder.supports(gpt2)
    sliding = _model(MistralForCausalLM, MistralConfig, sliding_window=4)
    assert "sliding" in LeanDecoder.supports(sliding)
    wrapped = ARCHITECTURES["llama"]()
    inner = wrapped.model.layers[0].self_attn.q_proj
    wrapped.model.layers[0].self_attn.q_proj = torch.nn.Sequential(inner)  # as LoRA wraps a layer
    assert "wrapped" in LeanDecoder.supports(wrapped)
    small = ARCHITECTURES["qwen2"]()
    assert LeanDecoder.supports(small) is None
    size = sum(p.numel() for p in small.parameters())
    monkeypatch.setattr(LeanDecoder, "max_parameters", size - 1)  # large models keep their own forward
    assert "max_parameters" in LeanDecoder.supports(small)


def test_refused_models_still_generate(testbed_pair):
    """A model the decoder refuses samples through the model's own forward (same tokens)."""
    model, tokenizer = testbed_pair
    sampling = SamplingParams(10, 1.0, 1.0)
    want = HFEngine(model, tokenizer, lean_decode=False).generate(["12+3="], 4, sampling, seed=1)
    original = model.model.layers[0].mlp.up_proj
    model.model.layers[0].mlp.up_proj = torch.nn.Sequential(original)
    try:
        assert LeanDecoder.supports(model) is not None
        got = HFEngine(model, tokenizer).generate(["12+3="], 4, sampling, seed=1)
    finally:
        model.model.layers[0].mlp.up_proj = original
    assert torch.equal(got.completion_ids, want.completion_ids)
