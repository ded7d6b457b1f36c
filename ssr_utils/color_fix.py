"""Colour correction of a diffusion SR result against the (upsampled) LR input, as in StableSR.

* ``adain_color_fix``: per image and channel, give the result the mean and standard deviation of the
  reference.
* ``wavelet_color_fix``: keep the result's high frequencies and take the low-frequency band from the
  reference (an a-trous decomposition with a 3x3 binomial kernel and dilations 1, 2, 4, ...).

Both take B x 3 x H x W RGB tensors in [0, 1] of the same size and return the same.
"""
import torch
from torch.nn import functional as F


def adain_color_fix(img, ref, eps=1e-5):
    if img.shape != ref.shape:
        raise ValueError(f'adain_color_fix: image {tuple(img.shape)} and reference {tuple(ref.shape)} differ')
    mean_i, std_i = img.mean((2, 3), keepdim=True), img.std((2, 3), keepdim=True)
    mean_r, std_r = ref.mean((2, 3), keepdim=True), ref.std((2, 3), keepdim=True)
    return ((img - mean_i) / (std_i + eps) * std_r + mean_r).clamp(0, 1)


def _blur(img, dilation):
    k1 = torch.tensor([1., 2., 1.], dtype=img.dtype, device=img.device) / 4
    kernel = (k1[:, None] * k1[None, :]).expand(img.shape[1], 1, 3, 3)
    pad = dilation
    mode = 'reflect' if min(img.shape[-2:]) > pad else 'replicate'
    img = F.pad(img, (pad, pad, pad, pad), mode=mode)
    return F.conv2d(img, kernel, groups=img.shape[1], dilation=dilation)


def wavelet_decompose(img, levels=5):
    """``(high, low)`` with ``high + low == img``."""
    high = torch.zeros_like(img)
    low = img
    for i in range(levels):
        blurred = _blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(img, ref, levels=5):
    if img.shape != ref.shape:
        raise ValueError(f'wavelet_color_fix: image {tuple(img.shape)} and reference {tuple(ref.shape)} differ')
    high, _ = wavelet_decompose(img, levels)
    _, low_ref = wavelet_decompose(ref, levels)
    return (high + low_ref).clamp(0, 1)


def color_fix(img, ref, method):
    """``method``: ``adain``, ``wavelet`` or ``none`` / None."""
    if method in (None, 'none'):
        return img
    if method == 'adain':
        return adain_color_fix(img, ref)
    if method == 'wavelet':
        return wavelet_color_fix(img, ref)
    from ssr_utils.compat import OptionError
    raise OptionError('color_fix', method, 'expected adain, wavelet or none')
