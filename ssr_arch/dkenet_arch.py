"""DKENet: depth-informed spatially variant kernel estimation (SSR section 3.2, SPEC step 2)."""
import math

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


def depth_bin_weights(depth, num_bins):
    """B x num_bins x h x w hat-function weights of each pixel's depth over [0, 1] (each pixel belongs to at
    most two neighbouring bins; the weights sum to 1 per pixel)."""
    centres = torch.linspace(0, 1, num_bins, device=depth.device, dtype=depth.dtype).view(1, -1, 1, 1)
    return (1 - (depth.clamp(0, 1) - centres).abs() * (num_bins - 1)).clamp_min(0)


class DepthBinContext(nn.Module):
    """Image-wide context read back by depth (the ``global_context`` option of DKENet).

    The kernel at a pixel is a function of its depth and of a few per-image quantities (the focus plane,
    the anisotropy and its angle), but DKENet's receptive field is local (22×22 LR pixels at the evidence
    widths). This path gives each pixel what the whole image says about blur at its depth:

    - features ``v = act(proj(f))`` are averaged over the whole image per depth bin (``num_bins`` hat
      functions over [0, 1]: each pixel belongs to at most two neighbouring bins, weights summing to 1);
    - an MLP maps the whole profile (every bin's average and share of the image) to one vector per bin,
      e.g. the blur expected at that depth given where the image is sharpest (the focus plane);
    - each pixel reads back its own bins' averages and MLP vectors, interpolated by its depth, and
      ``f + fuse([averages, vectors])`` is returned, ``fuse`` zero-initialised so the path starts as an
      identity (the paper's network).

    Without depth (``depth=None``) every pixel is in the first bin: a squeeze-excitation-style global
    average, so a network without depth gets the same image-wide view (a fair ablation).
    """

    def __init__(self, num_feat, num_bins=8, num_ctx=None):
        super().__init__()
        if num_bins < 2:
            raise ValueError(f'DepthBinContext: num_bins must be >= 2, got {num_bins}')
        c = num_ctx or max(num_feat // 2, 1)
        self.num_bins = num_bins
        self.num_ctx = c
        act = nn.LeakyReLU(0.1, inplace=True)
        self.proj = nn.Sequential(nn.Conv2d(num_feat, c, 1), act)
        self.profile = nn.Sequential(nn.Linear(num_bins * (c + 1), 2 * c), act, nn.Linear(2 * c, num_bins * c))
        self.fuse = nn.Conv2d(2 * c, num_feat, 1)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)

    def bin_weights(self, depth):
        """B x num_bins x h x w hat-function weights of each pixel's depth (they sum to 1 per pixel)."""
        return depth_bin_weights(depth, self.num_bins)

    def forward(self, feat, depth=None):
        b, _, h, w = feat.shape
        v = self.proj(feat)
        if depth is None:
            weights = feat.new_zeros(b, self.num_bins, h, w)
            weights[:, 0] = 1
        else:
            if depth.shape[-2:] != (h, w):
                depth = F.adaptive_avg_pool2d(depth, (h, w))
            weights = self.bin_weights(depth.to(feat.dtype))
        mass = weights.sum(dim=(2, 3))  # B x N
        means = torch.einsum('bnhw,bchw->bnc', weights, v) / mass.clamp_min(1e-6).unsqueeze(-1)
        per_bin = self.profile(torch.cat([means.flatten(1), mass / (h * w)], dim=1)).view(b, self.num_bins, -1)
        read = torch.einsum('bnhw,bnc->bchw', weights, torch.cat([means, per_bin], dim=2))
        return feat + self.fuse(read)


