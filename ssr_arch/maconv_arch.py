"""MAConv (mutual affine convolution, MANet) and DABlock (depth-aware block, SSR section 3.2).

Also holds ``SFTLayer``, the spatial feature transform shared by DABlock and NBSR.
"""
import torch
from torch import nn as nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY


def split_sizes(channels, parts):
    """Split ``channels`` into ``parts`` groups whose sizes differ by at most one (larger groups first).

    MANet splits with ``channels // parts`` and silently drops the remainder (and reuses the
    input split for the output), which breaks when ``channels`` is not divisible or in != out.
    """
    base, extra = divmod(channels, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class SFTLayer(nn.Module):
    """Spatial feature transform: ``feat * (1 + scale(cond)) + shift(cond)``.

    The ``1 +`` lets ``zero_init=True`` start the layer as an identity, so that a conditioned network
    can start from the behaviour of its unconditioned twin when that is wanted.
    """

    def __init__(self, num_feat, num_cond, num_hidden=None, zero_init=False):
        super().__init__()
        num_hidden = num_hidden or max(num_cond, 16)
        self.scale = nn.Sequential(
            nn.Conv2d(num_cond, num_hidden, 1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(num_hidden, num_feat, 1))
        self.shift = nn.Sequential(
            nn.Conv2d(num_cond, num_hidden, 1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(num_hidden, num_feat, 1))
        if zero_init:
            for branch in (self.scale, self.shift):
                nn.init.zeros_(branch[-1].weight)
                nn.init.zeros_(branch[-1].bias)

    def forward(self, feat, cond):
        if cond.shape[-2:] != feat.shape[-2:]:
            raise ValueError(f'SFTLayer: condition size {tuple(cond.shape[-2:])} does not match feature size '
                             f'{tuple(feat.shape[-2:])}')
        return feat * (1 + self.scale(cond)) + self.shift(cond)


@ARCH_REGISTRY.register()
class MAConv(nn.Module):
    """Mutual affine convolution.

    The input channels are split into ``split`` groups. Each group is modulated by a scale
    (sigmoid) and a shift that a small 1x1-conv MLP predicts from all the *other* groups, then
    convolved on its own to its share of the output channels; the outputs are concatenated.
    Any ``in_channels`` / ``out_channels`` with ``split <= min(in_channels, out_channels)`` work.

    Args:
        in_channels (int), out_channels (int): channel counts.
        kernel_size (int), stride (int), padding (int | None), bias (bool): of the group convs
            (``padding=None``: ``kernel_size // 2``).
        split (int): number of groups (>= 2, MANet uses 2).
        reduction (int): hidden width of the affine MLP = other-group channels // reduction.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, bias=True, split=2,
                 reduction=2):
        super().__init__()
        if split < 2:
            raise ValueError(f'MAConv: split must be >= 2 (groups modulate each other), got {split}')
        if split > min(in_channels, out_channels):
            raise ValueError(f'MAConv: split={split} needs at least {split} input and output channels, got '
                             f'in_channels={in_channels}, out_channels={out_channels}')
        if reduction < 1:
            raise ValueError(f'MAConv: reduction must be >= 1, got {reduction}')
        padding = kernel_size // 2 if padding is None else padding
        self.in_splits = split_sizes(in_channels, split)
        self.out_splits = split_sizes(out_channels, split)
        self.affine = nn.ModuleList()
        self.convs = nn.ModuleList()
        for c_in, c_out in zip(self.in_splits, self.out_splits):
            c_other = in_channels - c_in
            hidden = max(c_other // reduction, 1)
            self.affine.append(
                nn.Sequential(
                    nn.Conv2d(c_other, hidden, 1, bias=True), nn.ReLU(inplace=True),
                    nn.Conv2d(hidden, 2 * c_in, 1, bias=True)))
            self.convs.append(nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=bias))

    def forward(self, x):
        groups = torch.split(x, self.in_splits, dim=1)
        outs = []
        for i, (affine, conv) in enumerate(zip(self.affine, self.convs)):
            others = torch.cat(groups[:i] + groups[i + 1:], dim=1)
            scale, shift = affine(others).chunk(2, dim=1)
            outs.append(conv(groups[i] * torch.sigmoid(scale) + shift))
        return torch.cat(outs, dim=1)


@ARCH_REGISTRY.register()
class DABlock(nn.Module):
    """Depth-aware block: SFT(features, depth features) -> split in two halves -> per half
    MAConv-ReLU-MAConv -> concat -> residual add (onto the block input).

    Args:
        num_feat (int): feature channels (>= 2 * split, so that each half can be split again).
        num_depth_feat (int): depth feature channels; 0 builds the block without SFT (no depth),
            and ``forward`` then ignores ``depth_feat``.
        split (int), reduction (int): of the MAConvs.
        sft_zero_init (bool): start the SFT as an identity (its output layers zero), so the block starts
            as its no-depth twin and depth enters only as training finds it useful.
    """

    def __init__(self, num_feat=64, num_depth_feat=32, split=2, reduction=2, sft_zero_init=False):
        super().__init__()
        if num_feat < 2 * split:
            raise ValueError(f'DABlock: num_feat={num_feat} must be >= 2 * split ({2 * split})')
        self.use_depth = num_depth_feat > 0
        self.sft = SFTLayer(num_feat, num_depth_feat, zero_init=sft_zero_init) if self.use_depth else None
        self.halves = split_sizes(num_feat, 2)
        self.branches = nn.ModuleList([
            nn.Sequential(
                MAConv(c, c, 3, split=split, reduction=reduction), nn.ReLU(inplace=True),
                MAConv(c, c, 3, split=split, reduction=reduction)) for c in self.halves
        ])

    def forward(self, x, depth_feat=None):
        feat = x
        if self.use_depth:
            if depth_feat is None:
                raise ValueError('DABlock was built with depth features (num_depth_feat > 0) but got none')
            feat = self.sft(feat, depth_feat)
        parts = torch.split(feat, self.halves, dim=1)
        return x + torch.cat([branch(p) for branch, p in zip(self.branches, parts)], dim=1)


def pad_to_multiple(x, multiple):
    """Replicate-pad the bottom/right of ``x`` to a multiple of ``multiple``; returns (padded, (h, w))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode='replicate')
    return x, (h, w)
