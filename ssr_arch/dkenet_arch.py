"""DKENet: depth-informed spatially variant kernel estimation (SSR section 3.2, SPEC step 2)."""
import torch
from torch import nn as nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY
from ssr_arch.maconv_arch import DABlock, pad_to_multiple


def _pair(value, name):
    if isinstance(value, int):
        return [value, 2 * value]
    value = list(value)
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f'DKENet: {name} must be an int or two positive ints (full / half resolution), got {value}')
    return value


class _DepthBranch(nn.Module):
    """Depth feature extractor with the LR branch's shape: features at full, half and again full resolution,
    one set for each DABlock of the LR branch."""

    def __init__(self, in_nc, num_feat):
        super().__init__()
        c0, c1 = num_feat
        act = nn.LeakyReLU(0.1, inplace=True)
        self.head = nn.Sequential(nn.Conv2d(in_nc, c0, 3, 1, 1), act, nn.Conv2d(c0, c0, 3, 1, 1), act)
        self.down = nn.Sequential(nn.Conv2d(c0, c1, 2, 2, 0), act, nn.Conv2d(c1, c1, 3, 1, 1), act)
        self.up = nn.ConvTranspose2d(c1, c0, 2, 2, 0)
        self.tail = nn.Sequential(nn.Conv2d(c0, c0, 3, 1, 1), act)

    def forward(self, depth):
        f0 = self.head(depth)
        f1 = self.down(f0)
        f2 = self.tail(self.up(f1) + f0)
        return f0, f1, f2


@ARCH_REGISTRY.register()
class DKENet(nn.Module):
    """Depth-informed kernel estimation network.

    LR branch: 3x3 conv -> DABlock -> downsample (x1/2) -> DABlock -> upsample (x2, + skip) -> DABlock
    -> conv -> softmax over the k*k channels of each pixel. The depth branch has the same shape and
    feeds each DABlock through its SFT layer at the matching scale.

    Defaults are the paper's setting (k = 21, x4) with MANet's widths, so ``type: DKENet`` alone builds it.

    Args:
        in_nc (int): image channels.
        depth_nc (int): depth channels.
        kernel_size (int): k; the output has k*k channels, row-major kernels that sum to one.
        scale (int): SR scale, used by ``upscale=True`` (nearest, as MANet).
        num_feat (int | [int, int]): LR branch widths at full / half resolution.
        num_depth_feat (int | [int, int]): depth branch widths at full / half resolution.
        split (int), reduction (int): of the MAConvs.
        use_depth (bool): False builds no depth branch (the MANet-like ablation); ``forward`` then
            ignores the depth argument.
    """

    def __init__(self, in_nc=3, depth_nc=1, kernel_size=21, scale=4, num_feat=(128, 256), num_depth_feat=(32, 64),
                 split=2, reduction=4, use_depth=True):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'DKENet: kernel_size must be odd and positive, got {kernel_size}')
        if scale < 1:
            raise ValueError(f'DKENet: scale must be >= 1, got {scale}')
        c0, c1 = _pair(num_feat, 'num_feat')
        self.kernel_size = kernel_size
        self.scale = scale
        self.use_depth = use_depth
        if use_depth:
            d0, d1 = _pair(num_depth_feat, 'num_depth_feat')
            self.depth_branch = _DepthBranch(depth_nc, (d0, d1))
        else:
            d0 = d1 = 0
        self.conv_first = nn.Conv2d(in_nc, c0, 3, 1, 1)
        self.block0 = DABlock(c0, d0, split, reduction)
        self.down = nn.Conv2d(c0, c1, 2, 2, 0)
        self.block1 = DABlock(c1, d1, split, reduction)
        self.up = nn.ConvTranspose2d(c1, c0, 2, 2, 0)
        self.block2 = DABlock(c0, d0, split, reduction)
        self.conv_last = nn.Conv2d(c0, kernel_size * kernel_size, 3, 1, 1)

    def forward(self, lr, depth=None, upscale=False):
        """``lr`` B x 3 x h x w, ``depth`` B x 1 x h' x w' (resized to h x w when it differs) ->
        kernel map B x k*k x h x w (``upscale=True``: B x k*k x s*h x s*w, nearest)."""
        if lr.dim() != 4:
            raise ValueError(f'DKENet: lr must be B x C x h x w, got shape {tuple(lr.shape)}')
        x, (h, w) = pad_to_multiple(lr, 2)
        feats = (None, None, None)
        if self.use_depth:
            if depth is None:
                raise ValueError('DKENet: built with use_depth=True, so forward needs a depth map')
            if depth.shape[-2:] != (h, w):
                depth = F.interpolate(depth, size=(h, w), mode='bilinear', align_corners=False)
            depth, _ = pad_to_multiple(depth.to(lr.dtype), 2)
            feats = self.depth_branch(depth)
        f0 = self.block0(self.conv_first(x), feats[0])
        f1 = self.block1(self.down(f0), feats[1])
        f2 = self.block2(self.up(f1) + f0, feats[2])
        logits = self.conv_last(f2)[..., :h, :w]
        # softmax in float32: under autocast the k*k-way normalisation loses too much in half precision
        kernel = torch.softmax(logits.float(), dim=1)
        if upscale:
            kernel = self.upscale(kernel)
        return kernel

    def upscale(self, kernel):
        """LR-size kernel map to HR size (each kernel repeated over its s x s HR pixels)."""
        return F.interpolate(kernel, scale_factor=self.scale, mode='nearest')