class FocusPlaneEstimator(nn.Module):
    """Weight-free estimate of the focus plane and the defocus map (the ``defocus_input`` option of DKENet).

    Thin-lens defocus grows linearly with the distance in inverse depth from the focus plane, so the blur at
    a pixel is a function of ``|d - d_f|`` once the focus plane ``d_f`` (one number per image) is known;
    depth alone, without ``d_f``, says almost nothing about the kernel (README, SVKR evidence). ``d_f`` is
    where the image is sharpest, which depth makes measurable: the luminance's Laplacian energy divided by
    its local variance (a contrast-free share of high frequencies) is summed per depth bin (hat functions
    over [0, 1], as :class:`DepthBinContext`), ``d_f`` is the bin with the highest ratio, refined by a
    parabola through its neighbours. Bins that hold less than ``min_share`` of the image are skipped.

    Returns ``(focus, defocus)``: B focus planes and the B x 1 x h x w map ``|d - d_f| / max(d_f, 1 - d_f)``
    in [0, 1] (the normalised circle of confusion; 0 in focus). Inputs are not differentiated through.
    """

    # computes in float32 (its sums of squared Laplacians overflow float16): its buffers stay float32 when a
    # pipeline casts the networks to half precision (ssr_pipelines.pipeline_ssr.float32_modules)
    keep_in_float32 = True

    def __init__(self, num_bins=8, window=5, min_share=2e-3):
        super().__init__()
        if num_bins < 3:
            raise ValueError(f'FocusPlaneEstimator: num_bins must be >= 3, got {num_bins}')
        if window < 1 or window % 2 == 0:
            raise ValueError(f'FocusPlaneEstimator: window must be odd and positive, got {window}')
        self.num_bins, self.window, self.min_share = num_bins, window, float(min_share)
        laplacian = torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]]).view(1, 1, 3, 3)
        self.register_buffer('laplacian', laplacian, persistent=False)
        self.register_buffer('luma', torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, lr, depth):
        # float32 throughout, also under autocast: the per-bin sums of squared Laplacians overflow float16
        with torch.autocast(device_type=lr.device.type, enabled=False):
            return self._estimate(lr.float(), depth.float().clamp(0, 1))

    def _estimate(self, lr, depth):
        gray = (lr * self.luma).sum(1, keepdim=True) if lr.shape[1] == 3 else lr.mean(1, keepdim=True)
        if depth.shape[-2:] != gray.shape[-2:]:
            depth = F.interpolate(depth, size=gray.shape[-2:], mode='bilinear', align_corners=False)
        high = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode='replicate'), self.laplacian).square()
        r = self.window // 2
        padded = F.pad(torch.cat([gray, gray.square()]), (r, r, r, r), mode='replicate')
        mean, mean_sq = F.avg_pool2d(padded, self.window, 1).split(gray.shape[0])
        variance = (mean_sq - mean.square()).clamp_min(0)
        n = self.num_bins
        weights = depth_bin_weights(depth, n)
        mass = weights.sum(dim=(2, 3))
        ratio = (weights * high).sum(dim=(2, 3)) / ((weights * variance).sum(dim=(2, 3)) + 1e-8)
        valid = mass >= self.min_share * depth.shape[-2] * depth.shape[-1]
        ratio = torch.where(valid, ratio, torch.full_like(ratio, -1.0))
        best = ratio.argmax(dim=1)
        focus = best.float() / (n - 1)
        # parabola through the best bin and its neighbours, where both are valid bins
        left, right = (best - 1).clamp_min(0), (best + 1).clamp_max(n - 1)
        a, b, c = (ratio.gather(1, i[:, None])[:, 0] for i in (left, best, right))
        curvature = a - 2 * b + c
        inner = (best > 0) & (best < n - 1) & (a >= 0) & (c >= 0) & (curvature < 0)
        shift = torch.where(inner, 0.5 * (a - c) / curvature.where(inner, torch.ones_like(curvature)),
                            torch.zeros_like(b))
        focus = (focus + shift / (n - 1)).clamp(0, 1)
        f = focus.view(-1, 1, 1, 1)
        defocus = (depth - f).abs() / torch.maximum(f, 1 - f).clamp_min(1e-6)
        return focus, defocus.clamp(0, 1)


