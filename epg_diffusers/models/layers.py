"""Building blocks shared by the EPG generator and the RCM pre-training encoder.

Module and parameter names match the reference checkpoints (reference notes section 2.5), so a
reference state dict loads with no renaming.
"""

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn


class LayerNorm32(nn.LayerNorm):
    """LayerNorm whose statistics are computed in float32 and cast back (as the reference)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class EPGAttnProcessor:
    """Multi-head self-attention through diffusers' attention dispatch (fused SDPA by default).

    The backend is read at call time (``model.set_attention_backend(...)``), never fixed at import.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn: "EPGAttention", hidden_states: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = hidden_states.shape
        # packed qkv with channel layout (3, heads, head_dim), 3 outermost (reference layout)
        qkv = attn.qkv(hidden_states).view(batch, tokens, 3, attn.num_heads, -1)  # B N 3 H Dh
        query, key, value = qkv.unbind(dim=2)  # each B N H Dh
        out = dispatch_attention_fn(
            query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config
        )  # B N H Dh
        return attn.proj_drop(attn.proj(out.reshape(batch, tokens, -1)))


class EPGAttention(nn.Module, AttentionModuleMixin):
    """Self-attention with a bias-free packed qkv projection and a biased output projection."""

    _default_processor_cls = EPGAttnProcessor
    _available_processors = [EPGAttnProcessor]

    def __init__(self, dim: int, num_heads: int, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by `num_heads`={num_heads}.")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.set_processor(EPGAttnProcessor())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.processor(self, hidden_states)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (ratio 4, no dropout: the reference never wires it)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EPGEncoderBlock(nn.Module):
    """Pre-norm ViT block: x += attn(norm1(x)); x += mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = LayerNorm32(dim)
        self.attn = EPGAttention(dim, num_heads)
        self.norm2 = LayerNorm32(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift (DiT)."""
    return x * (1 + scale) + shift


class EPGDecoderBlock(nn.Module):
    """Decoder block: mirrored skip fusion (concat -> linear -> LayerNorm), then an adaLN-Zero DiT block."""

    def __init__(self, dim: int, num_heads: int, skip_dim: int, cond_dim: int, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        self.skip_linear = nn.Linear(dim + skip_dim, dim)
        self.skip_norm = LayerNorm32(dim)
        self.norm1 = LayerNorm32(dim)  # keeps its own affine, unlike DiT
        self.attn = EPGAttention(dim, num_heads, proj_drop=drop)  # the only dropout in EPG (0.5 for consistency)
        self.norm2 = LayerNorm32(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.skip_norm(self.skip_linear(torch.cat([x, skip], dim=-1)))  # B T D
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(cond).chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens (conv with bias, no norm)."""

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # B N D


def time_token(timestep: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoid [cos, sin] of the network time (max period 1e4, float32), no MLP: the reference's time token."""
    emb = get_timestep_embedding(timestep.float().reshape(-1), dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    return emb.to(dtype)  # B D


class ViTTrunkMixin:
    """The shared encoder trunk: [CLS, TIME, patches] tokens, learned position embedding, pre-norm blocks."""

    def _build_trunk(self, sample_size, patch_size, in_channels, depth, embed_dim, num_heads, mlp_ratio):
        if sample_size % patch_size:
            raise ValueError(f"`sample_size`={sample_size} is not divisible by `patch_size`={patch_size}.")
        num_patches = (sample_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 + num_patches, embed_dim))  # CLS, TIME, patches
        self.blocks = nn.ModuleList([EPGEncoderBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = LayerNorm32(embed_dim)

    def _init_trunk(self):
        """MoCo v3 initialisation of the trunk (reference notes section 2.2)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            if isinstance(module, EPGAttention):
                # xavier bound computed per q/k/v slice: sqrt(6 / (D + D))
                bound = math.sqrt(6.0 / (2 * module.qkv.in_features))
                nn.init.uniform_(module.qkv.weight, -bound, bound)
        conv = self.patch_embed.proj
        bound = math.sqrt(6.0 / (conv.weight[0].numel() + conv.out_channels))  # fan 3 p^2 + D
        nn.init.uniform_(conv.weight, -bound, bound)
        nn.init.zeros_(conv.bias)

    def _trunk(self, x: torch.Tensor, timestep: torch.Tensor, cls_extra: torch.Tensor | None = None):
        """Run the trunk; returns (all tokens after the last block, un-normed outputs of every block, time token)."""
        patches = self.patch_embed(x)  # B N D
        temb = time_token(timestep, patches.shape[-1], patches.dtype).expand(patches.shape[0], -1)  # B D
        cls = self.cls_token.to(patches.dtype).expand(patches.shape[0], -1, -1)  # B 1 D
        if cls_extra is not None:
            cls = cls + cls_extra[:, None].to(patches.dtype)
        tokens = torch.cat([cls, temb[:, None], patches], dim=1) + self.pos_embed.to(patches.dtype)  # B 2+N D
        skips = []
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = self._gradient_checkpointing_func(block, tokens)
            else:
                tokens = block(tokens)
            skips.append(tokens)
        return tokens, skips, temb
