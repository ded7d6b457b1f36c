"""Baseline JPEG (4:2:0, IJG quality scaling) simulated with torch ops, batched on any device.

OpenCV (libjpeg-turbo) is the reference codec of the per-sample path (:func:`ssr_data.degradations.
jpeg_compress`). :func:`simulate_jpeg` follows the same pipeline step by step so that, at the same
integer quality, it lands close to OpenCV's round trip without leaving the training device:

1. RGB levels (``round(255·x)``) to full-range YCbCr (JFIF), each plane rounded to integers;
2. Cb and Cr averaged over 2×2 pixels with libjpeg's alternating rounding bias (1, 2, 1, 2, ...);
3. planes padded to whole 16×16 macro-blocks as libjpeg pads them (repeated last column of the image; for the
   rows, the last image row for Y and the last downsampled row for Cb / Cr), level-shifted by 128;
4. 8×8 orthonormal DCT-II per block (libjpeg's integer DCT approximates the same transform), each
   coefficient divided by the table entry and rounded half away from zero;
5. the IJG tables (ITU-T T.81 Annex K.1) scaled by the quality as libjpeg's ``jpeg_quality_scaling``
   does (``5000/q`` below 50, ``200 − 2q`` from 50, entries clamped to [1, 255]);
6. decoding: dequantise, inverse DCT, +128, rounded and clamped to [0, 255];
7. chroma upsampled with libjpeg-turbo's "fancy" triangle filter (weights 9/16, 3/16, 3/16, 1/16 with its
   +8 / +7 rounding) over the chroma samples that cover the image, their edges repeated;
8. YCbCr back to RGB with the JFIF matrix, rounded, clamped.

What differs from libjpeg-turbo: its integer DCT / IDCT (13-bit fixed-point rotations) against exact float
transforms here, so a coefficient lying within about 10⁻³ of a rounding boundary may quantise to the
neighbouring level, and the fixed-point colour tables against float matrices (±1 level at most before
rounding). No Huffman stage (lossless). The measured distance to OpenCV's output is in
``docs/degradations.md`` and checked by ``tests/test_batch_degradation.py``.
"""
import math

import torch
from torch.nn import functional as F

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), row-major
_LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99) + (99, ) * 32


