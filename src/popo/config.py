"""Typed configuration: dataclasses whose field docstrings are the help text, YAML files and
`section.key=value` overrides on the command line.

Precedence, lowest first: dataclass defaults < the algorithm preset named by `algo.name` < the YAML file
< command-line overrides. Unknown keys are an error that names the key and suggests the closest one.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from popo.algo_config import AlgoConfig
from popo.config_checks import suggest as _suggest, validate
from popo.errors import ConfigError

HFDecode = Literal["loop", "generate", "generate-static"]
"""The hf engine's decoding paths (`popo.rollout.hf.HFEngine`)."""


@dataclass
class LoraSettings:
    r: int = 0
    """LoRA rank; 0 trains all weights. Needs `peft` (pip install 'popo[lora]')."""
    alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch."""
    target_modules: str = "all-linear"
    """Modules that get adapters: all-linear, or comma-separated names such as q_proj,v_proj."""


@dataclass
class ModelConfig:
    name: str = "testbed"
    """Model to train: `testbed` (the embedded tiny Qwen2, warmed up and cached), a local folder, or a hub id."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype."""
    device: str = "auto"
    """Device: auto (CUDA when available), cpu, cuda, cuda:N."""
    attn_implementation: str | None = None
    """Passed to `from_pretrained` (e.g. sdpa, flash_attention_2); None keeps the library default."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    offload_companions: bool = False
    """Keep the EMA target and the reference model in CPU memory, on the device only during the update."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters (model.lora.r, .alpha, .dropout, .target_modules); the EMA target then tracks them only."""


