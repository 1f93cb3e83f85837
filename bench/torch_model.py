"""DeepSeek-V3 training forward in plain PyTorch eager mode.

This is the baseline that `dsv3 bench train-step` is compared with: the model as a PyTorch user
would write it (nn.Linear projections, explicit softmax attention, an MoE that loops over experts
gathering their tokens), following the math of DESIGN.md section 2. Parameter names are the
Hugging Face `DeepseekV3ForCausalLM` names, so `load_state_dict` takes a model.safetensors as is.

Works with torch 1.13 (Debian's python3-torch); torch 1.13 has no public
scaled_dot_product_attention, so attention is written out (scores, causal mask, softmax).
"""

import json
import math
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# Config


class Config:
    """The keys of a Hugging Face DeepseekV3 config.json that the model uses, with HF defaults."""

    DEFAULTS = dict(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432,
        moe_intermediate_size=2048, num_hidden_layers=61, num_nextn_predict_layers=1,
        num_attention_heads=128, n_shared_experts=1, n_routed_experts=256,
        routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
        v_head_dim=128, qk_nope_head_dim=128, topk_method="noaux_tc", n_group=8, topk_group=4,
        num_experts_per_tok=8, moe_layer_freq=1, first_k_dense_replace=3, norm_topk_prob=True,
        scoring_func="sigmoid", rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None,
        max_position_embeddings=4096, hidden_act="silu", attention_bias=False,
        tie_word_embeddings=False,
    )

    def __init__(self, d):
        for k, v in self.DEFAULTS.items():
            setattr(self, k, d.get(k, v))
        if self.hidden_act != "silu":
            raise ValueError(f"config: hidden_act={self.hidden_act!r} is not supported (silu only)")
        if self.attention_bias:
            raise ValueError("config: attention_bias=true is not supported")
        if self.tie_word_embeddings:
            raise ValueError("config: tie_word_embeddings=true is not supported")
        if self.scoring_func not in ("sigmoid", "softmax"):
            raise ValueError(f"config: scoring_func={self.scoring_func!r} is not supported")
        train = d.get("train", {})
        self.mtp_lambda = float(train.get("mtp_lambda", 0.3))
        self.balance_alpha = float(train.get("balance_alpha", 1e-4))

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(json.load(f))

    def is_moe_layer(self, i):
        return (self.n_routed_experts is not None and i >= self.first_k_dense_replace
                and i % self.moe_layer_freq == 0)


# ----------------------------------------------------------------------------------------------
# safetensors (a few lines: 8-byte little-endian header length, JSON header, raw data)

_ST_DTYPES = {"F32": torch.float32, "F64": torch.float64, "I32": torch.int32, "I64": torch.int64,
              "F16": torch.float16, "BF16": torch.bfloat16}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = _ST_DTYPES[info["dtype"]]
        buf = bytearray(data[base + begin:base + end])
        t = torch.frombuffer(buf, dtype=dtype) if len(buf) else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"])
    return out


