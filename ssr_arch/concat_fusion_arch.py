"""``fusion: concat``: the conditions concatenated to the noisy latent at the UNet input (SR3, ResShift), a
measured baseline for AMF (docs/diffusion.md, "Fusion methods").

The raw conditions at latent size (the LR latent, the depth map, the kernel map's PCA code, in the order of
``modalities``) are stacked as extra input channels. A UNet built for ``4 + C`` input channels would have
a different input layer from the pretrained one, so instead the input convolution is extended: a trainable
convolution of the conditions with ``conv_in``'s kernel size and padding and no bias, zero-initialised,
whose output is added to ``conv_in``'s. ``conv_in(z) + ext(c)`` is exactly a convolution of the
concatenation ``[z, c]`` whose new input channels start at zero: the frozen weights stay untouched and a
new extension is the identity. No condition encoder is built (no reconstruction heads either). ``ext(c)``
does not depend on the timestep, so it is computed once per image when sampling.
"""
import torch
from torch import nn

from ssr_arch.fusion_arch import FUSION_REGISTRY, ConditionFusion, resize_to

CONCAT_TAG = 'concat'
INPUT_POINT = 'conv_in'


@FUSION_REGISTRY.register()
class ConcatFusion(ConditionFusion):
    """``fusion: concat`` (module docstring). Options (``network_g: fusion_opt``): ``zero_init`` (default true).
    ``inject`` does not apply: the conditions enter at the input only."""
    option_name = 'concat'
    uses_encoders = False

    def __init__(self, unet, modalities, inject, feature_channels, input_channels, zero_init=True):
        super().__init__(unet, modalities, inject)
        self.resolved_options = dict(zero_init=bool(zero_init))
        conv = unet.conv_in
        self[INPUT_POINT] = nn.Conv2d(sum(input_channels[m] for m in self.modalities), conv.out_channels,
                                      conv.kernel_size, conv.stride, conv.padding, bias=False)
        if zero_init:
            nn.init.zeros_(self[INPUT_POINT].weight)

    def build_points(self, unet, inject):
        return [(INPUT_POINT, unet.conv_in, unet.conv_in.out_channels, 0)]

    def conditions(self, feats):
        size = feats[self.modalities[0]][0].shape[-2:]
        cond = [resize_to(feats[m][0], size) for m in self.modalities]
        ext = self[INPUT_POINT](torch.cat(cond, dim=1))
        return {INPUT_POINT: [(CONCAT_TAG, ext)]}

    def fuse(self, name, hidden, point_conds):
        for _, ext in point_conds:
            hidden = hidden + resize_to(ext, hidden.shape[-2:]).to(hidden.dtype)
        return hidden
