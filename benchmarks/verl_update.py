"""verl's actor update alone on CPU: GRPO on every row (verl's own FSDP2 engine, its built-in ``vanilla``
PPO-clip loss, GRPO advantages) against POPO on the positives (`popo.integrations.verl.engine.POPOFSDPEngine`:
positives forwarded and back-propagated, plus the EMA target's no-grad forward, the predictor and its step).

Timed: one mini-batch's training phase as verl's `Engine.train_batch` runs it, `optimizer_zero_grad` +
`forward_backward_batch` (all micro-batches) + `optimizer_step` (for POPO also the predictor's step and the
EMA update); not generation, old log-probs or advantages. Both arms get the same rows (random token ids, a
short prompt and a fixed-length response, G rollouts per prompt) and the same micro-batch token budget
(verl's ``use_dynamic_bsz``). For each p exactly round(p * rows) rows are positive, dealt round-robin over
the groups. GRPO's advantages are verl's `compute_grpo_outcome_advantage` on the rewards of
``--grpo-fraction`` (its work does not depend on which rows are correct: all rows are forwarded, the loss
covers every token), its old log-probs one untimed forward of the initial policy; POPO's weights come from
popo's ``"popo"`` estimator. Rows: 2 prompts x G = 10 = 20 (not 128): GRPO costs about 0.8 s per 512-token
row on one thread here, and G = 10 makes p = 0.1, 0.3, 0.6 exact in every group, so no group is all-negative.

Forward pre-hooks on each engine's decoder count the rows forwarded with gradient and, for POPO, the rows
and seconds of the EMA target's no-grad forward. Arms are interleaved (GRPO, POPO p=0.1, ...; the order
reversed every other round) after one untimed warm-up round; medians are reported and the ratio POPO / GRPO
is taken per round, then the median. The goal (from the issue): POPO <= (p + 0.1) x GRPO.

Padded forward by default (``use_remove_padding=False``; rows have equal lengths, so nothing is padded).
verl's packed forward (``--packed``) has no varlen attention kernel on CPU: transformers builds a block-
diagonal mask over the whole micro-batch for SDPA, so attention grows with the square of the micro-batch's
tokens instead of each row's (GRPO about 1.7x slower in a probe), unlike the GPU kernels.

    OMP_NUM_THREADS=1 PYTHONPATH=.verl .venv/bin/python benchmarks/verl_update.py   # ~4 min
    OMP_NUM_THREADS=1 PYTHONPATH=.verl .venv/bin/python benchmarks/verl_update.py --quick --no-write
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import common  # noqa: E402
from scaling_cells import SHAPES  # noqa: E402

QUICK_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128)


# ---------------------------------------------------------------- model and rows
def write_model(folder: Path, name: str, positions: int) -> int:
    """A random Qwen2 of benchmarks/scaling_cells.py's shape `name` (``quick``: a tiny one) on the testbed's
    character tokenizer, saved in `folder` (where verl loads it from); returns the vocabulary size."""
    from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
    from popo.testbed.tokenizer import build_tokenizer

    s = SHAPES.get(name)
    shape = QUICK_SHAPE if s is None else dict(hidden_size=s.hidden, num_hidden_layers=s.layers,
                                               num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                                               intermediate_size=s.intermediate)
    spec = TinyModelSpec(**shape, max_position_embeddings=positions)
    tokenizer = build_tokenizer()
    build_tiny_qwen2(tokenizer, spec, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def random_rows(n: int, prompt_tokens: int, response_tokens: int, vocab: int, seed: int = 0):
    """`n` (prompt, response) token-id lists, uniform over the vocabulary (id 0, the pad, left out)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, prompt_tokens + response_tokens), generator=g)
    return [r[:prompt_tokens].tolist() for r in ids], [r[prompt_tokens:].tolist() for r in ids]


