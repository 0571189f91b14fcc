"""`LeanLlama`: an inference-only forward of a Llama-architecture backbone over a preallocated KV cache.

Why: on a CPU, a small model's decode step through Hugging Face's Llama forward costs several times
its matrix products (measured in `docs/PERFORMANCE.md`: 8 ms a step of 32 rows for the shapes-tiny
editor, whose matmuls take 1.4 ms). The difference is per-op work that a generation loop does not
need: a cache object that grows by `torch.cat` every step, a 4D mask rebuilt in every layer, three
projections where one fused matmul does, rotary tables recomputed per call, output dataclasses.
This module runs the same arithmetic with none of that:

    weights       q|k|v and gate|up concatenated once per generation: two matmuls fewer per layer
    KV cache      one (rows, kv_heads, capacity, head_dim) buffer per layer, written in place
    rotary        cos/sin for every position up to the capacity, computed once by the model's own
                  rotary module (so any position-only RoPE variant it implements is honoured)
    mask          one additive mask per forward, shared by every layer
    logits        at the last fed position only

It is a reimplementation of `LlamaForCausalLM`'s forward, so it is held to it: the tests compare
logits against the Hugging Face forward over a prefill and several cached steps (fp32, to 1e-5).
`unsupported_reason` refuses any backbone whose arithmetic it does not reproduce (biases, other
activations, dropout in training mode, non-Llama layers), and generation then keeps the Hugging
Face path. GPUs keep that path too: there the decode step is launch-bound and is captured as a CUDA
graph (`earl.generate._StaticDecoder`), with Triton attention where asked (`earl.kernels`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from earl.errors import EarlError

_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _get(module, dotted: str):
    for name in dotted.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def unsupported_reason(backbone) -> str | None:
    """Why `LeanLlama` cannot run this backbone exactly, or None when it can.

    Only a transformers model whose forward is transformers' own qualifies: a wrapper or subclass
    that changes the forward (a logits bias, a hook) would be silently bypassed otherwise."""
    forward = getattr(type(backbone), "forward", None)
    if not getattr(forward, "__module__", "").startswith("transformers.") or not hasattr(backbone, "config"):
        return f"{type(backbone).__name__} is not a transformers model with its own forward"
    if any(hasattr(p, "ds_id") for p in backbone.parameters()):  # gathered by hooks this forward would skip
        return "its parameters are partitioned by DeepSpeed ZeRO-3"
    cfg = backbone.config
    body = getattr(backbone, "model", None)
    if body is None or not hasattr(body, "layers") or not hasattr(body, "embed_tokens"):
        return f"{type(backbone).__name__} has no Llama-style .model.layers / .model.embed_tokens"
    if getattr(backbone, "lm_head", None) is None or getattr(body, "norm", None) is None:
        return f"{type(backbone).__name__} has no lm_head or final norm"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"hidden_act is {getattr(cfg, 'hidden_act', None)!r}, not 'silu'"
    if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager", None):
        return f"attention implementation {cfg._attn_implementation!r} was asked for"
    if backbone.training and (getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0:
        return "attention dropout in training mode"
    rope = getattr(body, "rotary_emb", None)
    rope_type = str(getattr(rope, "rope_type", "default"))
    if rope is None or "dynamic" in rope_type or rope_type == "longrope":  # these rescale with the length
        return f"no position-only rotary embedding (.model.rotary_emb, type {rope_type!r})"
    for i, layer in enumerate(body.layers):
        for part in _LAYER_PARTS:
            mod = _get(layer, part)
            if mod is None:
                return f"layer {i} has no {part}"
            if getattr(mod, "bias", None) is not None and part.endswith("_proj"):
                return f"layer {i} {part} has a bias"
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if not type(norm).__name__.endswith("RMSNorm"):
                return f"layer {i} norm is {type(norm).__name__}, not an RMSNorm"
        if not _only_identity_extras(layer):
            return f"layer {i} ({type(layer).__name__}) has modules beyond attention, MLP and two norms"
    return None


def _only_identity_extras(layer) -> bool:
    """Whether a layer holds only attention, MLP, two norms and dropouts that do nothing (Emu3's decoder
    layer adds a residual dropout, identity outside training)."""
    known = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
    extras = [m for n, m in layer.named_children() if n not in known]
    return all(isinstance(m, torch.nn.Dropout) and (m.p == 0 or not m.training) for m in extras)


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


class LeanLlama:
    """The backbone's weights (q|k|v and gate|up fused) and a KV cache for `rows` x `capacity` tokens.

    Build one per generation: the fused weights are copies of the parameters at construction time,
    so a policy updated between rollouts is read afresh by the next generation (and they cost as
    much memory again as the layers; `earl.generate` picks this path by itself only for small
    models). Forward hooks registered on the backbone's modules do not run here.
    """

    def __init__(self, backbone, rows: int, capacity: int):
        why = unsupported_reason(backbone)
        if why is not None:
            raise EarlError(f"LeanLlama cannot run this backbone: {why}")
        cfg, body = backbone.config, backbone.model
        p = next(backbone.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.rows, self.capacity = rows, capacity
        self.embed = body.embed_tokens
        self.layers = []
        with torch.no_grad():  # each RMSNorm's weight folded into the matmul that reads its output
            for layer in body.layers:
                att, mlp = layer.self_attn, layer.mlp
                ln1, ln2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
                self.layers.append(dict(
                    eps1=_eps(layer.input_layernorm), eps2=_eps(layer.post_attention_layernorm),
                    qkv=torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]) * ln1,  # (q+2kv, d)
                    o=att.o_proj.weight,
                    gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]) * ln2,  # (2f, d)
                    down=mlp.down_proj.weight,
                    scaling=float(getattr(att, "scaling", self.head_dim ** -0.5)),
                ))
            self.norm_eps = _eps(body.norm)
            self.lm_head = backbone.lm_head.weight * body.norm.weight
            probe = torch.zeros(1, 1, self.head_dim, device=self.device, dtype=self.dtype)
            cos, sin = body.rotary_emb(probe, torch.arange(capacity, device=self.device)[None])
            self.cos, self.sin = cos[0], sin[0]  # (capacity, head_dim)
        shape = (rows, self.n_kv, capacity, self.head_dim)
        self.k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        self.v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        self.length = 0  # cache slots written so far

    @staticmethod
    def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm without its weight (folded into the next matmul), computed in fp32 as Hugging Face does."""
        return F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _attend(self, q, k, v, bias, scale):
        """(R, H, n, D) queries over (R, KV, t, D) keys/values with an (R, 1, n, t) additive mask.

        A few new tokens (decode): two batched matmuls with the query heads of each KV head stacked,
        which on a CPU costs a third of SDPA's flash kernel at these sizes. A long prefill: SDPA.
        """
        R, H, n, D = q.shape
        KV = k.shape[1]
        if n > 8:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=H != KV)
        g = H // KV
        scores = torch.matmul(q.reshape(R, KV, g * n, D), k.transpose(-1, -2)) * scale  # (R, KV, g*n, t)
        scores = (scores.view(R, KV, g, n, -1) + bias[:, :, None]).softmax(-1, dtype=torch.float32)
        out = torch.matmul(scores.to(v.dtype).view(R, KV, g * n, -1), v)  # (R, KV, g*n, D)
        return out.view(R, H, n, D)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
                all_positions: bool = False) -> torch.Tensor:
        """Feed (R, n) tokens at (R, n) rotary positions; returns (R, V) logits at the last one, or
        (R, n, V) at every one with `all_positions` (to verify several guessed tokens in one forward).

        `key_mask` (R, length + n): 1 where a cache slot (old or new) may be attended, 0 for padding.
        Within the n new tokens attention is causal.
        """
        R, n = ids.shape
        t0, t1 = self.length, self.length + n
        if t1 > self.capacity:
            raise EarlError(f"lean decode: {t1} tokens exceed the cache of {self.capacity}")
        if key_mask.shape != (R, t1):
            raise EarlError(f"lean decode: key_mask has shape {tuple(key_mask.shape)}, expected {(R, t1)}")
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        # (R, 1, n, t1) additive mask: padding keys, and keys after the query among the new tokens
        allowed = key_mask.bool()[:, None, None, :].expand(R, 1, n, t1)
        if n > 1:
            causal = torch.ones(n, t1, dtype=torch.bool, device=ids.device).tril(t0)
            allowed = allowed & causal
        bias = torch.zeros(allowed.shape, dtype=self.dtype, device=ids.device)
        bias.masked_fill_(~allowed, torch.finfo(self.dtype).min)  # finite: an all-padding row stays finite
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (R, 1, n, D)

        x = self.embed(ids)  # (R, n, d)
        for i, w in enumerate(self.layers):
            qk, v = F.linear(self._rms(x, w["eps1"]), w["qkv"]).split(((H + KV) * D, KV * D), dim=-1)
            qk = self._rotate(qk.view(R, n, H + KV, D).transpose(1, 2), cos, sin)  # (R, H+KV, n, D): one rotation
            q = qk[:, :H]  # (R, H, n, D)
            self.k[i][:, :, t0:t1] = qk[:, H:]
            self.v[i][:, :, t0:t1] = v.view(R, n, KV, D).transpose(1, 2)
            att = self._attend(q, self.k[i][:, :, :t1], self.v[i][:, :, :t1], bias, w["scaling"])  # (R, H, n, D)
            x = x + F.linear(att.transpose(1, 2).reshape(R, n, H * D), w["o"])
            gate, up = F.linear(self._rms(x, w["eps2"]), w["gate_up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w["down"])
        self.length = t1
        return F.linear(self._rms(x if all_positions else x[:, -1], self.norm_eps), self.lm_head)  # (R, [n,] V)
