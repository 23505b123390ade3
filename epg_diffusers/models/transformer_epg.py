"""EPGTransformer2DModel: the EPG generator (pre-trained ViT encoder + adaLN-Zero decoder with skip fusion)."""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .layers import EPGDecoderBlock, LayerNorm32, ViTTrunkMixin
from .loading import LoadingMixin


class EPGTransformer2DModel(LoadingMixin, ModelMixin, ConfigMixin, AttentionMixin, ViTTrunkMixin):
    """The EPG generator F(c_in x, 250 ln sigma, y): a ViT encoder and a decoder that both see every token.

    Tokens are [CLS + class embedding, time token, patches]; the encoder is the RCM pre-training trunk,
    the decoder fuses the mirrored encoder outputs (U-ViT style) and is conditioned by adaLN-Zero on
    time sinusoid + class embedding. The output is the raw network output F; the scheduler turns it into x0.

    Args:
        sample_size (`int`, defaults to 256): image height and width in pixels.
        patch_size (`int`, defaults to 16): patch size p; `sample_size` must be divisible by it.
        in_channels (`int`, defaults to 3): image channels.
        depth (`int`, defaults to 12): encoder blocks.
        embed_dim (`int`, defaults to 768): encoder width.
        num_heads (`int`, defaults to 12): encoder attention heads.
        decoder_depth (`int`, defaults to 12): decoder blocks (each gets the mirrored encoder block's output).
        decoder_embed_dim (`int`, defaults to 1584): decoder width.
        decoder_num_heads (`int`, defaults to 22): decoder attention heads.
        mlp_ratio (`float`, defaults to 4.0): MLP hidden width / width.
        num_classes (`int`, defaults to 1000): classes; label `num_classes` is the null (unconditional) class.
        decoder_dropout (`float`, defaults to 0.0): dropout after the decoder attention projections
            (0.5 for consistency fine-tuning).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["EPGEncoderBlock", "EPGDecoderBlock"]
    _repeated_blocks = ["EPGEncoderBlock", "EPGDecoderBlock"]
    _skip_layerwise_casting_patterns = ["patch_embed", "pos_embed", "cls_token", "class_embed", "norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 256,
        patch_size: int = 16,
        in_channels: int = 3,
        depth: int = 12,
        embed_dim: int = 768,
        num_heads: int = 12,
        decoder_depth: int = 12,
        decoder_embed_dim: int = 1584,
        decoder_num_heads: int = 22,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        decoder_dropout: float = 0.0,
    ):
        super().__init__()
        if decoder_depth > depth:
            raise ValueError(f"`decoder_depth`={decoder_depth} exceeds `depth`={depth}: every decoder block needs a skip.")
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
        self.gradient_checkpointing = False
        self._build_trunk(sample_size, patch_size, in_channels, depth, embed_dim, num_heads, mlp_ratio)
        self.class_embed = nn.Embedding(num_classes + 1, embed_dim)  # last row = null class
        self.encoder_to_decoder = (
            nn.Linear(embed_dim, decoder_embed_dim) if decoder_embed_dim != embed_dim else nn.Identity()
        )
        self.decoder_blocks = nn.ModuleList(
            [
                EPGDecoderBlock(decoder_embed_dim, decoder_num_heads, embed_dim, embed_dim, mlp_ratio, decoder_dropout)
                for _ in range(decoder_depth)
            ]
        )
        self.out_norm = LayerNorm32(decoder_embed_dim)
        self.out = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_channels)
        self._init_weights()

    def _init_weights(self):
        self._init_trunk()
        for module in [self.encoder_to_decoder, self.decoder_blocks]:  # new layers: xavier-uniform, zero bias
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        for block in self.decoder_blocks:  # adaLN-Zero: every residual branch starts gated off
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.out.weight)  # zero head: F = 0 at initialisation
        nn.init.zeros_(self.out.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W); the channel is the innermost index within a patch."""
        p, c = self.config.patch_size, self.config.in_channels
        side = self.config.sample_size // p
        x = x.reshape(x.shape[0], side, side, p, p, c)  # B m n p1 p2 C
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, side * p, side * p)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        class_labels: torch.Tensor,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(B, C, H, W)`): the preconditioned image c_in(sigma) x_sigma.
            timestep (`torch.Tensor` of shape `(B,)` or `()`): network time 250 ln sigma (shifted sigma).
            class_labels (`torch.LongTensor` of shape `(B,)`): labels in [0, num_classes]; num_classes is null.
            return_dict (`bool`, defaults to `True`): return a `Transformer2DModelOutput` rather than a tuple.
        """
        y = self.class_embed(class_labels).to(self.patch_embed.proj.weight.dtype)  # B D_enc
        tokens, skips, temb = self._trunk(hidden_states, timestep, cls_extra=y)
        tokens = self.encoder_to_decoder(self.norm(tokens))  # B T D_dec
        cond = (temb + y.to(temb.dtype))[:, None]  # B 1 D_enc: time sinusoid + class embedding
        for block in self.decoder_blocks:
            skip = skips.pop()  # mirrored: first decoder block gets the last encoder block's output
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = self._gradient_checkpointing_func(block, tokens, skip, cond)
            else:
                tokens = block(tokens, skip, cond)
        out = self.unpatchify(self.out(self.out_norm(tokens[:, 2:])))  # drop CLS and TIME tokens
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)
