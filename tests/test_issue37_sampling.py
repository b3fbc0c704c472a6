"""Issue 37, GPU sampling: the static-cache `generate` path draws what the engine's own loop draws, and the draw
is a pure function of (row seed, position) that `torch.compile` captures as one graph.

Every decoding path takes `seeded_draw` (argmax of log p + Gumbel noise keyed by (row seed, position, token)),
so the tokens must be identical at fp32. The log-probs agree to float32 rounding only: the paths compute the
logits with different matrix shapes (shared prefill, a shrinking batch, a static cache masked to its full
length), so the additions run in another order. Logits here are below 16 in size, where one float32 step is
9.5e-7 (the largest difference observed); 1e-5 allows about ten such steps, while a wrong distribution (a
missed temperature or nucleus) moves log-probs by 0.1 or more.
"""

import pytest
import torch

from test_engine_decode import model_and_tokenizer  # noqa: F401 (the same tiny model and tokenizer)

from popo.rollout import HFEngine, SamplingParams
from popo.rollout.hf import sample_seeds
from popo.rollout.sampling import SeededSampler, draw_scores, seeded_draw
from popo.seeds import counter_uniform, row_seed, row_seeds, vocab_keys

PROMPTS = ["12+34=", "5+6=", "123+456=", "9+99="]  # different lengths: left padding in the batch
SETTINGS = [SamplingParams(12, 1.0, 1.0), SamplingParams(12, 0.7, 0.9), SamplingParams(12, 0.0, 1.0)]


@pytest.mark.parametrize("sampling", SETTINGS)
@pytest.mark.parametrize("n", [1, 4])
def test_static_cache_path_draws_what_the_loop_draws(model_and_tokenizer, sampling, n):
    model, tokenizer = model_and_tokenizer
    loop = HFEngine(model, tokenizer).generate(PROMPTS, n, sampling, seed=11)
    static = HFEngine(model, tokenizer, decode="generate-static").generate(PROMPTS, n, sampling, seed=11)
    assert torch.equal(loop.completion_ids, static.completion_ids)
    assert torch.equal(loop.completion_mask, static.completion_mask)
    assert torch.equal(loop.truncated, static.truncated)
    assert loop.texts == static.texts
    assert torch.allclose(loop.sampling_logprobs, static.sampling_logprobs, atol=1e-5, rtol=0)
    if sampling.temperature > 0 and n > 1:  # rows end at different steps: generate pads them, the loop drops them
        assert loop.lengths.min() < loop.lengths.max()


def test_static_cache_path_is_independent_of_the_batch(model_and_tokenizer):
    """A rollout's draw depends on its own seed only: two calls of two prompts give the one call of four."""
    model, tokenizer = model_and_tokenizer
    sampling, seeds = SETTINGS[0], [row_seed(5, i) for i in range(4)]
    engine = HFEngine(model, tokenizer, decode="generate-static")
    whole = engine.generate(PROMPTS, 4, sampling, prompt_seeds=seeds)
    halves = [engine.generate(PROMPTS[i:i + 2], 4, sampling, prompt_seeds=seeds[i:i + 2]) for i in (0, 2)]
    assert whole.texts == halves[0].texts + halves[1].texts


def test_position_as_a_tensor_draws_the_same_noise():
    seeds = torch.tensor([0, 7, 2**32 - 1, 123456789], dtype=torch.int64)
    for position in [0, 1, 23, 2**20 + 1, 2**31 + 5]:
        as_int = counter_uniform(seeds, position, 50)
        assert torch.equal(as_int, counter_uniform(seeds, torch.tensor(position), 50))
        if position < 2**31:  # an int32 position is widened before the product
            assert torch.equal(as_int, counter_uniform(seeds, torch.tensor(position, dtype=torch.int32), 50))


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_draw_compiles_as_one_graph_with_the_same_values(temperature, top_p):
    """What the static path runs on CUDA: `draw_scores` under `torch.compile` (here with an eager backend, which
    checks the capture, not Inductor's kernels), one graph for every position, the eager draw's values."""
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    seeds, keys = torch.randint(0, 2**32, (16,), generator=generator), vocab_keys(50)
    compiled = torch.compile(draw_scores, fullgraph=True, backend="aot_eager")
    try:
        for position in range(5):
            logits = torch.randn(16, 50, generator=generator) * 3
            want_choice, want_logprob = seeded_draw(logits, seeds, position, temperature, top_p, keys)
            scores, logprob = compiled(logits, seeds, torch.tensor(position), temperature, top_p, keys)
            assert torch.equal(scores.argmax(-1), want_choice)
            assert torch.equal(logprob, want_logprob)
            assert bool((scores.isinf().sum(-1) == 49).all())
            if position == 0:  # a second position must reuse the graph, not recompile for its value
                torch.compiler.set_stance("fail_on_recompile")
    finally:
        torch.compiler.set_stance("default")
        torch._dynamo.reset()


