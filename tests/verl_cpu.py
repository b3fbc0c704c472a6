"""verl 0.9.1's FSDP2 engine on CPU, for tests: a CPU platform, a tiny Qwen2 with its engine settings, batches
in the layout verl's trainer hands the actor, and a launcher for a few gloo processes.

verl picks its device from a platform object (`verl.plugin.platform`) and has none for CPU; `use_cpu()`
installs one (gloo, device "cpu") before any engine module is imported, and stops verl's model patching from
importing a TRL class this TRL release no longer has. `use_cpu()` must run in every process before verl's
engine modules are imported; it changes nothing else. Nothing happens at import.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=64, max_position_embeddings=64)
"""The tiny Qwen2's shape: about 20 k parameters, so a step takes milliseconds on one thread."""


def _cpu_platform_class():
    from verl.plugin.platform.platform_base import PlatformBase

    class CPUPlatform(PlatformBase):
        """verl's device interface answered for the CPU: device "cpu", collectives over gloo."""

        device_name = "cpu"
        vendor_name = "cpu"
        device_module = torch.cpu

        def is_available(self):
            return False  # no accelerator: verl then keeps the CPU RNG state once, under "cpu", in checkpoints

        def current_device(self):
            return "cpu"  # verl moves tensors with `.to(get_device_id())`

        def device_count(self):
            return 1

        def set_device(self, device_index):
            pass

        def synchronize(self, device_index=None):
            pass

        def manual_seed(self, seed):
            torch.manual_seed(seed)

        def manual_seed_all(self, seed):
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings):
            pass

        def empty_cache(self):
            pass

        def get_device_capability(self, device_index=0):
            return None, None

        def communication_backend_name(self):
            return "gloo"

        def visible_devices_envvar(self):
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg):
            yield

        def profiler_start(self):
            pass

        def profiler_stop(self):
            pass

        def ray_resource_name(self):
            return "CPU"

        def ray_noset_envvars(self):
            return []

        def is_ipc_supported(self):
            return False

        def cudart(self):
            return None

    return CPUPlatform


def use_cpu():
    """Make verl run on the CPU in this process: the CPU platform, and verl's monkey patch kept from importing
    TRL's removed value-head class. Returns a function that puts both back (idempotent either way)."""
    from verl.plugin.platform import platform_manager
    import verl.models.transformers.monkey_patch as monkey_patch

    previous = (platform_manager._current_platform, monkey_patch.is_trl_available)
    if getattr(previous[0], "device_name", None) != "cpu":
        platform_manager.set_platform(_cpu_platform_class()())
    monkey_patch.is_trl_available = lambda: False  # only the value-head state_dict patch reads it

    def undo() -> None:
        platform_manager._current_platform, monkey_patch.is_trl_available = previous

    return undo


