"""A lean per-token decode step for Llama-family `transformers` models (Qwen2, Llama, Mistral, Qwen3).

Decoding one token for a batch of rows is a handful of small matrix products per layer; on a CPU (and for
small models on any device) the time around them decides the speed. A `transformers` forward builds a
4-D mask, grows the KV cache and the attention mask by concatenation, calls a general attention kernel
(about 160 us per call on the 2-core development machine for a one-token query) and goes through some
sixty module calls per step. `LeanDecoder` computes the same function of the model's own parameters with

- the query, key and value projections as one product and the MLP's gate and up projections as one,
  each RMSNorm's weight folded into the product after it, the residual added inside the product (the
  weights are rebuilt at every `generate` call, so they are always the current parameters);
- a preallocated KV cache ([rows, kv_heads, P + C, head_dim] per layer, keys stored transposed) written
  in place, and a preallocated additive key mask;
- attention of a one-token query as two batched products and a softmax, grouped by key/value head (no
  repeated keys); the rotary embedding as one complex product (query and key features reordered within
  each head, which leaves q.k unchanged), from the model's own rotary module.

It is the same function up to float rounding (the additions happen in a different order):
tests/test_lean_decoder.py compares its logits with the model's own forward on each architecture here and
checks that the engine samples the same tokens either way. Anything else (other architectures, LoRA or
other wrapped layers, sharded parameters, sliding-window attention, rotary scalings that change with the
length, models above `max_parameters`) is refused by `LeanDecoder.supports`, and the engine then steps
with the model's own forward. Measurements: docs/performance.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED_TYPES = ("qwen2", "llama", "mistral", "qwen3")


class LeanDecoder:
    """The rows of one `generate` call: `prefill` their prompts, `select` rows (drop finished ones, repeat a
    shared prompt's), then `step` once per token."""

    max_parameters = 2**28
    """Above this size (about 268 M parameters) the fused copies of the weights, rebuilt at every call,
    would cost too much memory (a full extra copy of the attention and MLP weights); such models use
    their own forward, where the per-step overhead this class removes matters less anyway."""

    @staticmethod
    def supports(model: torch.nn.Module) -> str | None:
        """None when `model` can be decoded here, else why not (the engine then uses the model's forward)."""
        config = getattr(model, "config", None)
        kind = getattr(config, "model_type", None)
        if kind not in SUPPORTED_TYPES:
            return f"model type {kind!r} is not one of {SUPPORTED_TYPES}"
        if getattr(config, "use_sliding_window", False) or "sliding_attention" in (
                getattr(config, "layer_types", None) or ()):
            return "sliding-window attention"
        if kind == "mistral" and config.sliding_window is not None:
            return "sliding-window attention"
        rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
        if rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
            return "a rotary embedding that changes with the sequence length"
        if getattr(config, "hidden_act", None) != "silu" or getattr(config, "mlp_bias", False):
            return "not a SiLU-gated MLP without bias"
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "layers") or type(getattr(model, "lm_head", None)) is not torch.nn.Linear:
            return "not a decoder-only model with a plain lm_head"
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            parts = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            if any(type(m) is not torch.nn.Linear for m in parts):  # LoRA and quantised layers wrap them
                return "wrapped linear layers (e.g. LoRA)"
        if any(type(p) is not torch.nn.Parameter for p in model.parameters()):
            return "parameters are not plain tensors (e.g. sharded)"
        size = sum(p.numel() for p in model.parameters())
        if size > LeanDecoder.max_parameters:
            return f"{size / 1e6:.0f} M parameters, above max_parameters ({LeanDecoder.max_parameters / 1e6:.0f} M)"
        return None

    def __init__(self, model: torch.nn.Module, key_mask: torch.Tensor, limit: int):
        """Rows of left-padded prompts with the 2-D attention mask `key_mask` [R, P]; at most `limit`
        tokens will be decoded after them. Nothing is computed until `prefill` / `step`."""
        config, inner = model.config, model.model
        # each RMSNorm's weight is folded into the product that follows it (W diag(g))
        self.embed, self.norm_eps = inner.embed_tokens.weight, inner.norm.variance_epsilon
        self.head_weight, self.head_bias = model.lm_head.weight * inner.norm.weight, model.lm_head.bias
        self.head_dim = dim = inner.layers[0].self_attn.head_dim
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        # Rotary embedding as a complex product needs each rotated pair side by side: query and key
        # features are reordered within each head (x_0, x_{D/2}, x_1, ...), which leaves q.k unchanged.
        order = torch.arange(dim, device=key_mask.device).view(2, dim // 2).t().flatten()  # [D]
        self.layers = [_LayerWeights(layer, order, self.heads, self.kv_heads) for layer in inner.layers]
        rows, width = key_mask.shape
        self.capacity = width + limit
        weight = self.layers[0].qkv
        # keys are kept transposed ([.., D, T]): the score product then reads them without a copy
        self.keys_t = weight.new_empty(len(self.layers), rows, self.kv_heads, dim, self.capacity)
        self.values = weight.new_empty(len(self.layers), rows, self.kv_heads, self.capacity, dim)
        valid = key_mask.bool()
        self.padded = not bool(valid.all())  # without padding no additive mask is needed when decoding
        self.mask = weight.new_zeros(rows, 1, 1, 1, self.capacity)  # 0 attended, -inf padding
        self.mask[..., :width].masked_fill_(~valid.view(rows, 1, 1, 1, width), float("-inf"))
        self.prompt_positions = (key_mask.long().cumsum(-1) - 1).clamp_min(0)  # [R, P], as `generate` does
        self.positions = self.prompt_positions[:, 0] - 1  # [R] position of the last token written
        table = torch.arange(width + limit + 1, device=weight.device).unsqueeze(0)
        cos, sin = inner.rotary_emb(weight.float(), table)  # [1, positions, D]: the model's own rotary
        half = dim // 2
        self.rotation = torch.view_as_real(torch.complex(cos[0, :, :half].float(), sin[0, :, :half].float()))
        self.rotation = self.rotation.flatten(1)  # [positions, D] as (cos, sin) pairs
        self.used = 0

    def select(self, index: torch.Tensor) -> None:
        """Keep the rows `index` (an index tensor; a row may repeat, e.g. to share a prompt's prefill)."""
        # whole rows of the cache (unwritten columns too): a contiguous copy per row, several times
        # faster than gathering only the written columns
        self.keys_t = self.keys_t.index_select(1, index)
        self.values = self.values.index_select(1, index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.prompt_positions = self.prompt_positions[index]

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the next S prompt columns `tokens` [R, S] (causal within them); logits [R, V] of the last."""
        rows, width = tokens.shape
        start, end = self.used, self.used + width
        positions = self.prompt_positions[:, start:end]  # [R, S]
        self.positions = positions[:, -1].clone()
        causal = torch.ones(width, end, dtype=torch.bool, device=tokens.device).tril(diagonal=start)  # [S, T]
        mask = self.mask[..., :end].expand(rows, 1, 1, width, end).masked_fill(~causal, float("-inf"))
        # a padding query would attend to nothing: let it see itself, so no NaN reaches later layers
        diagonal = torch.arange(width, device=tokens.device)
        mask[:, 0, 0, diagonal, start + diagonal] = 0.0
        return self._forward(tokens, positions, mask)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [R, V] for the token after `tokens` [R], whose keys and values are appended."""
        self.positions += 1
        mask = self.mask[..., :self.used + 1] if self.padded else None
        return self._forward(tokens.unsqueeze(1), self.positions.unsqueeze(1), mask)

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The layers over tokens [R, S] at `positions` [R, S], written at the next S cache columns, with
        the additive mask [R, 1, 1, S, T] (None: attend to every column); logits [R, V] of the last."""
        rows, width = tokens.shape
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        group = heads // kv_heads
        start = self.used
        self.used = end = start + width
        hidden = F.embedding(tokens.flatten(), self.embed)  # [R*S, H]
        rotation = torch.view_as_complex(
            F.embedding(positions.flatten(), self.rotation).view(-1, 1, dim // 2, 2))  # [R*S, 1, D/2]
        if mask is not None and width == 1:
            mask = mask.view(rows, 1, 1, end)
        q_end, k_end = heads * dim, (heads + kv_heads) * dim
        for i, w in enumerate(self.layers):
            qkv = F.linear(_rms_norm(hidden, w.eps_in), w.qkv, w.qkv_bias)  # [R*S, (heads + 2 kv) D]
            if w.q_norm is None:  # one rotation for queries and keys (queries pre-scaled)
                rotated = _rotate(qkv[:, :k_end].view(-1, heads + kv_heads, dim), rotation)
                query, key = rotated[:, :heads], rotated[:, heads:]
            else:  # Qwen3 normalises queries and keys per head, before the rotation
                query = F.rms_norm(qkv[:, :q_end].view(-1, heads, dim), (dim,), w.q_norm, w.qk_eps)
                key = F.rms_norm(qkv[:, q_end:k_end].view(-1, kv_heads, dim), (dim,), w.k_norm, w.qk_eps)
                query, key = _rotate(query, rotation) * w.scaling, _rotate(key, rotation)
            value = qkv[:, k_end:].view(rows, width, kv_heads, dim)
            if width == 1:  # decoding: [R, kv, g, D] queries are a view, one cache column
                self.keys_t[i, :, :, :, start] = key
                self.values[i, :, :, start] = value[:, 0]
                grouped = query.reshape(rows, kv_heads, group, dim)
            else:
                self.keys_t[i, :, :, :, start:end] = key.view(rows, width, kv_heads, dim).permute(0, 2, 3, 1)
                self.values[i, :, :, start:end] = value.transpose(1, 2)
                grouped = query.reshape(rows, width, kv_heads, group, dim).permute(0, 2, 3, 1, 4)
                grouped = grouped.reshape(rows, kv_heads, group * width, dim)
            scores = torch.matmul(grouped, self.keys_t[i, ..., :end])  # [R, kv, g*S, T]
            if mask is not None:
                scores = scores + mask if width == 1 else (
                    scores.view(rows, kv_heads, group, width, end) + mask).view(scores.shape)
            attended = torch.matmul(_softmax(scores), self.values[i, :, :, :end])  # [R, kv, g*S, D]
            if width > 1:
                attended = attended.view(rows, kv_heads, group, width, dim).permute(0, 3, 1, 2, 4)
            hidden = _project_add(hidden, attended.reshape(rows * width, heads * dim), w.o_proj, w.o_bias)
            gate, up = F.linear(_rms_norm(hidden, w.eps_post), w.gate_up).chunk(2, dim=-1)
            hidden = _project_add(hidden, F.silu(gate) * up, w.down, None)
        last = hidden.view(rows, width, -1)[:, -1]
        return F.linear(_rms_norm(last, self.norm_eps), self.head_weight, self.head_bias)


class _LayerWeights:
    """One decoder layer's parameters: queries, keys and values as one product (query rows pre-scaled
    by the attention scale; query and key rows reordered for the complex rotation), gate and up as one."""

    def __init__(self, layer: torch.nn.Module, order: torch.Tensor, heads: int, kv_heads: int):
        attn, mlp = layer.self_attn, layer.mlp
        dim = attn.head_dim
        q_norm = getattr(attn, "q_norm", None)
        self.scaling = attn.scaling
        query_scale = 1.0 if q_norm is not None else attn.scaling  # Qwen3 scales after its norm
        rows_q = (torch.arange(heads, device=order.device).unsqueeze(1) * dim + order.unsqueeze(0)).flatten()
        rows_k = (torch.arange(kv_heads, device=order.device).unsqueeze(1) * dim + order.unsqueeze(0)).flatten()
        device = attn.q_proj.weight.device
        rows_q, rows_k = rows_q.to(device), rows_k.to(device)
        weights = [attn.q_proj.weight[rows_q] * query_scale, attn.k_proj.weight[rows_k], attn.v_proj.weight]
        self.qkv = torch.cat(weights) * layer.input_layernorm.weight
        biases = (attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias)
        if all(b is None for b in biases):
            self.qkv_bias = None
        else:
            zeros = [w.new_zeros(w.shape[0]) for w in weights]
            q_bias, k_bias, v_bias = (b if b is not None else z for b, z in zip(biases, zeros))
            self.qkv_bias = torch.cat([q_bias[rows_q] * query_scale, k_bias[rows_k], v_bias])
        self.o_proj, self.o_bias = attn.o_proj.weight, attn.o_proj.bias
        self.gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]) * layer.post_attention_layernorm.weight
        self.down = mlp.down_proj.weight
        self.eps_in = layer.input_layernorm.variance_epsilon
        self.eps_post = layer.post_attention_layernorm.variance_epsilon
        order = order.to(device)
        self.q_norm = q_norm.weight[order] if q_norm is not None else None
        self.k_norm = attn.k_norm.weight[order] if q_norm is not None else None
        self.qk_eps = q_norm.variance_epsilon if q_norm is not None else 0.0


def _rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS normalisation without a weight (it is folded into the next product), statistics in float32."""
    if x.dtype == torch.float32:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    y = x.float()
    return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension in float32. For fewer than 16 keys `Tensor.softmax` takes a slow
    path on CPU (about 3x slower than these four ops here), so short rows are done by hand."""
    x = scores.float()
    if x.shape[-1] < 16 and x.device.type == "cpu":
        e = (x - x.amax(dim=-1, keepdim=True)).exp_()
        x = e.div_(e.sum(dim=-1, keepdim=True))
    else:
        x = x.softmax(dim=-1)
    return x.to(scores.dtype)


def _rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of [R, S, heads, D] (pairs side by side) by the complex rotation [R, S, 1, D/2]."""
    x32 = x.float()
    if x32.stride(-1) != 1 or x32.stride(-2) % 2:
        x32 = x32.contiguous()
    pairs = torch.view_as_complex(x32.view(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


def _project_add(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """residual + x W^T (+ bias) over the last dimension, the addition fused into the product."""
    out = torch.addmm(residual.reshape(-1, residual.shape[-1]), x.reshape(-1, x.shape[-1]), weight.t())
    out = out.view(residual.shape)
    return out if bias is None else out + bias


