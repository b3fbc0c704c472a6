"""The rollout engine contract, one suite for every engine: output fields and layout, seeds, stop
handling and sampled-token log-probs. It runs against the HF engine always and against vLLM where vLLM
is importable and a CUDA GPU is present (otherwise the vLLM cases show as skipped, with the reason)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import WARM_TESTBED
from popo.config import load_config
from popo.loading import resolve_model_path
from popo.logprobs import completion_outputs
from popo.rollout import HFEngine, SamplingParams
from popo.rollout.vllm import build_rollouts
from popo.testbed.sft import load_pretrained

PROMPTS = ["3+4=", "9+9=", "1+2=", "7+5="]


@pytest.fixture(scope="module")
def model_path(warm_testbed_cache) -> str:
    config = load_config(None, [f"testbed.cache_dir={warm_testbed_cache}", *WARM_TESTBED])
    return resolve_model_path(config, log=lambda s: None)


def _vllm_ready() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'popo[vllm]')"
    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU"
    return None


@pytest.fixture(scope="module", params=["hf", "vllm"])
def engine(request, model_path):
    model, tokenizer = load_pretrained(model_path)
    tokenizer.padding_side = "left"
    if request.param == "hf":
        return HFEngine(model.eval(), tokenizer, max_prompt_tokens=16, max_batch_rollouts=8), model, 1e-4
    reason = _vllm_ready()
    if reason:
        pytest.skip(reason)
    from popo.rollout.vllm import VLLMEngine

    return VLLMEngine(model_path, tokenizer, dtype="float32", sleep=False, max_prompt_tokens=16), model, 1e-2


def sample(engine, prompts=PROMPTS, n=4, max_new_tokens=12, temperature=1.0, seeds=(11, 12, 13, 14)):
    return engine.generate(list(prompts), n, SamplingParams(max_new_tokens, temperature, 1.0),
                           prompt_seeds=list(seeds[: len(prompts)]))


def test_layout_and_stop_handling(engine):
    eng, _, _ = engine
    r = sample(eng)
    eos, pad = eng.tokenizer.eos_token_id, eng.tokenizer.pad_token_id
    assert r.num_rollouts == 16 and r.group_size == 4 and len(r.texts) == 16
    assert r.prompt_ids.shape[0] == r.completion_ids.shape[0] == r.sampling_logprobs.shape[0] == 16
    for g in range(4):  # rows are ordered prompt by prompt, G rows each, left-padded prompts
        rows = r.prompt_ids[4 * g: 4 * g + 4]
        assert (rows == rows[0]).all()
        ids = rows[0][r.prompt_mask[4 * g]].tolist()
        assert ids == eng.tokenizer(PROMPTS[g], add_special_tokens=False)["input_ids"]
    for i in range(16):
        mask, ids = r.completion_mask[i], r.completion_ids[i]
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # a prefix
        has_eos = eos in ids[:n].tolist()
        if has_eos:  # the mask stops right after the first end-of-sequence token
            assert ids[:n].tolist().index(eos) == n - 1 and not r.truncated[i]
        else:
            assert n == 12 and r.truncated[i]
        assert (r.sampling_logprobs[i][~mask] == 0).all()
        assert r.texts[i] == eng.tokenizer.decode(ids[:n], skip_special_tokens=True)
        assert (ids[n:] == pad).all() or not has_eos
    assert (~r.truncated).any(), "the warmed-up model should finish some answers"


def test_seeds_fix_the_samples_whatever_the_batch(engine):
    eng, _, _ = engine
    a, b = sample(eng), sample(eng)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    other = sample(eng, seeds=(21, 22, 23, 24))
    assert a.texts != other.texts
    alone = sample(eng, prompts=PROMPTS[2:3], seeds=(13,))  # prompt 2 alone, with its seed
    assert alone.texts == a.texts[8:12]
    reordered = sample(eng, prompts=PROMPTS[::-1], seeds=(14, 13, 12, 11))
    assert reordered.texts[:4] == a.texts[12:16]


def test_sampled_token_logprobs_match_the_policy(engine):
    eng, model, atol = engine
    r = sample(eng)
    ids, attention, prompt_len = r.sequences()
    with torch.no_grad():
        logprobs = completion_outputs(model.eval(), ids, attention, prompt_len).logprobs
    mask = r.completion_mask
    torch.testing.assert_close(r.sampling_logprobs[mask], logprobs[mask].float(), atol=atol, rtol=0)


def test_greedy_ignores_seeds(engine):
    eng, _, _ = engine
    a = sample(eng, temperature=0.0, n=1)
    b = sample(eng, temperature=0.0, n=1, seeds=(5, 6, 7, 8))
    assert a.texts == b.texts


def test_over_long_prompt_is_an_error(engine):
    eng, _, _ = engine
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        sample(eng, prompts=["1" * 40], seeds=(1,))


def test_vllm_outputs_are_packed_like_the_hf_engine():
    """The vLLM adapter's packing, on hand-made outputs (no vLLM needed)."""
    samples = [[([5, 6, 1], [-0.5, -0.25, -0.125]), ([7, 8, 9], [-1.0, -2.0, -3.0])], [([1], [-0.75]), ([4, 1, 4], [-1.5, -0.5, -9.0])]]
    r = build_rollouts([[10, 11], [12]], samples, 2, pad_id=0, eos_id=1, max_new_tokens=3,
                       decode=lambda ids: ",".join(map(str, ids)))
    assert r.prompt_ids.tolist() == [[10, 11], [10, 11], [0, 12], [0, 12]]
    assert r.prompt_mask.tolist() == [[True, True], [True, True], [False, True], [False, True]]
    assert r.completion_ids.tolist() == [[5, 6, 1], [7, 8, 9], [1, 0, 0], [4, 1, 0]]  # cut after the first eos
    assert r.completion_mask.sum(1).tolist() == [3, 3, 1, 2]
    assert r.truncated.tolist() == [False, True, False, False]
    assert r.sampling_logprobs.tolist() == [[-0.5, -0.25, -0.125], [-1.0, -2.0, -3.0], [-0.75, 0, 0], [-1.5, -0.5, 0]]
    assert r.texts == ["5,6,1", "7,8,9", "1", "4,1"]
