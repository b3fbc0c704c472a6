"""POPO inside TRL (`popo.integrations.trl`): a tiny local Qwen2, TRL's own generation, CPU.

POPOTrainer's loss and gradients are compared with popo's own update (`popo.update.update_policy`) on the
same prompts, completions and rewards; the rows forwarded with gradient are checked with a forward hook;
a resumed checkpoint, TRL's own loss types and two processes are checked against their references.
This file is also the worker of the two-process test (`accelerate launch tests/test_trl_integration.py`).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from peft import LoraConfig
from safetensors.torch import load_file

from popo.algorithms import get_algorithm
from popo.errors import ConfigError
from popo.integrations.trl import POPOConfig, POPOTrainer
from popo.lora import AdapterEMA
from popo.models import Models, sequence_logprobs
from popo.rollout.base import Rollouts
from popo.seeds import NOISE_STREAM, row_seed, stream_seed
from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
from popo.testbed.tokenizer import build_tokenizer
from popo.update import update_policy

G = 4  # completions per prompt
ROWS = 12  # rows per generation batch and process: 3 prompts
PROMPTS = Dataset.from_dict({"prompt": [f"{i}+{2 * i}=" for i in range(64)]})


def text_reward(prompts, completions, **kwargs) -> list[float]:
    """About a third of the completions are positive: a pure function of the text."""
    return [float(zlib.crc32(c.encode()) % 3 == 0) for c in completions]


def build_model_dir(path: Path) -> Path:
    tokenizer = build_tokenizer()
    spec = TinyModelSpec(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64)
    build_tiny_qwen2(tokenizer, spec, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("tiny-qwen2"))


def make_config(out, cls=POPOConfig, *, accumulation: int = 1, rows: int = ROWS, **kwargs):
    settings = dict(output_dir=str(out), per_device_train_batch_size=rows // accumulation,
                    gradient_accumulation_steps=accumulation, num_generations=G, max_completion_length=8,
                    learning_rate=1e-3, max_steps=1, use_cpu=True, bf16=False, report_to="none", logging_steps=1,
                    save_strategy="no", disable_tqdm=True, seed=0, temperature=1.0, top_p=1.0, top_k=0,
                    gradient_checkpointing=False, max_grad_norm=0.0)
    return cls(**{**settings, **kwargs})


def make_trainer(model_dir, args, cls=POPOTrainer, reward=text_reward, **kwargs):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return cls(model=str(model_dir), reward_funcs=reward, args=args, train_dataset=PROMPTS, processing_class=tokenizer,
               **kwargs)


class Capture(TrainerCallback):
    """Per optimizer step: the models' states at its start, then its generation batch and the gradients
    just before the optimizer step (policy and predictor); and every log record."""

    def __init__(self, trainer):
        self.trainer, self.steps, self.logs = trainer, [], []
        trainer.add_callback(self)

    def on_step_begin(self, args, state, control, **kwargs):
        models = self.trainer.popo.models
        self.steps.append({"start": {name: copy.deepcopy(part.state_dict()) for name, part in
                                     (("policy", models.policy), ("target", models.target),
                                      ("predictor", models.predictor))}})

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        models = self.trainer.popo.models
        params = {f"policy.{n}": p for n, p in models.policy.named_parameters()}
        params |= {f"predictor.{n}": p for n, p in models.predictor.named_parameters()}
        outputs, rewards = self.trainer.popo.generation
        keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
        self.steps[-1] |= {"grads": {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                     for n, p in params.items()},
                           "outputs": {k: outputs[k] for k in keys}, "rewards": rewards}

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def to_rollouts(outputs: dict) -> Rollouts:
    n = outputs["completion_ids"].shape[0]
    mask = outputs["completion_mask"].bool()
    return Rollouts(outputs["prompt_ids"], outputs["prompt_mask"].bool(), outputs["completion_ids"], mask,
                    torch.zeros(mask.shape), torch.zeros(n, dtype=torch.bool), [""] * n, G)


def concat(parts: list[Rollouts]) -> Rollouts:
    """Rollouts of several processes as one batch: prompts left-padded, completions right-padded."""
    P = max(r.prompt_ids.shape[1] for r in parts)
    C = max(r.completion_ids.shape[1] for r in parts)
    left = [lambda x, r=r: F.pad(x, (P - r.prompt_ids.shape[1], 0)) for r in parts]
    right = [lambda x, r=r: F.pad(x, (0, C - r.completion_ids.shape[1])) for r in parts]
    return Rollouts(torch.cat([f(r.prompt_ids) for f, r in zip(left, parts)]),
                    torch.cat([f(r.prompt_mask) for f, r in zip(left, parts)]),
                    torch.cat([f(r.completion_ids) for f, r in zip(right, parts)]),
                    torch.cat([f(r.completion_mask) for f, r in zip(right, parts)]),
                    torch.zeros(sum(r.num_rollouts for r in parts), C), torch.cat([r.truncated for r in parts]),
                    [t for r in parts for t in r.texts], G)


def popo_update(model_dir, start: dict, rollouts: Rollouts, rewards, cfg, *, token_budget: int, step: int = 0):
    """popo's own update on these completions from the models' states `start`: (metrics, gradients)."""
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    models = Models.build(policy, with_target=True, with_reference=False, predictor_width=cfg.predictor_width,
                          predictor_layers=cfg.predictor_layers, device=torch.device("cpu"))
    for name in ("policy", "target", "predictor"):
        getattr(models, name).load_state_dict(start[name])
    # on policy, at temperature 1 and top-p 1, the sampling log-probs are the policy's own
    rollouts.sampling_logprobs = sequence_logprobs(models.policy, rollouts, 100_000)
    algorithm, positive = get_algorithm("popo"), rewards > cfg.reward_threshold
    credit = algorithm.credit(rewards, rollouts.mean_logprobs, rollouts.lengths.float(), G, cfg)
    seeds = torch.tensor([row_seed(stream_seed(0, step, NOISE_STREAM), i) for i in range(rollouts.num_rollouts)])
    optimizer = torch.optim.SGD(models.trainable_parameters(), lr=0.0)
    metrics = update_policy(models, optimizer, algorithm, cfg, rollouts.select(positive), credit[positive],
                            positive[positive], max_length=8, token_budget=token_budget, grad_clip=0.0,
                            row_seeds=seeds[positive])
    grads = {f"policy.{n}": p.grad for n, p in models.policy.named_parameters()}
    grads |= {f"predictor.{n}": p.grad for n, p in models.predictor.named_parameters()}
    return metrics, grads


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ---------------------------------------------------------------- the same math as popo's own trainer
@pytest.mark.parametrize("accumulation,token_budget", [(1, 100_000), (3, 40)])
def test_loss_and_gradients_equal_popo_update(model_dir, tmp_path, one_thread, accumulation, token_budget):
    trainer = make_trainer(model_dir, make_config(tmp_path, accumulation=accumulation, max_steps=2))
    capture = Capture(trainer)
    trainer.train()
    for step, seen in enumerate(capture.steps):  # the second starts from a moved policy, predictor and target
        assert 0 < int((seen["rewards"] > 0).sum()) < ROWS  # positives and negatives both present
        metrics, grads = popo_update(model_dir, seen["start"], to_rollouts(seen["outputs"]), seen["rewards"],
                                     trainer.popo.cfg, token_budget=token_budget, step=step)
        assert metrics["micro_batches"] > 1 or accumulation == 1
        assert capture.logs[step]["popo/loss"] == pytest.approx(metrics["loss"], abs=1e-6)
        assert capture.logs[step]["popo/nll"] == pytest.approx(metrics["nll"], abs=1e-6)
        assert max(float(g.abs().max()) for g in grads.values()) > 1e-3  # a gradient worth comparing
        assert max_difference(seen["grads"], grads) < 1e-6


def test_only_positives_are_forwarded_with_gradient(model_dir, tmp_path, one_thread):
    trainer = make_trainer(model_dir, make_config(tmp_path, accumulation=3))
    forwarded: list[tuple] = []

    def record(module, args, kwargs):  # every decoder call with gradient: the real tokens of each row
        if torch.is_grad_enabled():
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"].bool()
            forwarded.extend(tuple(row[keep].tolist()) for row, keep in zip(ids, mask))

    hook = trainer.model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    trainer.train()
    hook.remove()
    outputs, rewards = trainer.popo.generation
    ids, attention, _ = to_rollouts(outputs).sequences()
    positives = [tuple(ids[i][attention[i].bool()].tolist()) for i in (rewards > 0).nonzero().flatten().tolist()]
    assert 0 < len(positives) < ROWS
    assert sorted(forwarded) == sorted(positives)


# ---------------------------------------------------------------- resume, TRL's own loss types
def final_state(trainer) -> dict[str, torch.Tensor]:
    models = trainer.popo.models
    target = (dict(zip(models.target.names, models.target.shadow)) if isinstance(models.target, AdapterEMA)
              else models.target.state_dict())
    state = {f"policy.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    state |= {f"target.{k}": v.clone() for k, v in target.items()}
    return state | {f"predictor.{k}": v.clone() for k, v in models.predictor.state_dict().items()}


@pytest.mark.parametrize("lora", [False, True])
def test_resumed_checkpoint_continues_identically(model_dir, tmp_path, one_thread, lora):
    settings = dict(max_steps=3, save_strategy="steps", save_steps=1, popo_tau=0.5)
    peft = dict(peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])) if lora else {}
    straight = make_trainer(model_dir, make_config(tmp_path / "a", **settings), **peft)
    straight.train()
    assert isinstance(straight.popo.models.target, AdapterEMA) == lora
    saved = load_file(tmp_path / "a" / "checkpoint-1" / "popo" / "target.safetensors")
    assert all("lora_" in k for k in saved) == lora  # with PEFT the target holds the adapters only
    resumed = make_trainer(model_dir, make_config(tmp_path / "b", **settings), **peft)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))
    a, b = final_state(straight), final_state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    initial = final_state(make_trainer(model_dir, make_config(tmp_path / "c", **settings), **peft))
    for part in ("policy.", "target.", "predictor."):  # every part moved, so the comparison means something
        assert any(not torch.equal(a[k], initial[k]) for k in a if k.startswith(part)), part


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_other_loss_types_run_trl_code(model_dir, tmp_path, one_thread, loss_type):
    from trl import GRPOConfig, GRPOTrainer

    results = []
    for trainer_cls, config_cls in ((GRPOTrainer, GRPOConfig), (POPOTrainer, POPOConfig)):
        trainer = make_trainer(model_dir, make_config(tmp_path / trainer_cls.__name__, config_cls, loss_type=loss_type,
                                                      accumulation=3, max_steps=2), cls=trainer_cls)
        trainer.train()
        assert trainer_cls is GRPOTrainer or trainer.popo is None
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        results.append((losses, {k: v.clone() for k, v in trainer.model.state_dict().items()}))
    (trl_losses, trl_weights), (our_losses, our_weights) = results
    assert trl_losses == our_losses and len(trl_losses) == 2
    assert all(torch.equal(trl_weights[k], our_weights[k]) for k in trl_weights)


# ---------------------------------------------------------------- settings, import, launcher
def test_settings_popo_cannot_honour_are_errors(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="popo_tau must be in"):
        make_config(tmp_path, popo_tau=1.5)
    with pytest.raises(ConfigError, match="beta=0.04 is not supported with loss_type='popo'"):
        make_config(tmp_path, beta=0.04)
    with pytest.raises(ConfigError, match="steps_per_generation=2 must equal gradient_accumulation_steps=1"):
        make_config(tmp_path, steps_per_generation=2, rows=6)
    assert make_config(tmp_path, vllm_importance_sampling_correction=True).vllm_importance_sampling_correction is False
    from trl import GRPOConfig

    with pytest.raises(ConfigError, match="loss_type='popo' needs a POPOConfig"):
        make_trainer(model_dir, make_config(tmp_path, GRPOConfig, loss_type="popo"))


def test_popo_never_imports_trl_and_names_the_extra():
    code = ("import sys, popo, popo.integrations\nassert 'trl' not in sys.modules\nsys.modules['trl'] = None\n"
            "try:\n    import popo.integrations.trl\nexcept ImportError as err:\n    print(err)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pip install 'popo[trl]'" in done.stdout


def test_launcher_reads_a_recipe(model_dir, tmp_path, one_thread, capsys):
    from popo.integrations.trl.__main__ import main

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(f'{{"problem": "{i}+{i}", "answer": "{2 * i}"}}\n' for i in range(12)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""model_name_or_path: {model_dir}
train_file: {data}
template: plain
rewards: [{__name__}.text_reward]
num_generations: {G}
per_device_train_batch_size: 8
max_completion_length: 8
max_steps: 1
use_cpu: true
bf16: false
gradient_checkpointing: false
report_to: none
save_strategy: "no"
output_dir: {tmp_path / "out"}
popo_tua: 0.5
""")
    assert main(["--config", str(recipe)]) == 2
    assert f"{recipe}:15: unknown key 'popo_tua' (did you mean 'popo_tau'?)" in capsys.readouterr().err
    recipe.write_text(recipe.read_text().replace("popo_tua", "popo_tau"))
    assert main(["--config", str(recipe), "--logging_steps", "1"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.slow
def test_benchmark_runs(tmp_path, monkeypatch):
    """benchmarks/trl_step_time.py end to end at the smallest settings (no timing asserted)."""
    import importlib

    monkeypatch.setenv("POPO_BENCH_CACHE", str(tmp_path / "models"))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    out = tmp_path / "trl_step_time"
    assert importlib.import_module("trl_step_time").main([
        "--models", "0.3m", "--frameworks", "trl-grpo", "trl-popo-paper", "--steps", "2", "--repeats", "1",
        "--prompts", "2", "--group", "2", "--max-new-tokens", "3", "--out", str(out)]) == 0
    rows = {r["framework"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert rows["trl-popo-paper"]["speedup_vs_grpo"] > 0 and rows["trl-grpo"]["train_s"] > 0


# ---------------------------------------------------------------- two processes (gloo) = one process
def worker(out: Path, model_dir: Path) -> None:
    """One process of the two-process run: two steps, the second process without any positive in the
    first; saves what `Capture` saw."""
    from accelerate import PartialState

    calls: list[int] = []

    def reward(prompts, completions, **kwargs) -> list[float]:
        calls.append(1)
        silent = PartialState().process_index == 1 and len(calls) == 1
        return [0.0] * len(completions) if silent else text_reward(prompts, completions)

    torch.set_num_threads(1)
    trainer = make_trainer(model_dir, make_config(out / "run", accumulation=2, rows=8, max_steps=2), reward=reward)
    capture = Capture(trainer)
    trainer.train()
    torch.save({"steps": capture.steps, "logs": capture.logs}, out / f"rank{trainer.accelerator.process_index}.pt")


@pytest.mark.slow
def test_two_processes_equal_one(model_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes=2",
           "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", f"--main_process_port={port}",
           __file__, str(tmp_path), str(model_dir)]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    first, second = ([rank["steps"][step] for rank in ranks] for step in (0, 1))
    assert not (first[1]["rewards"] > 0).any()  # the second process had nothing to train on in step 1
    assert all((seen["rewards"] > 0).any() for seen in (first[0], *second))
    cfg = make_config(tmp_path / "cfg").popo_algo()
    for step, seen in enumerate((first, second)):
        assert max_difference(seen[0]["start"]["predictor"], seen[1]["start"]["predictor"]) == 0.0
        rollouts = concat([to_rollouts(rank["outputs"]) for rank in seen])
        rewards = torch.cat([rank["rewards"] for rank in seen])
        metrics, grads = popo_update(model_dir, seen[0]["start"], rollouts, rewards, cfg, token_budget=100_000,
                                     step=step)
        for rank in seen:  # each process holds the one-process gradient of the whole batch
            assert max_difference(rank["grads"], grads) < 1e-6
        assert ranks[0]["logs"][step]["popo/loss"] == pytest.approx(metrics["loss"], abs=1e-6)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]))


@pytest.mark.parametrize("sampled", [True, False], ids=["vllm-logprobs", "generate"])
def test_plans_weight_sum_is_the_credit_sum(sampled):
    """W is counted as the prompts with a positive, because with `generate` the weights come from the forward
    pass (after planning); each prompt's weights sum to one over its positives, so the count is the credit sum
    (softmax weights: up to rounding)."""
    from popo.config import AlgoConfig
    from popo.distributed import Dist
    from popo.integrations.trl.batches import plan

    gen = torch.Generator().manual_seed(0)
    n, width = 3 * G, 5
    mask = torch.rand(n, width, generator=gen) > 0.3
    mask[:, 0] = True
    outputs = {"prompt_ids": torch.ones(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2, dtype=torch.long),
               "completion_ids": torch.randint(3, 9, (n, width), generator=gen), "completion_mask": mask.long()}
    if sampled:
        outputs["sampling_per_token_logps"] = -torch.rand(n, width, generator=gen)
    rewards = torch.tensor([1.0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0])  # the middle prompt has no positive
    cfg = AlgoConfig(name="popo", weight_mode="softmax")
    batches, counts = plan(outputs, rewards, group_size=G, algorithm=get_algorithm("popo"), cfg=cfg, parts=2,
                           dist=Dist(), seed=0, step=0, first_row=0)
    totals = batches[0].totals
    assert totals.weight_sum == counts["prompts_with_positive"] == 2.0
    if sampled:
        credit = torch.cat([b.credit[b.positive] for b in batches])
        assert float(credit.sum()) == pytest.approx(totals.weight_sum, abs=1e-6)
    assert totals.positive_tokens == int(mask[rewards > 0].sum())