def quant_tables(quality):
    """IJG-scaled (luma, chroma) quantisation tables for integer qualities: ``B`` -> two ``B×8×8`` float tensors."""
    q = torch.as_tensor(quality, dtype=torch.long).reshape(-1)
    if bool(((q < 1) | (q > 100)).any()):
        raise ValueError(f'JPEG qualities must lie in [1, 100], got {q.tolist()}')
    scale = torch.where(q < 50, 5000 // q, 200 - 2 * q)[:, None]  # integer arithmetic, as libjpeg
    tables = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        t = (torch.tensor(base, dtype=torch.long)[None] * scale + 50) // 100
        tables.append(t.clamp_(1, 255).float().view(-1, 8, 8))
    return tables


def _dct_matrix(device, dtype):
    """Orthonormal 8-point DCT-II matrix D (row u = frequency): coefficients = D · block · Dᵀ."""
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n[None] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


def _round_half_up(x):
    return torch.floor(x + 0.5)


def _codec_plane(plane, table, dct):
    """Quantise and reconstruct one plane (B×H×W levels, H and W multiples of 8) with B×8×8 tables."""
    b, h, w = plane.shape
    blocks = (plane - 128.0).view(b, h // 8, 8, w // 8, 8).transpose(2, 3)  # B×by×bx×8×8
    coef = dct @ blocks @ dct.t()
    table = table[:, None, None]
    ratio = coef / table
    levels = torch.sign(ratio) * torch.floor(ratio.abs() + 0.5)  # libjpeg rounds half away from zero
    rec = dct.t() @ (levels * table) @ dct
    rec = _round_half_up(rec + 128.0).clamp_(0, 255)
    return rec.transpose(2, 3).reshape(b, h, w)


def _downsample_chroma(plane):
    """2×2 average with libjpeg's h2v2 bias: (sum + 1) >> 2 in even output columns, (sum + 2) >> 2 in odd."""
    b, h, w = plane.shape
    sums = plane.view(b, h // 2, 2, w // 2, 2).sum(dim=(2, 4))
    bias = torch.ones(w // 2, device=plane.device, dtype=plane.dtype)
    bias[1::2] = 2
    return torch.floor((sums + bias) / 4)


def _upsample_chroma(plane):
    """libjpeg-turbo's h2v2 "fancy" upsampling: a triangle filter, nearer sample weighted 3, edges repeated."""
    p = F.pad(plane[:, None], (0, 0, 1, 1), mode='replicate')[:, 0]  # rows above / below repeated
    upper = 3 * plane + p[:, :-2]  # column sums for the upper output row of each input row
    lower = 3 * plane + p[:, 2:]
    out = []
    for colsum in (upper, lower):
        c = F.pad(colsum[:, None], (1, 1, 0, 0), mode='replicate')[:, 0]
        even = torch.floor((3 * colsum + c[:, :, :-2] + 8) / 16)
        odd = torch.floor((3 * colsum + c[:, :, 2:] + 7) / 16)
        out.append(torch.stack([even, odd], dim=-1).flatten(-2))  # B×h×2w
    return torch.stack(out, dim=2).flatten(1, 2)  # B×2h×2w


@torch.no_grad()
def simulate_jpeg(img, quality):
    """JPEG round trip of a batch at integer qualities, on ``img``'s device.

    Args:
        img (Tensor): B×3×h×w RGB in [0, 1] (rounded to 8-bit levels first, as the OpenCV path does).
        quality (Tensor | list[int]): B integer qualities in [1, 100].

    Returns:
        Tensor: B×3×h×w float32 in [0, 1] on 8-bit levels.
    """
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f'simulate_jpeg: expected B×3×h×w RGB, got {tuple(img.shape)}')
    b, _, h, w = img.shape
    luma_t, chroma_t = (t.to(img.device) for t in quant_tables(quality))
    if luma_t.shape[0] != b:
        raise ValueError(f'simulate_jpeg: {luma_t.shape[0]} qualities for a batch of {b}')
    x = img.detach().float().clamp(0, 1).mul(255.0).round()
    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    x = F.pad(x, (0, wp - w, 0, hp - h), mode='replicate')
    r, g, bl = x.unbind(1)
    y = _round_half_up(0.299 * r + 0.587 * g + 0.114 * bl)
    # libjpeg rounds Cb / Cr with ONE_HALF - 1 (2⁻¹⁶ less than a half) so that they never reach 256
    half = 0.5 - 2.0**-16
    cb = torch.floor(-0.168735892 * r - 0.331264108 * g + 0.5 * bl + 128.0 + half)
    cr = torch.floor(0.5 * r - 0.418687589 * g - 0.081312411 * bl + 128.0 + half)
    dct = _dct_matrix(img.device, torch.float32)
    y = _codec_plane(y, luma_t, dct)[:, :h, :w]
    hc, wc = -(-h // 2), -(-w // 2)

    def chroma(plane):
        # libjpeg pads the columns before downsampling but the rows after it: the full-resolution rows to
        # an even count, then the last downsampled row down to the block boundary
        down = _downsample_chroma(plane[:, :2 * hc])
        down = F.pad(down[:, None], (0, 0, 0, hp // 2 - hc), mode='replicate')[:, 0]
        # the decoder upsamples the samples that cover the image, repeating their last row / column
        return _upsample_chroma(_codec_plane(down, chroma_t, dct)[:, :hc, :wc])[:, :h, :w] - 128.0

    cb, cr = chroma(cb), chroma(cr)
    r = y + _round_half_up(1.402 * cr)
    g = y + _round_half_up(-0.344136286 * cb - 0.714136286 * cr)
    bl = y + _round_half_up(1.772 * cb)
    out = torch.stack([r, g, bl], dim=1).clamp_(0, 255)
    return out.div_(255.0)
