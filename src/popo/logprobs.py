"""From a causal LM's outputs to the per-token quantities the losses use.

This is the one place where the model meets the math.  Everything here is
differentiable and pure (no state kept between calls).

Token log-probabilities
-----------------------
For logits ``z`` over a vocabulary of size ``V`` and a chosen token ``y``::

    log pi(y) = z_y - logsumexp_v z_v

which is computed directly instead of materialising ``log_softmax(z)`` for the
whole ``[N, T, V]`` tensor.  Rows of the flattened ``[N*T, V]`` logits are
processed ``chunk_size`` at a time and upcast to float32 one chunk at a time,
so the transient float32 copy and the logsumexp workspace are bounded by
``chunk_size * V`` elements.  (Autograd still keeps whatever it needs for the
backward pass; when the logits are already float32 that is the logits
themselves, no extra copy.)  Results are float32.

Token entropy
-------------
``H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v`` with ``p = softmax(z)``,
chunked the same way.  Logits equal to ``-inf`` (a banned token) have
``p_v = 0`` and contribute 0 rather than ``0 * -inf = NaN``.

Masked mean
-----------
``masked_mean(x, m)[i] = sum_t m_it x_it / max(1, sum_t m_it)``.  Masked-out
entries are replaced with 0 by ``torch.where`` *before* summing, so NaN/inf
there never reach the value or the gradient; a row with an empty mask gives 0.

Completion outputs
------------------
Every row is ``[left-padded prompt, length P | right-padded completion, length C]``.
The decoder runs once on the whole row with
``position_ids = clamp(cumsum(attention_mask) - 1, min=0)`` so the first real
token of a left-padded prompt sits at position 0.  The LM head is applied only
to hidden positions ``P-1 .. L-2`` (those that predict the completion tokens
``input_ids[:, P:]``); prompt positions never go through the LM head, which
saves a ``[N, P, V]`` logits tensor.  ``features`` are the decoder's final
(normalised) hidden states at the completion positions ``P .. L-1``, i.e. the
LM head's inputs for the completion tokens themselves; the trainer pools them
with ``masked_mean``.  If the model config defines ``final_logit_softcapping``
(Gemma-2 style) it is applied to the logits as the full model would; other
logit post-processing done inside a model's own ``forward`` is not reproduced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn


def _check_chunk(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _chunked_token_stats(
    hidden_or_logits: Tensor,
    tokens: Tensor | None,
    *,
    head: nn.Module | None,
    softcap: float | None,
    need_logprobs: bool,
    need_entropy: bool,
    chunk_size: int,
    entropy_grad: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """Shared chunked loop.

    ``hidden_or_logits`` is [N, T, D]; with ``head`` it is a hidden state and the
    head maps each chunk to logits, otherwise D = V and it is already logits.
    With ``entropy_grad=False`` the entropy is computed from detached logits
    without autograd, so its softmax workspace is freed at once instead of being
    kept for a backward pass that would never reach it.
    Returns ([N, T] float32 logprobs or None, [N, T] float32 entropy or None).
    """
    _check_chunk(chunk_size)
    n, t = hidden_or_logits.shape[:2]
    flat = hidden_or_logits.reshape(n * t, hidden_or_logits.shape[-1])  # [N*T, D]
    flat_tokens = tokens.reshape(n * t) if tokens is not None else None  # [N*T]
    lp_chunks: list[Tensor] = []
    ent_chunks: list[Tensor] = []
    for start in range(0, n * t, chunk_size):
        x = flat[start : start + chunk_size]  # [c, D]
        logits = head(x) if head is not None else x  # [c, V]
        logits = logits.float()  # [c, V]
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)  # [c, V]
        lse = torch.logsumexp(logits, dim=-1)  # [c]
        if need_logprobs:
            idx = flat_tokens[start : start + chunk_size].unsqueeze(-1)  # [c, 1]
            chosen = logits.gather(-1, idx).squeeze(-1)  # [c]
            lp_chunks.append(chosen - lse)  # [c]
        if need_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                z = logits if entropy_grad else logits.detach()  # [c, V]
                z_lse = lse if entropy_grad else lse.detach()  # [c]
                p = torch.softmax(z, dim=-1)  # [c, V]
                finite = torch.where(torch.isneginf(z), 0.0, z)  # [c, V]
                ent_chunks.append(z_lse - (p * finite).sum(-1))  # [c]
    device = hidden_or_logits.device
    empty = torch.zeros(0, device=device, dtype=torch.float32)

    def _cat(chunks: list[Tensor]) -> Tensor:
        return (torch.cat(chunks) if chunks else empty).view(n, t)  # [N, T]

    return (
        _cat(lp_chunks) if need_logprobs else None,
        _cat(ent_chunks) if need_entropy else None,
    )


def selected_token_logprobs(logits: Tensor, tokens: Tensor, *, chunk_size: int = 4096) -> Tensor:
    """Log-probability of each chosen token, ``z[y] - logsumexp(z)``.

    Args:
        logits: [N, T, V] (any float dtype).
        tokens: [N, T] integer ids in [0, V) (padding positions must still hold a valid id).
        chunk_size: rows of the flattened [N*T, V] logits processed at once.

    Returns:
        [N, T] float32, differentiable w.r.t. logits.
    """
    if tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"tokens shape {tuple(tokens.shape)} does not match logits {tuple(logits.shape)}"
        )
    lp, _ = _chunked_token_stats(
        logits, tokens, head=None, softcap=None,
        need_logprobs=True, need_entropy=False, chunk_size=chunk_size,
    )
    return lp  # [N, T]


def token_entropy(logits: Tensor, *, chunk_size: int = 4096) -> Tensor:
    """Entropy (nats) of softmax(logits) at every position; [N, T, V] -> [N, T] float32."""
    _, ent = _chunked_token_stats(
        logits, None, head=None, softcap=None,
        need_logprobs=False, need_entropy=True, chunk_size=chunk_size,
    )
    return ent  # [N, T]


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of the positions where ``mask`` is true.

    Args:
        values: [N, T, ...] any trailing dims.
        mask: [N, T] bool or 0/1.

    Returns:
        [N, ...]; rows with an empty mask give 0. Masked-out values (even NaN/inf)
        affect neither the result nor the gradient.
    """
    if mask.shape != values.shape[:2]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match values {tuple(values.shape)}"
        )
    m = mask.bool()  # [N, T]
    m_full = m.reshape(m.shape + (1,) * (values.dim() - 2))  # [N, T, 1...]
    total = torch.where(m_full, values, 0).sum(dim=1)  # [N, ...]
    count = m.sum(dim=1).clamp_min(1).to(total.dtype)  # [N]
    return total / count.reshape(count.shape + (1,) * (total.dim() - 1))  # [N, ...]