# ----------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def yarn_mscale(scale, mscale):
    if scale <= 1 or not mscale:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def rope_tables(cfg, seq_len, dtype):
    """cos, sin [T, rope_dim/2] for interleaved-pair RoPE, with YaRN when configured."""
    dim = cfg.qk_rope_head_dim
    base = cfg.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    mul = 1.0
    rs = cfg.rope_scaling
    if rs is not None and rs.get("type", rs.get("rope_type")) == "yarn":
        factor = float(rs["factor"])
        orig = float(rs["original_max_position_embeddings"])
        beta_fast = float(rs.get("beta_fast", 32))
        beta_slow = float(rs.get("beta_slow", 1))

        def corr_dim(r):
            return dim * math.log(orig / (r * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(corr_dim(beta_fast)), 0)
        high = min(math.ceil(corr_dim(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        keep = 1.0 - ramp  # 1 -> original frequency, 0 -> interpolated (/factor)
        freqs = freqs / factor * (1.0 - keep) + freqs * keep
        mul = yarn_mscale(factor, rs.get("mscale", 1)) / yarn_mscale(factor, rs.get("mscale_all_dim", 0))
    elif rs is not None:
        raise ValueError(f"config: rope_scaling type {rs!r} is not supported")
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), freqs)
    return (angles.cos() * mul).to(dtype), (angles.sin() * mul).to(dtype)


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (x0,x1),(x2,x3),... of the last dim. x [..., T, d]; cos/sin [T, d/2]."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def softmax_scale(cfg):
    scale = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    rs = cfg.rope_scaling
    if rs is not None and rs.get("mscale_all_dim"):
        scale *= yarn_mscale(float(rs["factor"]), rs["mscale_all_dim"]) ** 2
    return scale


class Attention(nn.Module):
    """Multi-head Latent Attention, the training (non-absorbed) form."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        H = cfg.num_attention_heads
        self.qk_head_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(cfg.hidden_size, H * self.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(cfg.hidden_size, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * self.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(cfg.hidden_size, cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                                            bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, H * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                                   bias=False)
        self.o_proj = nn.Linear(H * cfg.v_head_dim, cfg.hidden_size, bias=False)
        self.scale = softmax_scale(cfg)

    def forward(self, x, cos, sin, mask):
        cfg = self.cfg
        B, T, _ = x.shape
        H, nope, rope, dv = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                             cfg.v_head_dim)
        if cfg.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, H, nope + rope).transpose(1, 2)                 # [B,H,T,nope+rope]
        q_nope, q_pe = q.split([nope, rope], dim=-1)

        kv_a = self.kv_a_proj_with_mqa(x)                                  # [B,T,rank+rope]
        c_kv, k_pe = kv_a.split([cfg.kv_lora_rank, rope], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(c_kv))
        kv = kv.view(B, T, H, nope + dv).transpose(1, 2)                   # [B,H,T,nope+dv]
        k_nope, v = kv.split([nope, dv], dim=-1)

        q_pe = apply_rope(q_pe, cos, sin)
        k_pe = apply_rope(k_pe.unsqueeze(1), cos, sin)                     # [B,1,T,rope]
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(B, H, T, rope)], dim=-1)

        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale        # [B,H,T,T]
        scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v)                                       # [B,H,T,dv]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * dv))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """The router: scores, (group-limited) top-k selection, weights; plus the balance statistics."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        if cfg.topk_method == "noaux_tc":
            # The correction bias steers selection only; it gets no gradient.
            self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts))
        else:
            self.e_score_correction_bias = None

    def forward(self, x):
        """x [N, hidden] -> indices [N,K], weights [N,K], scores [N,E]."""
        cfg = self.cfg
        N = x.shape[0]
        E, K, G = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group
        logits = F.linear(x, self.weight)
        if cfg.scoring_func == "sigmoid":
            scores = logits.sigmoid()
        else:
            scores = logits.softmax(dim=-1)
        with torch.no_grad():
            sel = scores.detach()
            if self.e_score_correction_bias is not None:
                sel = sel + self.e_score_correction_bias
            if G is not None and G > 1:
                grouped = sel.view(N, G, E // G)
                if self.e_score_correction_bias is not None:
                    group_score = grouped.topk(2, dim=-1).values.sum(-1)      # [N,G]
                else:
                    group_score = grouped.max(dim=-1).values
                keep = group_score.topk(cfg.topk_group, dim=-1).indices
                group_mask = torch.zeros_like(group_score, dtype=torch.bool)
                group_mask.scatter_(1, keep, True)
                expert_mask = group_mask.unsqueeze(-1).expand(N, G, E // G).reshape(N, E)
                sel = sel.masked_fill(~expert_mask, float("-inf"))
            indices = sel.topk(K, dim=-1).indices
        weights = scores.gather(1, indices)
        if cfg.norm_topk_prob and K > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * cfg.routed_scaling_factor
        return indices, weights, scores


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList(
            [MLP(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts)])
        if cfg.n_shared_experts:
            self.shared_experts = MLP(cfg.hidden_size, cfg.n_shared_experts * cfg.moe_intermediate_size)
        else:
            self.shared_experts = None
        self.last_routing = None  # indices [B*T,K] of the last forward, for checks
        self.last_balance = None

    def forward(self, x):
        cfg = self.cfg
        B, T, D = x.shape
        E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
        flat = x.reshape(B * T, D)
        indices, weights, scores = self.gate(flat)

        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.where(indices == e)
            if token_idx.numel() == 0:
                continue
            y = expert(flat.index_select(0, token_idx)) * weights[token_idx, slot].unsqueeze(-1)
            out.index_add_(0, token_idx, y)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)

        # Sequence-wise balance term: mean over sequences of sum_i f_i * P_i.
        with torch.no_grad():
            counts = torch.zeros(B, E, dtype=x.dtype, device=x.device)
            counts.scatter_add_(1, indices.view(B, T * K),
                                torch.ones(B, T * K, dtype=x.dtype, device=x.device))
            f = counts * (E / (K * T))
        p = (scores / scores.sum(dim=-1, keepdim=True)).view(B, T, E).mean(dim=1)
        balance = (f * p).sum(dim=-1).mean()
        self.last_routing = indices
        self.last_balance = balance.detach()
        return out.view(B, T, D), balance


class DecoderLayer(nn.Module):
    def __init__(self, cfg, idx, mtp=False):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.is_moe = cfg.is_moe_layer(idx)
        self.mlp = MoE(cfg) if self.is_moe else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if mtp:
            self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
            self.shared_head = nn.Module()
            self.shared_head.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h, cos, sin, mask):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        if self.is_moe:
            y, balance = self.mlp(self.post_attention_layernorm(h))
        else:
            y, balance = self.mlp(self.post_attention_layernorm(h)), None
        return h + y, balance


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        L, D = cfg.num_hidden_layers, cfg.num_nextn_predict_layers or 0
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            [DecoderLayer(cfg, i) for i in range(L)] +
            [DecoderLayer(cfg, L + k, mtp=True) for k in range(D)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DeepseekV3ForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def init_weights(self, std=0.006, generator=None):
        """Report init: every matrix ~ N(0, std), norms 1, correction bias 0."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, std, generator=generator)
                else:
                    p.fill_(1.0)
            for name, b in self.named_buffers():
                b.zero_()

    def forward(self, tokens, labels):
        """tokens, labels [B,T] (labels[b,i] = t_{i+1}). Returns a dict of losses and logits."""
        cfg = self.cfg
        B, T = tokens.shape
        L, D = cfg.num_hidden_layers, cfg.num_nextn_predict_layers or 0
        dtype = self.model.embed_tokens.weight.dtype
        cos, sin = rope_tables(cfg, T, dtype)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)

        balances = []
        h = self.model.embed_tokens(tokens)
        for layer in self.model.layers[:L]:
            h, bal = layer(h, cos, sin, mask)
            if bal is not None:
                balances.append(bal)
        h = self.model.norm(h)
        logits = self.lm_head(h)
        V = logits.shape[-1]
        loss_main = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1).long())

        out = {"logits": logits, "loss.main": loss_main}
        total = loss_main
        mtp_sum = 0.0
        for k in range(1, D + 1):
            layer = self.model.layers[L + k - 1]
            # Position i takes t_{i+k}; positions i >= T-k have none and get a zero embedding.
            emb = self.model.embed_tokens(tokens[:, k:])
            emb = torch.cat([emb, emb.new_zeros(B, k, emb.shape[-1])], dim=1)
            x = layer.eh_proj(torch.cat([layer.enorm(emb), layer.hnorm(h)], dim=-1))
            x, bal = layer(x, cos, sin, mask)
            if bal is not None:
                balances.append(bal)
            h = layer.shared_head.norm(x)
            mtp_logits = self.lm_head(h)
            ce_k = F.cross_entropy(mtp_logits[:, :T - k].reshape(-1, V),
                                   labels[:, k:].reshape(-1).long())
            out[f"mtp_logits.{k}"] = mtp_logits
            out[f"loss.mtp_{k}"] = ce_k
            mtp_sum = mtp_sum + ce_k
        if D > 0:
            total = total + (cfg.mtp_lambda / D) * mtp_sum
        balance_sum = sum(balances) if balances else logits.new_zeros(())
        total = total + cfg.balance_alpha * balance_sum
        out["loss.balance_sum"] = balance_sum
        out["loss.total"] = total
        return out