class GaussianKernelHead(nn.Module):
    """Kernels as anisotropic Gaussians (the ``kernel_head: gaussian`` option of DKENet; not in the paper).

    The paper's head predicts k*k logits per pixel and normalises them with a softmax: every tap is free,
    so early in training the network sits at the mean training kernel for a long time (README, SVKR
    evidence). This head predicts three numbers per pixel instead, the Cholesky factor ``L`` of the
    inverse covariance (``l11``, ``l22`` > 0 and ``l21``), and builds the kernel
    ``k(u, v) ∝ exp(-|L^T (u, v)|^2 / 2)`` on the k x k grid (normalised by a softmax over the taps, in
    float32). Every anisotropic Gaussian with principal widths inside ``sigma_range`` (HR pixels) is
    reachable, with any angle; the output is the same B x k*k x h x w kernel map as the paper's head.
    """

    def __init__(self, num_feat, kernel_size, sigma_range=(0.2, 10.0)):
        super().__init__()
        lo, hi = (float(v) for v in sigma_range)
        if not 0 < lo < hi:
            raise ValueError(f'DKENet: sigma_range must be two increasing positive widths, got {sigma_range}')
        self.sigma_range = (lo, hi)
        # log of the diagonal of L lies between log(1 / sigma_max) and log(1 / sigma_min)
        self._log_min, self._log_span = -math.log(hi), math.log(hi / lo)
        self.conv = nn.Conv2d(num_feat, 3, 3, 1, 1)
        r = kernel_size // 2
        v, u = torch.meshgrid(torch.arange(-r, r + 1.0), torch.arange(-r, r + 1.0), indexing='ij')
        self.register_buffer('grid', torch.stack([u.flatten(), v.flatten()]).view(1, 2, -1, 1, 1), persistent=False)

    def forward(self, feat):
        raw = self.conv(feat).float()
        diag = torch.exp(self._log_min + torch.sigmoid(raw[:, :2]) * self._log_span)
        l11, l22 = diag[:, 0:1].unsqueeze(1), diag[:, 1:2].unsqueeze(1)
        l21 = raw[:, 2:3].unsqueeze(1) / self.sigma_range[1]
        u, v = self.grid[:, 0:1], self.grid[:, 1:2]
        energy = (l11 * u + l21 * v).square() + (l22 * v).square()  # B x 1 x k*k x h x w
        return torch.softmax(-0.5 * energy.squeeze(1), dim=1)


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
        global_context (bool): not in the paper. Adds a :class:`DepthBinContext` after the half-resolution
            DABlock: image features averaged over the whole image per depth bin, read back by each
            pixel's depth, plus an image-wide vector (without depth: a global average). Off by default
            (the paper's structure); see ``docs/svkr.md`` for what it changes.
        context_bins (int): depth bins of the context path.
        kernel_head (str): ``'softmax'`` (the paper: k*k logits, softmax) or ``'gaussian'`` (not in the
            paper: three numbers per pixel give an anisotropic Gaussian, :class:`GaussianKernelHead`).
        sigma_range ([float, float]): the Gaussian head's principal widths, HR pixels.
        depth_zero_init (bool): the DABlocks' SFT layers start as identities (``DABlock(sft_zero_init)``):
            the network starts as its no-depth twin.
        defocus_input (bool): not in the paper. The depth branch also reads the defocus map
            ``|d - d_f| / max(d_f, 1 - d_f)``, with the focus plane ``d_f`` estimated weight-free from the LR
            image and the depth map (:class:`FocusPlaneEstimator`); needs ``use_depth`` and ``depth_nc: 1``.
    """

    def __init__(self, in_nc=3, depth_nc=1, kernel_size=21, scale=4, num_feat=(128, 256), num_depth_feat=(32, 64),
                 split=2, reduction=4, use_depth=True, global_context=False, context_bins=8,
                 kernel_head='softmax', sigma_range=(0.2, 10.0), depth_zero_init=False, defocus_input=False):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'DKENet: kernel_size must be odd and positive, got {kernel_size}')
        if scale < 1:
            raise ValueError(f'DKENet: scale must be >= 1, got {scale}')
        c0, c1 = _pair(num_feat, 'num_feat')
        self.kernel_size = kernel_size
        self.scale = scale
        self.use_depth = use_depth
        if defocus_input and (not use_depth or depth_nc != 1):
            raise ValueError('DKENet: defocus_input needs use_depth: true and depth_nc: 1 (it reads the focus plane '
                             f'off one depth map), got use_depth={use_depth}, depth_nc={depth_nc}')
        self.focus_estimator = FocusPlaneEstimator() if defocus_input else None
        if use_depth:
            d0, d1 = _pair(num_depth_feat, 'num_depth_feat')
            self.depth_branch = _DepthBranch(depth_nc + (1 if defocus_input else 0), (d0, d1))
        else:
            d0 = d1 = 0
        self.conv_first = nn.Conv2d(in_nc, c0, 3, 1, 1)
        self.block0 = DABlock(c0, d0, split, reduction, sft_zero_init=depth_zero_init)
        self.down = nn.Conv2d(c0, c1, 2, 2, 0)
        self.block1 = DABlock(c1, d1, split, reduction, sft_zero_init=depth_zero_init)
        self.context = DepthBinContext(c1, context_bins) if global_context else None
        self.up = nn.ConvTranspose2d(c1, c0, 2, 2, 0)
        self.block2 = DABlock(c0, d0, split, reduction, sft_zero_init=depth_zero_init)
        if kernel_head not in ('softmax', 'gaussian'):
            raise ValueError(f"DKENet: kernel_head must be 'softmax' or 'gaussian', got {kernel_head!r}")
        self.kernel_head = kernel_head
        if kernel_head == 'gaussian':
            self.gaussian = GaussianKernelHead(c0, kernel_size, sigma_range)
        else:
            self.conv_last = nn.Conv2d(c0, kernel_size * kernel_size, 3, 1, 1)

    def forward(self, lr, depth=None, upscale=False):
        """``lr`` B x 3 x h x w, ``depth`` B x 1 x h' x w' (resized to h x w when it differs) ->
        kernel map B x k*k x h x w (``upscale=True``: B x k*k x s*h x s*w, nearest)."""
        if lr.dim() != 4:
            raise ValueError(f'DKENet: lr must be B x C x h x w, got shape {tuple(lr.shape)}')
        x, (h, w) = pad_to_multiple(lr, 2)
        feats = (None, None, None)
        depth_half = None
        if self.use_depth:
            if depth is None:
                raise ValueError('DKENet: built with use_depth=True, so forward needs a depth map')
            if depth.shape[-2:] != (h, w):
                depth = F.interpolate(depth, size=(h, w), mode='bilinear', align_corners=False)
            branch_in = depth.to(lr.dtype)
            if self.focus_estimator is not None:
                _, defocus = self.focus_estimator(lr, branch_in)
                branch_in = torch.cat([branch_in, defocus.to(lr.dtype)], dim=1)
            branch_in, _ = pad_to_multiple(branch_in, 2)
            feats = self.depth_branch(branch_in)
            depth_half = F.avg_pool2d(branch_in[:, :depth.shape[1]], 2)
        f0 = self.block0(self.conv_first(x), feats[0])
        f1 = self.block1(self.down(f0), feats[1])
        if self.context is not None:
            f1 = self.context(f1, depth_half)
        f2 = self.block2(self.up(f1) + f0, feats[2])
        if self.kernel_head == 'gaussian':
            kernel = self.gaussian(f2[..., :h, :w])
        else:
            logits = self.conv_last(f2)[..., :h, :w]
            # softmax in float32: under autocast the k*k-way normalisation loses too much in half precision
            kernel = torch.softmax(logits.float(), dim=1)
        if upscale:
            kernel = self.upscale(kernel)
        return kernel

    def upscale(self, kernel):
        """LR-size kernel map to HR size (each kernel repeated over its s x s HR pixels)."""
        return F.interpolate(kernel, scale_factor=self.scale, mode='nearest')