@dataclass
class DataConfig:
    source: str = "testbed"
    """Training prompts: `testbed`, a .jsonl/.json/.parquet file, or a hub dataset id."""
    split: str = "train"
    """Dataset split for hub sources."""
    template: str = "plain"
    """Prompt template: qwen-math, qwen-boxed, r1, plain, or a string containing {problem}."""
    problem_key: str | None = None
    """Column holding the problem (default: problem, question or prompt)."""
    answer_key: str | None = None
    """Column holding the answer (default: answer, or the last \\boxed{} of solution)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """What to do with a malformed row: error (stop, naming file and line) or skip (count it)."""
    eval_source: str = "auto"
    """Held-out prompts for periodic evaluation: auto (the testbed's validation split when training on the testbed, else none), `testbed` (its validation split), `testbed:test` (its test split), `testbed:NAME` (a split of testbed.reserved), a local file, or a hub id; empty disables."""
    eval_size: int = 500
    """Number of held-out prompts used by periodic evaluation (0 = all)."""
    max_prompt_tokens: int = 512
    """Prompts longer than this are an error (or skipped with on_bad_row=skip)."""


@dataclass
class TestbedConfig:
    task: Literal["addition", "countdown"] = "addition"
    """Testbed task: addition (column-sum scratchpad, one solution) or countdown (reach a target with + - * /, many solutions)."""
    digits: int = 3
    """Addition: digits of each operand in RL and test problems (the warm-up uses 1..digits)."""
    numbers: int = 4
    """Countdown: how many numbers each problem gives (each used exactly once)."""
    max_number: int = 9
    """Countdown: the given numbers lie in 1..max_number (targets in 1..99)."""
    test_size: int = 1000
    """Size of the fixed held-out test split (read only for final tables: data.eval_source=testbed:test)."""
    validation_size: int = 500
    """Size of the validation split (data.eval_source=testbed: training-time evaluation, sweeps, tuning)."""
    train_size: int = 20000
    """Number of RL prompts (countdown: at most the size of its RL-train split)."""
    reserved: str = ""
    """Countdown: held-out splits carved from the end of the RL-train split and never trained on, as `name:size,...` (e.g. `demo:500,v4-test:2000`); `data.eval_source=testbed:NAME` reads one. Each name keeps its problems whatever names follow it; the warm-up split and the warm start are unchanged."""
    warmup_steps: int = 700
    """Supervised warm-up steps (`popo sft`)."""
    warmup_batch: int = 128
    """Examples per warm-up step."""
    warmup_lr: float = 3e-3
    """Warm-up peak learning rate."""
    cache_dir: str = ".cache/popo"
    """Where the built and warmed-up testbed model is cached."""


@dataclass
class RolloutConfig:
    group_size: int = 8
    """G: rollouts sampled per prompt."""
    prompts_per_step: int = 16
    """B: prompts per training step."""
    max_new_tokens: int = 24
    """Completion token limit."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_batch_rollouts: int = 256
    """Rows per generate call."""
    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine: hf (transformers) or vllm (needs `pip install 'popo[vllm]'` and a CUDA GPU)."""
    lean_decode: bool = True
    """hf engine: decode Llama-family models with popo's lean step (same function, less overhead); false uses the model's forward."""
    hf_decode: HFDecode = "loop"
    """hf engine's decoding path: loop (popo's own), generate (transformers' generate, dynamic cache) or generate-static (a static cache, compiled on CUDA); all draw the same seeded tokens (docs/gpu-check.md: which is fastest where)."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """vLLM: colocate (in the training process, sleeping between rollouts) or server (LoRA only)."""
    vllm_server_url: str = "http://127.0.0.1:8000"
    """vLLM server mode: base URL of the `vllm serve` process."""
    vllm_gpu_memory_utilization: float = 0.3
    """vLLM colocate mode: share of GPU memory vLLM may use."""
    dynamic_sampling: bool = False
    """Keep only prompts whose G rollouts carry a learning signal (the loss table decides) and refill the dropped ones."""
    max_sampling_rounds: int = 3
    """Dynamic sampling: sampling rounds per step at most (the first included); prompts still without signal then stay."""


@dataclass
class RewardConfig:
    functions: tuple[str, ...] = ()
    """Reward functions: built-in names (math, testbed) or package.module:function (TRL signature); empty = testbed on testbed data, else math."""
    weights: tuple[float, ...] = ()
    """Weight of each reward function in the total reward (empty = 1 each)."""
    timeout_s: float = 10.0
    """Time limit of one call of a user reward function; a call over it gives its items reward 0."""
    max_memory_mb: int = 4096
    """Address-space limit of each user-reward-function worker process (0 = none)."""
    num_workers: int = 2
    """Worker processes that run the user reward functions."""
    items_per_call: int = 64
    """Completions per call of a user reward function (a failed call costs at most these)."""


@dataclass
class OptimConfig:
    lr: float = 3e-5
    """Peak learning rate (AdamW); 3e-5 was chosen for the testbed on its validation split (docs/results/defaults.md)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = 0.0
    """Fraction of steps with a linear warmup."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0 disables)."""
    micro_batch_tokens: int = 8192
    """Token budget of one micro-batch (rows x padded length); gradients accumulate over micro-batches."""
    foreach: bool | None = None
    """AdamW's multi-tensor (foreach) implementation: null leaves it to torch (on for CUDA tensors, off on CPU); true takes CUDA's path on CPU too (the tests check that path so)."""


@dataclass
class TrainConfig:
    steps: int = 150
    """Training steps (one rollout batch each)."""
    seed: int = 0
    """Seed for prompt order, sampling and noise."""
    out_dir: str = "runs/train"
    """Run directory: metrics.jsonl, TensorBoard events, checkpoints."""
    eval_every: int = 50
    """Evaluate on the held-out split every N steps (0 disables; the last step is always evaluated)."""
    eval_steps: tuple[int, ...] = ()
    """Also evaluate at exactly these steps (0: the start, even with eval_every 0), e.g. eval_every=0 eval_steps=1500: a study's finals read their test split at the steps the pre-registration names and nowhere else."""
    eval_samples: int = 4
    """k for sampled avg@k / pass@k in periodic evaluation."""
    eval_start_kl: bool = False
    """At each evaluation also log eval/start_kl: KL(policy || start) per sampled token (k3 estimate on the eval samples, which must be drawn at temperature 1 and top_p 1). Keeps a frozen copy of the starting weights (LoRA: the adapters switched off; with model.offload_companions, in CPU memory); not with FSDP sharding."""
    diag_every: int = 10
    """Every N steps log diagnostics: diversity of the positives, gradient share of each loss term, KL(online||target), implicit negatives (0 disables)."""
    save_every: int = 50
    """Checkpoint every N steps (0 = only at the end)."""
    keep_last: int = 2
    """Checkpoints to keep."""
    max_bad_steps: int = 5
    """Stop after this many consecutive steps with a non-finite loss or gradient."""
    overwrite: bool = False
    """Replace a run already in train.out_dir (its checkpoints and metrics); otherwise such a folder is refused."""
    tensorboard: bool = True
    """Write TensorBoard event files beside metrics.jsonl (false drops tensorboard from train.report_to)."""
    report_to: tuple[str, ...] = ("tensorboard",)
    """Experiment trackers beside metrics.jsonl: tensorboard, wandb, mlflow (pip install 'popo[wandb]' / 'popo[mlflow]'), or none."""
    progress: bool = True
    """Show a live progress bar."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    testbed: TestbedConfig = field(default_factory=TestbedConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check (and for command-line strings, parse) one value against its field's type."""
    optional = type(None) in get_args(hint)
    target = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    if isinstance(value, str) and value.lower() in ("none", "null") and optional:
        return None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    if target is str or (get_origin(target) is Literal and all(isinstance(a, str) for a in get_args(target))):
        return str(value)  # (a choice is checked by validation, with the closest valid value)
    if get_origin(target) is tuple and get_args(target)[0] is str:  # a list of names: YAML list, "a,b" or "[a, b]"
        items = value.strip().strip("[]").split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{where}: expected a list of names, got {value!r}")
        return tuple(v.strip().strip("'\"") for v in items if v.strip().strip("'\""))
    if isinstance(value, str) and not value.strip() and get_origin(target) is tuple:
        return ()
    if isinstance(value, str):
        if target is bool and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(f"{where}: cannot read {value!r} as {getattr(target, '__name__', target)}") from None
    if get_origin(target) is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if get_args(target)[0] is int:  # steps, counts: whole numbers
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in value):
                raise ConfigError(f"{where}: expected a list of whole numbers, got {value!r}")
            return tuple(value)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
            raise ConfigError(f"{where}: expected a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {target.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{where}'" + _suggest(key, names, prefix))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
            kwargs[key] = _build(hint, value, f"{where}.")
        else:
            kwargs[key] = _coerce(value, hint, where)
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=c` strings to a nested dict of raw (string) values."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} has no value: write {item}=VALUE (section.key=value)")
        path, value = item.split("=", 1)
        node = nested
        parts = path.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Defaults < algorithm preset < `base` < YAML file < overrides, then validated."""
    from popo.algorithms import preset_overrides  # the preset table lives beside the loss table

    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            if path.suffix not in (".yaml", ".yml") and "." in path.name and len(path.parts) == 1:
                raise ConfigError(f"{path} is neither a config file nor an override: write {path}=VALUE")
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            what = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{where}: invalid YAML: {what}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        raw = _merge(raw, loaded)
    raw = _merge(raw, parse_overrides(overrides or []))
    algo = raw.get("algo", {})
    if isinstance(algo, dict) and "name" in algo:
        raw["algo"] = _merge(preset_overrides(str(algo["name"])), algo)
    config = _build(Config, raw, "")
    validate(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v
    return {k: {kk: plain(vv) for kk, vv in v.items()} for k, v in dataclasses.asdict(config).items()}