def register_cpu_engines() -> None:
    """verl's own LM-head engine for device "cpu" (verl registers it for cuda and npu only) and POPO's engine
    through `register_engine()`, which keys it on this platform's vendor (looked up first)."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    from popo.integrations.verl.engine import register_engine

    table = EngineRegistry._engines.get("language_model", {})
    if "cpu" not in table.get("fsdp2", {}):
        EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cpu")(
            FSDPEngineWithLMHead)
    register_engine()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world: int, port: int) -> None:
    """This process's gloo process group (verl's engine reads rank and world size from it); no environment
    variable is set, so the process is otherwise left as it was."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def write_tiny_model(folder: Path, seed: int = 0) -> str:
    """A tiny Qwen2 and popo's testbed tokenizer saved as a Hugging Face folder (what verl loads)."""
    from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
    from popo.testbed.tokenizer import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "config.json").exists():
        tokenizer = build_tokenizer()
        build_tiny_qwen2(tokenizer, TinyModelSpec(**TINY), seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def engine_settings(model_dir: str, *, popo: dict | None = None, lr: float = 1e-2, clip_grad: float = 1.0,
                    total_steps: int = 10, optimizer: str = "AdamW"):
    """(model, engine, optimizer, checkpoint) configs for the tiny model: fp32 throughout, FSDP2, SDPA
    attention over packed rows, verl's `optimizer` (a torch.optim class) for the policy; `popo` None gives
    verl's plain engine config."""
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig

    from popo.integrations.verl.engine import POPOEngineConfig

    model = HFModelConfig(path=model_dir, override_config={"attn_implementation": "sdpa"}, use_remove_padding=True)
    fp32 = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
    common = dict(strategy="fsdp2", use_torch_compile=False, model_dtype="fp32", mixed_precision=fp32)
    engine = FSDPEngineConfig(**common) if popo is None else POPOEngineConfig(**common, popo=dict(popo))
    optim = FSDPOptimizerConfig(lr=lr, clip_grad=clip_grad, total_training_steps=total_steps, weight_decay=0.01,
                                optimizer=optimizer)
    return model, engine, optim, CheckpointConfig()


def build_engine(model_dir: str, **settings):
    """An initialised POPO engine (`settings`: `engine_settings`' keywords)."""
    from popo.integrations.verl.engine import POPOFSDPEngine

    engine = POPOFSDPEngine(*engine_settings(model_dir, **settings))
    engine.initialize()
    return engine


def popo_rollouts(prompts: list[list[int]], completions: list[list[int]]):
    """Rows as popo's own `Rollouts`: prompts left-padded, completions right-padded."""
    from popo.rollout.base import Rollouts

    n, width_p, width_c = len(prompts), max(map(len, prompts)), max(map(len, completions))
    ids_p, ids_c = torch.zeros(n, width_p, dtype=torch.long), torch.zeros(n, width_c, dtype=torch.long)
    mask_p, mask_c = torch.zeros(n, width_p, dtype=torch.bool), torch.zeros(n, width_c, dtype=torch.bool)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        ids_p[row, width_p - len(p):], mask_p[row, width_p - len(p):] = torch.tensor(p), True
        ids_c[row, : len(c)], mask_c[row, : len(c)] = torch.tensor(c), True
    return Rollouts(prompt_ids=ids_p, prompt_mask=mask_p, completion_ids=ids_c, completion_mask=mask_c,
                    sampling_logprobs=torch.zeros(n, width_c), truncated=torch.zeros(n, dtype=torch.bool),
                    texts=[""] * n, group_size=1)


def verl_batch(prompts: list[list[int]], completions: list[list[int]], weights: list[float], *,
               micro_rows: int | None = None, max_tokens: int | None = None, temperature: float = 1.0,
               remove_padding: bool = True):
    """The same rows as the mini-batch verl's trainer hands `update_actor` (after `left_right_2_no_padding`),
    with `advantages` the row's POPO weight on each response token (the "popo" estimator's layout); with
    `max_tokens` micro-batches are planned by tokens (use_dynamic_bsz), else `micro_rows` rows each;
    `remove_padding` picks verl's packed forward or its padded one. Each row also carries per-row entries
    verl's batches have (a ``uid`` and a ``reward_model`` dict), which must follow the row when it is picked."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    rollouts = popo_rollouts(prompts, completions)
    ids, attention, _ = rollouts.sequences()
    mask = rollouts.completion_mask.long()
    data = left_right_2_no_padding(TensorDict({
        "prompts": rollouts.prompt_ids, "responses": rollouts.completion_ids, "input_ids": ids,
        "attention_mask": attention, "position_ids": (attention.cumsum(-1) - 1).clamp_min(0), "response_mask": mask,
        "advantages": torch.tensor(weights, dtype=torch.float32)[:, None] * mask,
        "old_log_probs": torch.zeros(mask.shape),
    }, batch_size=[len(prompts)]))
    tu.assign_non_tensor(data, temperature=temperature, use_remove_padding=remove_padding, use_fused_kernels=False,
                         use_dynamic_bsz=max_tokens is not None, max_token_len_per_gpu=max_tokens or 0,
                         micro_batch_size_per_gpu=micro_rows or len(prompts), calculate_entropy=True)
    tu.assign_non_tensor(data, uid=[f"row-{row}" for row in range(len(prompts))],
                         reward_model=[{"ground_truth": str(row)} for row in range(len(prompts))])
    return data


def full_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's tensors as full CPU tensors (sharded ones gathered: a collective on every rank)."""
    out = {}
    for name, t in module.state_dict().items():
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        out[name] = full.detach().cpu().clone()
    return out


def _child(fn, rank: int, world: int, port: int, args: tuple, errors) -> None:
    try:
        torch.set_num_threads(1)
        use_cpu()
        join_group(rank, world, port)
        fn(rank, world, *args)
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def launch(fn, world: int, *args, timeout: float = 240.0) -> None:
    """Run `fn(rank, world, *args)` in `world` freshly spawned processes joined in one gloo group; raise
    with a child's traceback when one fails, and kill them all when they have not finished `timeout` seconds
    after the start (a hang in a collective fails the test instead of blocking it)."""
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    port = free_port()
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        procs = [ctx.Process(target=_child, args=(fn, rank, world, port, args, errors)) for rank in range(world)]
        for p in procs:
            p.start()
    finally:  # the children have copied the environment: put the parent's back
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    if failures:
        raise RuntimeError("\n".join(f"rank {rank}:\n{tb}" for rank, tb in failures))
    if hung:
        raise TimeoutError(f"{len(hung)} of {world} processes still running after {timeout} s (a hang)")
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"processes exited with {bad}")
