"""The weight-free depth prior (``MonocularDepth(backend='prior')``), as plain functions.

It lives with the data because datasets run it on HR images that come without a depth map, and data sits
below the networks (``ssr_arch.depth_arch`` wraps it; the datasets never import an arch).
"""
import torch
from torch.nn import functional as F


def minmax_normalise(depth):
    """Per-image min-max to [0, 1] (B×1×H×W); a constant map becomes all zeros."""
    b = depth.shape[0]
    flat = depth.reshape(b, -1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    # no absolute epsilon: networks' raw outputs may have any scale
    return ((flat - lo) / torch.where(span > 0, span, torch.ones_like(span))).reshape_as(depth)


def _box_blur(x, radius):
    if radius < 1:
        return x
    x = F.pad(x, (radius, radius, radius, radius), mode='replicate')
    return F.avg_pool2d(x, 2 * radius + 1, stride=1)


def depth_prior(img, work_size=256, vertical_weight=0.6):
    """Weight-free depth prior: normalised inverse depth (1 = near), B×1×H×W, deterministic.

    Two classic monocular cues, mixed and smoothed:
    - vertical position: in most photographs the ground plane rises towards the horizon, so lower rows
      are nearer (a linear ramp, 0 at the top, 1 at the bottom);
    - local sharpness: photographs focus on the subject and the subject is usually near, so regions with
      more high-frequency energy (the local mean of |Laplacian| of the luma) are taken as nearer.
    The map is computed at ``work_size`` pixels on the long side, box-smoothed (~1/16 of the image),
    bilinearly resized back and min-max normalised per image. It is a stand-in, not a depth estimate.
    """
    b, _, hh, ww = img.shape
    x = img.float().clamp(0, 1)
    f = min(1.0, work_size / max(hh, ww))
    if f < 1.0:
        x = F.interpolate(x, size=(max(1, round(hh * f)), max(1, round(ww * f))), mode='area')
    h, w = x.shape[-2:]
    luma = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    lap_k = torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]], device=x.device).view(1, 1, 3, 3)
    lap = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode='replicate'), lap_k).abs()
    radius = max(1, round(max(h, w) / 32))
    sharp = minmax_normalise(_box_blur(lap, radius))
    ramp = torch.linspace(0.0, 1.0, h, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
    depth = _box_blur(vertical_weight * ramp + (1.0 - vertical_weight) * sharp, radius)
    if (h, w) != (hh, ww):
        depth = F.interpolate(depth, size=(hh, ww), mode='bilinear', align_corners=False)
    return minmax_normalise(depth)
