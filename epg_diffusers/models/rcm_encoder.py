"""RCMEncoderModel: the stage-1 pre-training encoder (ViT trunk + 3-layer BatchNorm projector)."""

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .layers import ViTTrunkMixin
from .loading import LoadingMixin


@dataclass
class RCMEncoderOutput(BaseOutput):
    """
    Args:
        projection (`torch.Tensor` of shape `(B, projector_dim)`): projector output of the normed CLS token
            (used by the contrastive term and as the frozen perceptual feature in consistency fine-tuning).
        features (`torch.Tensor` of shape `(B, embed_dim)`): the normed CLS token (representation consistency).
    """

    projection: torch.Tensor
    features: torch.Tensor


def build_projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear, bias-free linears, no final BN (MoCo v3)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim, bias=False),
    )


class RCMEncoderModel(LoadingMixin, ModelMixin, ConfigMixin, AttentionMixin, ViTTrunkMixin):
    """The RCM encoder E(c_in x, 250 ln sigma): [CLS, TIME, patches] ViT whose CLS token feeds a projector.

    After pre-training, the trunk (everything but ``projection_head``) initialises the encoder of
    :class:`EPGTransformer2DModel` with identical parameter names.

    Args:
        sample_size (`int`, defaults to 256): image height and width in pixels.
        patch_size (`int`, defaults to 16): patch size; `sample_size` must be divisible by it.
        in_channels (`int`, defaults to 3): image channels.
        depth (`int`, defaults to 12): encoder blocks.
        embed_dim (`int`, defaults to 768): width.
        num_heads (`int`, defaults to 12): attention heads.
        mlp_ratio (`float`, defaults to 4.0): MLP hidden width / width.
        projector_hidden_dim (`int`, defaults to 4096): projector hidden width.
        projector_dim (`int`, defaults to 256): projector output width.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["EPGEncoderBlock"]
    _repeated_blocks = ["EPGEncoderBlock"]
    _skip_layerwise_casting_patterns = ["patch_embed", "pos_embed", "cls_token", "norm", "projection_head"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 256,
        patch_size: int = 16,
        in_channels: int = 3,
        depth: int = 12,
        embed_dim: int = 768,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        projector_hidden_dim: int = 4096,
        projector_dim: int = 256,
    ):
        super().__init__()
        self.gradient_checkpointing = False
        self._build_trunk(sample_size, patch_size, in_channels, depth, embed_dim, num_heads, mlp_ratio)
        self.projection_head = build_projector(embed_dim, projector_hidden_dim, projector_dim)
        self._init_trunk()
        for layer in self.projection_head:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)

    def forward(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, return_dict: bool = True
    ) -> RCMEncoderOutput | tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(B, C, H, W)`): the preconditioned image c_in(sigma) x_sigma.
            timestep (`torch.Tensor` of shape `(B,)` or `()`): network time 250 ln sigma (shifted sigma).
            return_dict (`bool`, defaults to `True`): return an `RCMEncoderOutput` rather than a tuple.
        """
        tokens, _, _ = self._trunk(hidden_states, timestep)
        features = self.norm(tokens[:, 0])  # B D: the normed CLS token only
        projection = self.projection_head(features)  # B projector_dim
        if not return_dict:
            return (projection, features)
        return RCMEncoderOutput(projection=projection, features=features)

    def trunk_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder weights that initialise an EPG generator (projector dropped)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("projection_head.")}
