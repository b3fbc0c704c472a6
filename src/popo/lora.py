"""LoRA through `peft`, and the cheap EMA target that goes with it.

With `model.lora.r > 0` the policy is a `peft` model whose base weights are frozen; only the adapters
train. The EMA target then needs no second copy of the model: `AdapterEMA` keeps an EMA copy of the
adapter tensors alone and, for a target forward pass, swaps them into the policy's adapter slots and
back (`swapped()`). Its memory is the adapter's size, not the model's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def apply_lora(model: nn.Module, r: int, alpha: float, dropout: float, target_modules: str,
               gradient_checkpointing: bool = False) -> nn.Module:
    """Wrap `model` with fresh LoRA adapters (rank `r`) on `target_modules` (comma-separated names or
    `all-linear`); the base weights are frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("model.lora.r > 0 needs the peft package: pip install 'popo[lora]'") from None
    modules = target_modules if target_modules == "all-linear" else [m.strip() for m in target_modules.split(",")]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules,
                        task_type="CAUSAL_LM")
    if gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input
    return get_peft_model(model, config)


def load_adapter_merged(path: str | Path, **kwargs) -> nn.Module:
    """A plain model: the base named in the adapter folder's config with the adapter merged in."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    return PeftModel.from_pretrained(base, str(path)).merge_and_unload()


def load_policy_weights(policy: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load a checkpoint's policy tensors (full weights, or the adapter of a `peft` policy); returns
    (missing, unexpected) keys."""
    if is_peft(policy):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(policy, state)
        missing = [k for k in result.missing_keys if "lora_" in k]
        return missing, list(result.unexpected_keys)
    missing, unexpected = policy.load_state_dict(state, strict=False)
    return list(missing), list(unexpected)


@contextmanager
def plain_weights(model: nn.Module) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """(name, tensor) for every weight of `model` as the plain model (no adapters) names it, for an engine
    that holds its own plain copy (vLLM): with LoRA the adapters are merged into the base weights for the
    block and unmerged on exit, and the adapter tensors themselves are left out. The tensors are read from
    the parameters, not `state_dict()`: a sharded policy inside `Models.gathered()` holds full tensors in
    its modules, which `state_dict()` would cut into shards again."""
    lora = is_peft(model)
    if lora:
        model.merge_adapter()
    try:
        yield [(_plain_name(name), p.detach()) for name, p in model.named_parameters() if "lora_" not in name]
    finally:
        if lora:
            model.unmerge_adapter()


def _plain_name(name: str) -> str:
    """A `peft` parameter name as the plain model names it."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".base_layer.", ".")


class AdapterEMA:
    """EMA copy of a `peft` policy's trainable tensors, used as the target model by swapping it in."""

    def __init__(self, policy: nn.Module):
        self.policy = policy
        self.names = [n for n, p in policy.named_parameters() if p.requires_grad]
        online = dict(policy.named_parameters())
        self.shadow = [online[n].detach().clone() for n in self.names]

    def online(self) -> list[torch.Tensor]:
        params = dict(self.policy.named_parameters())
        return [params[n] for n in self.names]

    def parameters(self) -> Iterator[torch.Tensor]:
        return iter(self.shadow)

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.shadow)

    @contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """The policy with the EMA adapter tensors in place (no grad); restored on exit."""
        online = self.online()
        saved = [p.detach().clone() for p in online]
        was_training = self.policy.training
        try:
            with torch.no_grad():
                for p, s in zip(online, self.shadow):
                    p.copy_(s)
            self.policy.eval()
            yield self.policy
        finally:
            with torch.no_grad():
                for p, s in zip(online, saved):
                    p.copy_(s)
            self.policy.train(was_training)

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.save_file(Path(folder) / "model.safetensors")

    def save_file(self, path: str | Path) -> None:
        """The EMA adapter tensors, by parameter name, as one safetensors file."""
        from safetensors.torch import save_file

        save_file({n: t.contiguous() for n, t in zip(self.names, self.shadow)}, path)

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = False):
        missing = [n for n in self.names if n not in state]
        unexpected = [k for k in state if k not in self.names]
        for n, t in zip(self.names, self.shadow):
            if n in state:
                t.copy_(state[n])
        return missing, unexpected

    def to(self, device) -> "AdapterEMA":
        self.shadow = [t.to(device) for t in self.shadow]
        return self


class AdapterOff:
    """The frozen reference of a LoRA policy: the policy itself with its adapters disabled (no copy)."""

    def __init__(self, policy: nn.Module):
        self.policy = policy

    @contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        with self.policy.disable_adapter():
            yield self.policy

    def parameters(self) -> Iterator[torch.Tensor]:
        return iter(())

    def to(self, device) -> "AdapterOff":
        return self


def companion(model):
    """Context manager yielding the module to run a companion's (target's, reference's) forward with:
    the model itself, or the policy with EMA adapters swapped in / adapters disabled."""
    return model.swapped() if isinstance(model, (AdapterEMA, AdapterOff)) else nullcontext(model)