def test_sampler_with_the_compiled_draw_records_the_same_logprobs():
    torch._dynamo.reset()
    try:
        logits = torch.randn(8, 30, generator=torch.Generator().manual_seed(1))
        seeds = torch.arange(8, dtype=torch.int64)
        eager = SeededSampler(seeds, 1.0, 1.0, prompt_width=3)
        compiled = SeededSampler(seeds, 1.0, 1.0, prompt_width=3,
                                 draw=torch.compile(draw_scores, fullgraph=True, backend="aot_eager"))
        for width in (3, 4, 5):  # positions 0, 1, 2
            ids = torch.zeros(8, width, dtype=torch.long)
            assert torch.equal(eager(ids, logits), compiled(ids, logits))
        assert all(torch.equal(a, b) for a, b in zip(eager.logprobs, compiled.logprobs))
        want = seeded_draw(logits, seeds, 2, 1.0, 1.0)[1]  # the loop's draw at position 2
        assert torch.equal(eager.logprobs[2], want)
    finally:
        torch._dynamo.reset()


def test_row_seeds_equal_row_seed():
    """Including keys whose product with the multiplier wraps int64, and seeds outside 32 bits."""
    seeds = [0, 1, 2**31, 2**32 - 1, -5, 123456789]
    keys = [0, 1, 7, 2**31 - 1, 2**32 - 1, 3_500_000_000]
    got = row_seeds(torch.tensor(seeds).view(-1, 1, 1), torch.tensor(keys).view(1, -1, 1),
                    torch.tensor(keys[::-1]).view(1, 1, -1))
    want = [[[row_seed(s, a, b) for b in keys[::-1]] for a in keys] for s in seeds]
    assert got.tolist() == want
    assert row_seeds(torch.tensor([9])).tolist() == [row_seed(9)]
    assert sample_seeds([2**40 + 17, -5], 3).tolist() == [row_seed(s, j) for s in (2**40 + 17, -5) for j in range(3)]


def test_decode_paths_and_the_older_switch(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="decode="):
        HFEngine(model, tokenizer, decode="static")
    assert HFEngine(model, tokenizer).decode == "loop"
    assert HFEngine(model, tokenizer, drop_finished_rows=False).decode == "generate"
    engine = HFEngine(model, tokenizer, decode="generate-static")
    assert not engine.drop_finished_rows
    assert engine._draw(torch.device("cpu")) is draw_scores  # compiled only on CUDA
    on_cuda = engine._draw(torch.device("cuda"))  # torch.compile is lazy: nothing runs here
    assert on_cuda is not draw_scores and engine._draw(torch.device("cuda")) is on_cuda
    assert HFEngine(model, tokenizer)._draw(torch.device("cuda")) is draw_scores
    engine.drop_finished_rows = True
    assert engine.decode == "loop"


def test_rollout_hf_decode_reaches_the_engine_and_a_wrong_value_is_refused_by_name(model_and_tokenizer):
    from popo.config import ConfigError, load_config
    from popo.rollout.make import make_engine

    with pytest.raises(ConfigError, match="rollout.hf_decode"):
        load_config(None, ["rollout.hf_decode=static"])
    config = load_config(None, ["rollout.hf_decode=generate-static"])
    assert make_engine(config, *model_and_tokenizer, model_path="unused").decode == "generate-static"