def dealt_rewards(prompts: int, group: int, fraction: float):
    """[prompts * group] rewards with exactly round(fraction * rows) ones, dealt round-robin over the groups
    (group b gets the j-th positive when j % prompts == b), rows of a group adjacent."""
    rewards = torch.zeros(prompts, group)
    for j in range(round(fraction * prompts * group)):
        rewards[j % prompts, j // prompts] = 1.0
    return rewards.flatten()


def row_advantages(kind: str, rewards, group: int, old_logprobs, popo_settings: dict) -> list[float]:
    """Per-row advantages of adjacent groups of `group` rows from an outcome reward on each row's last token:
    ``grpo``, verl's own estimator; ``popo``, popo's ``"popo"`` estimator (softmax mode reads the old log-probs)."""
    import numpy as np
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    from popo.integrations.verl.advantage import popo_advantage

    n, length = old_logprobs.shape
    token_rewards, mask, index = torch.zeros(n, length), torch.ones(n, length), [row // group for row in range(n)]
    token_rewards[:, -1] = rewards
    if kind == "grpo":
        adv, _ = compute_grpo_outcome_advantage(token_rewards, mask, np.array(index, dtype=object))
    else:
        adv, _ = popo_advantage(token_rewards, mask, index, config={"popo": popo_settings}, old_log_probs=old_logprobs)
    return adv[:, 0].tolist()  # the same value on every response token


def initial_logprobs(model_dir: str, prompts, responses, chunk: int = 8):
    """[n, R] log-probs of each response token under the initial policy (GRPO's old log-probs)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    p = len(prompts[0])
    ids = torch.tensor([a + b for a, b in zip(prompts, responses)])
    out = []
    with torch.no_grad():
        for start in range(0, ids.shape[0], chunk):
            part = ids[start:start + chunk]
            logits = model(input_ids=part).logits[:, p - 1:-1].float()
            out.append(logits.log_softmax(-1).gather(-1, part[:, p:, None]).squeeze(-1))
    return torch.cat(out)


# ---------------------------------------------------------------- arms
class Arm:
    """One timed configuration: an engine, its loss function and its batch (rebuilt before each call, since
    the engines write settings into the batch they are handed)."""

    def __init__(self, name: str, fraction: float, engine, loss_fn, make_batch):
        self.name, self.fraction, self.engine, self.loss_fn = name, fraction, engine, loss_fn
        self.make_batch = make_batch
        self._hooks = [engine.module.get_decoder().register_forward_pre_hook(self._count_policy, with_kwargs=True)]
        target = getattr(engine, "target", None)
        if target is not None:
            decoder = target.get_decoder()
            self._hooks += [decoder.register_forward_pre_hook(self._target_start, with_kwargs=True),
                            decoder.register_forward_hook(self._target_end)]

    @staticmethod
    def _rows(kwargs) -> int:
        positions = kwargs["position_ids"]  # packed: [1, tokens], one 0 per row; padded: [rows, L]
        return int((positions == 0).sum()) if positions.shape[0] == 1 else int(positions.shape[0])

    def _count_policy(self, _module, _args, kwargs):
        self.policy_rows += self._rows(kwargs) if torch.is_grad_enabled() else 0

    def _target_start(self, _module, _args, kwargs):
        self.target_rows += self._rows(kwargs)
        self._clock = time.perf_counter()

    def _target_end(self, *_):
        self.target_s += time.perf_counter() - self._clock

    def run(self) -> dict:
        """One mini-batch update (train_batch's three calls, each timed), then the trainer's scheduler step."""
        data = self.make_batch()
        self.policy_rows, self.target_rows, self.target_s = 0, 0, 0.0
        with common.Clock() as total:
            self.engine.optimizer_zero_grad()
            with common.Clock() as fb:
                out = self.engine.forward_backward_batch(data, self.loss_fn)
            with common.Clock() as step:
                self.engine.optimizer_step()
        self.engine.lr_scheduler_step()
        return {"wall": total.wall, "cpu": total.cpu, "forward_backward": fb.wall, "optimizer_step": step.wall,
                "target_forward": self.target_s, "policy_rows": self.policy_rows, "target_rows": self.target_rows,
                "micro_batches": len(out["loss"]) if "loss" in out else None}


def loss_function(mode: str, args, entropy_coeff: float):
    """verl's `ppo_loss` bound to an actor config, as verl's actor worker binds it."""
    from verl.workers.config import FSDPActorConfig
    from verl.workers.utils.losses import ppo_loss

    config = FSDPActorConfig(rollout_n=args.group, ppo_mini_batch_size=args.prompts, use_dynamic_bsz=True,
                             ppo_max_token_len_per_gpu=args.micro_batch_tokens, entropy_coeff=entropy_coeff,
                             policy_loss={"loss_mode": mode}, loss_agg_mode="token-mean")
    return functools.partial(ppo_loss, config=config)


def build_arms(args, model_dir: str, vocab: int) -> tuple[list[Arm], dict]:
    import verl_cpu
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    from popo.integrations.verl.engine import POPOFSDPEngine
    from popo.integrations.verl.settings import POPOVerlConfig

    n = args.prompts * args.group
    prompts, responses = random_rows(n, args.prompt_tokens, args.response_tokens, vocab)
    old = initial_logprobs(model_dir, prompts, responses)
    popo_settings = {"alpha": args.alpha}
    algo = POPOVerlConfig.from_mapping(popo_settings)
    common_settings = dict(lr=args.lr, clip_grad=1.0, total_steps=1000, optimizer="AdamW")

    def batch(weights, calculate_entropy: bool, old_logprobs=None):
        def make():
            data = verl_cpu.verl_batch(prompts, responses, weights, max_tokens=args.micro_batch_tokens,
                                       remove_padding=args.packed)
            if old_logprobs is not None:
                data["old_log_probs"] = old_logprobs.clone()
            tu.assign_non_tensor(data, calculate_entropy=calculate_entropy, global_batch_size=n)
            return data
        return make

    grpo_engine = FSDPEngineWithLMHead(*verl_cpu.engine_settings(model_dir, **common_settings))
    grpo_engine.initialize()
    grpo_rewards = dealt_rewards(args.prompts, args.group, args.grpo_fraction)
    # verl's trainer computes entropy for the actor only when entropy_coeff != 0 (0 is verl's default)
    arms = [Arm("grpo", args.grpo_fraction, grpo_engine, loss_function("vanilla", args, 0.0),
                batch(row_advantages("grpo", grpo_rewards, args.group, old, {}), False, old))]
    popo_loss = loss_function("popo", args, algo.beta)
    for fraction in args.fractions:
        engine = POPOFSDPEngine(*verl_cpu.engine_settings(model_dir, popo=popo_settings, **common_settings))
        engine.initialize()
        weights = row_advantages("popo", dealt_rewards(args.prompts, args.group, fraction), args.group, old,
                                 popo_settings)
        arms.append(Arm(f"popo p={fraction:g}", fraction, engine, popo_loss, batch(weights, True)))
    params = sum(p.numel() for p in grpo_engine.module.parameters())
    predictor = sum(p.numel() for p in arms[-1].engine.predictor.parameters()) if arms[-1].engine.predictor else 0
    info = {"rows": n, "policy_params": int(params), "predictor_params": int(predictor),
            "popo_settings": {k: getattr(algo, k) for k in ("alpha", "beta", "tau", "noise_std", "predictor_width",
                                                             "predictor_layers", "weight_mode")},
            "positives": {f"{f:g}": int(dealt_rewards(args.prompts, args.group, f).sum()) for f in args.fractions},
            "torch_threads": torch.get_num_threads()}
    return arms, info


# ---------------------------------------------------------------- run and report
def summarise(samples: dict[str, list[dict]], arms: list[Arm]) -> list[dict]:
    base = samples["grpo"]
    grpo_wall = statistics.median(r["wall"] for r in base)
    rows = []
    for arm in arms[1:]:
        runs = samples[arm.name]
        rows.append({
            "p": arm.fraction, "grpo_s": grpo_wall, "popo_s": statistics.median(r["wall"] for r in runs),
            "ratio": statistics.median(r["wall"] / b["wall"] for r, b in zip(runs, base)),
            "ratio_cpu": statistics.median(r["cpu"] / b["cpu"] for r, b in zip(runs, base)),
            "goal": round(arm.fraction + 0.1, 3),
            "grpo_rows": base[0]["policy_rows"], "popo_rows": runs[0]["policy_rows"],
            "popo_target_rows": runs[0]["target_rows"],
            "popo_target_s": statistics.median(r["target_forward"] for r in runs),
            "popo_step_s": statistics.median(r["optimizer_step"] for r in runs),
            "grpo_step_s": statistics.median(r["optimizer_step"] for r in base),
            "grpo_micro_batches": base[0]["micro_batches"], "popo_micro_batches": runs[0]["micro_batches"],
        })
    return rows


COLUMNS = ["p", "GRPO median s", "POPO median s", "ratio POPO/GRPO", "goal p + 0.1", "rows forwarded GRPO / POPO",
           "POPO target-forward rows", "micro-batches GRPO / POPO", "POPO target forward s",
           "optimizer step s GRPO / POPO"]


def _cells(r: dict) -> list:
    return [r["p"], round(r["grpo_s"], 2), round(r["popo_s"], 2), round(r["ratio"], 3), r["goal"],
            f"{r['grpo_rows']} / {r['popo_rows']}", r["popo_target_rows"],
            f"{r['grpo_micro_batches']} / {r['popo_micro_batches']}", round(r["popo_target_s"], 2),
            f"{r['grpo_step_s']:.3f} / {r['popo_step_s']:.3f}"]


def versions() -> dict[str, str]:
    """The versions of the modules this process imported (PYTHONPATH may put verl's ahead of popo's)."""
    import tensordict
    import transformers
    import verl

    return {"python": common.versions()["python"],
            **{m.__name__: getattr(m, "__version__", "?") for m in (torch, transformers, verl, tensordict)}}


def reading(result: dict) -> str:
    """A plain-words reading of the table, written from the numbers (so it holds whichever way they fall)."""
    rows = result["rows"]
    joined = lambda values: ", ".join(values)  # noqa: E731
    missed = [f"p = {r['p']:g}" for r in rows if r["ratio"] > r["goal"]]
    verdict = ("the goal POPO <= (p + 0.1) x GRPO is met at every p" if not missed else
               "the goal POPO <= (p + 0.1) x GRPO is missed at every p" if len(missed) == len(rows) else
               f"the goal POPO <= (p + 0.1) x GRPO is missed at {joined(missed)} and met elsewhere")
    per_row = [r["ratio"] * r["grpo_rows"] / max(1, r["popo_rows"]) for r in rows]
    pct = lambda key: [100 * r[key] / r["popo_s"] for r in rows]  # noqa: E731
    target, step = pct("popo_target_s"), pct("popo_step_s")
    low = rows[0]
    extra = [r["ratio"] - r["popo_rows"] / r["grpo_rows"] for r in rows]
    grows = all(b >= a for a, b in zip(extra, extra[1:]))
    bare = [(r["popo_s"] - r["popo_target_s"]) / r["grpo_s"] for r in rows]
    k = statistics.median(per_row)  # POPO's cost per forwarded row over GRPO's
    out = [
        f"POPO's policy forwarded only the positives ({joined(str(r['popo_rows']) for r in rows)} of "
        f"{rows[0]['grpo_rows']} rows; GRPO forwarded all {rows[0]['grpo_rows']}), and its update took "
        f"{joined(format(r['ratio'], '.2f') for r in rows)} of GRPO's time at "
        f"p = {joined(format(r['p'], 'g') for r in rows)}: {verdict} (goal minus ratio: "
        f"{joined(format(r['goal'] - r['ratio'], '+.2f') for r in rows)}).",
        f"Per row forwarded, POPO's update costs {min(per_row):.2f}-{max(per_row):.2f} x GRPO's. The EMA "
        f"target's no-grad forward over the same positives is {min(target):.0f}-{max(target):.0f}% of POPO's "
        f"time and the optimizer step (policy, predictor, EMA update) {min(step):.0f}-{max(step):.0f}%.",
        f"The ratio minus the share of rows forwarded is {joined(format(x, '+.2f') for x in extra)}, against "
        "the goal's allowance of +0.1" + ("; it grows with p, as the target forward does." if grows else "."),
        f"Without the target forward's measured seconds the ratios would be {joined(format(x, '.2f') for x in bare)}"
        f", and at p = {low['p']:g} the optimizer step is {step[0]:.0f}% of POPO's time ({low['popo_step_s']:.2f} s;"
        f" GRPO's {low['grpo_step_s']:.2f} s).",
        f"At {k:.2f} x GRPO's cost per row (the median over p), POPO would meet the goal " + (
            f"up to about p = 0.1 / ({k:.2f} - 1) = {0.1 / (k - 1):.2f}." if k > 1 else "at every p."),
        "Seconds come from CPU cores shared with another job; the ratios, taken round by round from "
        "interleaved runs, are the numbers to read.",
    ]
    return " ".join(out)


def render_markdown(result: dict) -> str:
    s, info = result["settings"], result["info"]
    shape = "benchmarks/scaling_cells.py's shape" if s["model"] in SHAPES else "a smoke-test shape"
    lines = common.header("verl's actor update on CPU: GRPO on all rows against POPO on the positives", result)
    lines += [
        f"This benchmark ran on one thread (torch threads {info['torch_threads']}) while other jobs used the same "
        f"{result['machine']['nproc']} cores (see the load averages): absolute seconds depend on their load; the "
        "ratios within this one interleaved run are what to read.",
        "",
        f"Model: random Qwen2 `{s['model']}` ({info['policy_params'] / 1e6:.2f} M parameters, {shape}), fp32, "
        f"FSDP2 on one gloo process. Mini-batch: {s['prompts']} prompts x G = {s['group']} = {info['rows']} rows "
        f"of {s['prompt_tokens']} prompt + {s['response_tokens']} response tokens (random ids, the same for both "
        f"arms); micro-batch budget {s['micro_batch_tokens']} tokens (verl's dynamic batch size) for both; "
        f"{'packed' if s['packed'] else 'padded'} forward; AdamW, lr {s['lr']}, clip 1.0. Positives per p: "
        f"{info['positives']}, dealt over the groups. GRPO: verl's `FSDPEngineWithLMHead`, `vanilla` loss, "
        f"GRPO advantages on the rewards of p = {s['grpo_fraction']}, old log-probs of the initial policy, no "
        f"entropy term (verl's default entropy_coeff 0). POPO: `POPOFSDPEngine`, settings "
        f"{info['popo_settings']} (predictor {info['predictor_params']} parameters). Timed: zero_grad + "
        f"forward_backward_batch + optimizer_step; median of {s['repeats']} interleaved rounds after one "
        f"untimed warm-up round (whole run {result['wall_s']:.0f} s).",
        "",
        *common.table(COLUMNS, [_cells(r) for r in result["rows"]]),
        "",
        "Rows forwarded: rows the policy's decoder saw with gradient (a forward pre-hook). POPO's EMA target "
        "runs a no-grad forward over the same rows; its seconds are part of POPO's time. GRPO's median is the "
        "same in every row (one GRPO arm); the ratio is taken per round, then the median (CPU-time ratio, the "
        "same way: " + ", ".join(f"p = {r['p']:g}: {r['ratio_cpu']:.3f}" for r in result["rows"]) + ").",
        "",
        "## Reading",
        "",
        result["reading"],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(SHAPES), default="10m")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=10, help="G = 10: p = 0.1, 0.3, 0.6 exact in every group")
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--response-tokens", type=int, default=512)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.6])
    parser.add_argument("--grpo-fraction", type=float, default=0.3, help="the rewards GRPO's advantages are from")
    parser.add_argument("--micro-batch-tokens", type=int, default=4096)
    parser.add_argument("--alpha", type=float, default=0.1, help="POPO's similarity weight (0: no EMA target)")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--packed", action="store_true", help="verl's packed (remove-padding) forward")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (plus one warm-up round)")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "verl_update")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.prompts, args.group, args.response_tokens = "quick", 1, 10, 32
        args.micro_batch_tokens, args.repeats = 80, 1
    import verl_cpu

    torch.set_num_threads(1)
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    verl_cpu.use_cpu()
    verl_cpu.join_group(0, 1, verl_cpu.free_port())
    with tempfile.TemporaryDirectory(prefix="bench-verl-update-") as scratch:
        vocab = write_model(Path(scratch), args.model, max(1152, args.prompt_tokens + args.response_tokens))
        arms, info = build_arms(args, scratch, vocab)
        samples: dict[str, list[dict]] = {arm.name: [] for arm in arms}
        for rep in range(args.repeats + 1):  # round 0 warms every arm up and is dropped
            for arm in (arms if rep % 2 == 0 else arms[::-1]):
                result = arm.run()
                print(f"round {rep} {arm.name:10} {result['wall']:7.2f} s  policy rows {result['policy_rows']:4}"
                      f"  target {result['target_forward']:.2f} s", flush=True)
                if rep > 0:
                    samples[arm.name].append(result)
    rows = summarise(samples, arms)
    omp = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    result = {"command": omp + common.command_line(), "loadavg_before": load_before, "machine": common.machine(),
              "versions": versions(), "wall_s": time.perf_counter() - start,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                           if k not in ("out", "no_write")},
              "info": info, "rows": rows, "samples": samples}
    result["reading"] = reading(result)
    print("\n".join(common.table(COLUMNS, [_cells(r) for r in rows])))
    common.write_result("verl_update", result, render_markdown(result), None if args.no_write else args.out)
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