@dataclass
class CompletionOutputs:
    """Per-completion-token outputs of one forward pass (C = L - prompt_length)."""

    logprobs: Tensor | None = None  # [N, C] float32
    entropy: Tensor | None = None  # [N, C] float32
    features: Tensor | None = None  # [N, C, H] model dtype


def _decoder(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_decoder", None)
    if callable(get):
        dec = get()
        if dec is not None:
            return dec
    if hasattr(model, "model"):
        return model.model
    raise ValueError("cannot find the decoder: model has neither get_decoder() nor .model")


def completion_outputs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_length: int,
    *,
    need_logprobs: bool = True,
    need_entropy: bool = False,
    need_features: bool = False,
    chunk_size: int = 4096,
    entropy_grad: bool = True,
    entry: Callable | None = None,
) -> CompletionOutputs:
    """Run the decoder once and return completion-token log-probs / entropy / features.

    Args:
        model: a Hugging Face causal LM (e.g. Qwen2ForCausalLM).
        input_ids: [N, L], each row = left-padded prompt (P) + right-padded completion (C).
        attention_mask: [N, L], 1 on real tokens.
        prompt_length: P, 1 <= P < L.
        need_logprobs / need_entropy / need_features: which outputs to compute.
        chunk_size: rows of [N*C] processed per LM-head call.
        entropy_grad: False when the entropy is only logged: it is then computed
            without autograd (same values, no gradient, less memory and time).
        entry: what runs the forward pass, called with `completion_forward`'s arguments after
            `model` and returning its tuple; None runs `completion_forward` on `model` directly.
            A model that must be entered its own way supplies it (`popo.models` does).

    Returns:
        CompletionOutputs with logprobs [N, C], entropy [N, C], features [N, C, H]
        (None for the ones not requested). Values at padded completion positions
        are well defined but meaningless; mask them downstream.
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask "
            f"{tuple(attention_mask.shape)} must be the same [N, L] shape"
        )
    seq_len = input_ids.shape[1]
    if not 1 <= prompt_length < seq_len:
        raise ValueError(f"need 1 <= prompt_length < L={seq_len}, got {prompt_length}")
    if not (need_logprobs or need_entropy or need_features):
        return CompletionOutputs()
    args = (input_ids, attention_mask, prompt_length, need_logprobs, need_entropy, need_features, chunk_size,
            entropy_grad)
    run = partial(completion_forward, model) if entry is None else entry
    logprobs, entropy, features = run(*args)
    return CompletionOutputs(logprobs, entropy, features)


def completion_forward(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_length: int,
                       need_logprobs: bool, need_entropy: bool, need_features: bool, chunk_size: int,
                       entropy_grad: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The body of `completion_outputs` as a method-like function of `model` returning a tuple
    (logprobs, entropy, features), so that a wrapper can run it as a method of the model (`entry`)."""
    seq_len = input_ids.shape[1]
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # [N, L]
    dec_out = _decoder(model)(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    hidden = dec_out.last_hidden_state  # [N, L, H], after the final norm
    logprobs = entropy = None
    if need_logprobs or need_entropy:
        head = model.get_output_embeddings()
        softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
        h_pred = hidden[:, prompt_length - 1 : seq_len - 1]  # [N, C, H]
        targets = input_ids[:, prompt_length:]  # [N, C]
        logprobs, entropy = _chunked_token_stats(
            h_pred, targets, head=head, softcap=softcap,
            need_logprobs=need_logprobs, need_entropy=need_entropy, chunk_size=chunk_size,
            entropy_grad=entropy_grad,
        )
    return logprobs, entropy, (hidden[:, prompt_length:] if need_features else None)  # features [N, C, H]
