"""The testbed's tokenizer, model, task and verifier."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from popo.testbed.addition import AdditionTask, addition_reward, scratchpad
from popo.testbed.model import build_tiny_qwen2
from popo.testbed.tokenizer import build_tokenizer


def test_scratchpad_and_reward():
    assert scratchpad(345, 678) == "13,12,10=1023"
    assert scratchpad(5, 7) == "12=12"
    assert addition_reward("13,12,10=1023", "1023") == 1.0
    assert addition_reward("13,12,10=1024", "1023") == 0.0
    assert addition_reward("1023", "1023") == 0.0  # format is strict
    assert addition_reward("13,12,10=1023 and more", "1023") == 0.0
    assert addition_reward("9" * 10_000, "1023") == 0.0


def test_splits_are_disjoint_and_fixed():
    task = AdditionTask(digits=3, test_size=200)
    test = {ex.problem for ex in task.test_examples()}
    assert test == {ex.problem for ex in AdditionTask(digits=3, test_size=200).test_examples()}
    assert not test & {ex.problem for ex in task.train_examples(2000, seed=0)}
    assert not test & {p for p, _ in task.warmup_pairs(2000, seed=0)}


def test_tokenizer_and_model_round_trip(tmp_path):
    tok = build_tokenizer()
    model = build_tiny_qwen2(tok)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 5e6
    tok.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    text = "345+678=13,12,10=1023"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert tok2.decode(tok2(text)["input_ids"]) == text
    assert tok2.pad_token_id == tok.pad_token_id and tok2.eos_token_id == tok.eos_token_id
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert (model(ids).logits - model2(ids).logits).abs().max() == 0
