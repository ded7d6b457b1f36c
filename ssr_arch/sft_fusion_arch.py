"""``fusion: sft``: spatial feature transform without normalisation (StableSR's modulation), a measured
baseline for AMF (docs/diffusion.md, "Fusion methods").

At every injection point one SFT layer reads the features of all modalities at the point's UNet level,
concatenated along the channels, and modulates the UNet feature with a per-pixel scale and shift:

    ``F_out = F_in + F_in * M_s(f) + M_t(f)``   (= ``(1 + M_s(f)) * F_in + M_t(f)``, ``f = [f_kernel, f_depth, f_lr]``)

``M_s``, ``M_t``: per-pixel MLPs (1×1 conv, ReLU, 1×1 conv) with zero-initialised output layers, so a new
layer is the identity. Against AMF (Eq. 3) it differs in two ways: no normalisation of ``F_in`` before the
modulation, and one joint modulation from all modalities instead of one per modality in turn. Since the
modulation is already one per-pixel affine map of ``F_in``, the conditions computed once per image are the
inference form too (nothing to fold).
"""
import torch
from torch import nn

from ssr_arch.fusion_arch import FUSION_REGISTRY, ConditionFusion, apply_affine, resize_to
from ssr_utils.errors import OptionError

SFT_TAG = 'sft'


class SFTModulation(nn.Module):
    """The scale and shift MLPs of one SFT layer: ``cond`` B×cond_channels×h×w -> two B×num_feat×h×w maps."""

    def __init__(self, num_feat, cond_channels, hidden=128, zero_init=True):
        super().__init__()
        for key, value in (('num_feat', num_feat), ('cond_channels', cond_channels), ('hidden', hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise OptionError(f'fusion_opt:{key}' if key == 'hidden' else key, value, 'expected a positive integer')
        self.mlp_scale = nn.Sequential(
            nn.Conv2d(cond_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_feat, 1))
        self.mlp_shift = nn.Sequential(
            nn.Conv2d(cond_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_feat, 1))
        if zero_init:
            for mlp in (self.mlp_scale, self.mlp_shift):
                nn.init.zeros_(mlp[-1].weight)
                nn.init.zeros_(mlp[-1].bias)

    def forward(self, cond):
        return self.mlp_scale(cond), self.mlp_shift(cond)


@FUSION_REGISTRY.register()
class SFTFusion(ConditionFusion):
    """``fusion: sft`` (module docstring): one :class:`SFTModulation` per injection point, keyed by the
    point's name. Options (``network_g: fusion_opt``): ``hidden`` (default 128, as AMF), ``zero_init``."""
    option_name = 'sft'

    def __init__(self, unet, modalities, inject, feature_channels, input_channels, hidden=128, zero_init=True):
        super().__init__(unet, modalities, inject)
        self.resolved_options = dict(hidden=hidden, zero_init=bool(zero_init))
        for name, _, feat_ch, level in self.points:
            cond_ch = sum(feature_channels[m][level] for m in self.modalities)
            self[name] = SFTModulation(feat_ch, cond_ch, hidden, zero_init)

    def conditions(self, feats):
        conds = {}
        for name, _, _, level in self.points:
            size = feats[self.modalities[0]][level].shape[-2:]
            cond = torch.cat([resize_to(feats[m][level], size) for m in self.modalities], dim=1)
            conds[name] = [(SFT_TAG, *self[name](cond))]
        return conds

    def fuse(self, name, hidden, point_conds):
        for _, scale, shift in point_conds:
            hidden = apply_affine(hidden, scale, shift)
        return hidden
