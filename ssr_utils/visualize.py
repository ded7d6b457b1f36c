"""Images of SSR's side outputs: depth maps and kernel-variance heat maps (paper Fig. 4 / Fig. 8).

All image functions return ``H×W×3`` uint8 **BGR** arrays (what ``basicsr.utils.imwrite`` / cv2 write);
``add_tb_image`` converts to RGB for TensorBoard.
"""
import cv2
import numpy as np
import torch
from torch.nn import functional as F

_COLORMAPS = {
    'inferno': cv2.COLORMAP_INFERNO,
    'magma': cv2.COLORMAP_MAGMA,
    'viridis': cv2.COLORMAP_VIRIDIS,
    'jet': cv2.COLORMAP_JET,
    'turbo': cv2.COLORMAP_TURBO,
}


def kernel_variance(kernel_map):
    """Spatial spread of every kernel: trace of its covariance, in pixels² (``B×k²×h×w`` -> ``B×1×h×w``).

    A wide (blurrier) kernel gives a large value; it is the scalar the heat maps show.
    """
    if kernel_map.dim() != 4:
        raise ValueError(f'kernel_variance: expected B×k²×h×w, got {tuple(kernel_map.shape)}')
    kk = kernel_map.shape[1]
    k = int(round(kk**0.5))
    if k * k != kk:
        raise ValueError(f'kernel_variance: {kk} channels is not a square k²')
    kmap = kernel_map.float()
    kmap = kmap / kmap.sum(dim=1, keepdim=True).clamp_min(1e-12)
    r = k // 2
    ax = torch.arange(-r, r + 1, dtype=kmap.dtype, device=kmap.device)
    yy, xx = torch.meshgrid(ax, ax, indexing='ij')
    yy, xx = yy.reshape(1, kk, 1, 1), xx.reshape(1, kk, 1, 1)
    my, mx = (kmap * yy).sum(1, keepdim=True), (kmap * xx).sum(1, keepdim=True)
    return (kmap * ((yy - my)**2 + (xx - mx)**2)).sum(1, keepdim=True)


def colorize(values, vmin=None, vmax=None, colormap='inferno'):
    """``H×W`` array/tensor to a heat map (uint8 BGR). ``vmin``/``vmax`` default to the data range;
    ``colormap=None`` gives grey levels."""
    if torch.is_tensor(values):
        values = values.detach().float().cpu().numpy()
    values = np.asarray(values, dtype=np.float64).squeeze()
    if values.ndim != 2:
        raise ValueError(f'colorize: expected a single-channel H×W map, got shape {values.shape}')
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if vmin is None and finite.size else float(vmin or 0.0)
    hi = float(finite.max()) if vmax is None and finite.size else float(vmax if vmax is not None else 1.0)
    scaled = np.clip((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1)
    gray = (scaled * 255.0 + 0.5).astype(np.uint8)
    if colormap is None:
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if colormap not in _COLORMAPS:
        raise ValueError(f'colorize: unknown colormap {colormap!r} (known: {", ".join(sorted(_COLORMAPS))})')
    return cv2.applyColorMap(gray, _COLORMAPS[colormap])


def depth_image(depth, colormap='inferno', size=None):
    """Depth map (``[B×]1×H×W`` or ``H×W`` in [0, 1], 1 = near; the first image of a batch) as uint8 BGR.
    Fixed range [0, 1], so images of one run compare; ``size=(H, W)`` resizes (nearest)."""
    if torch.is_tensor(depth):
        depth = depth.detach().float().cpu()
        while depth.dim() > 2:
            depth = depth[0]
        if size is not None and tuple(depth.shape) != tuple(size):
            depth = F.interpolate(depth[None, None], size=tuple(size), mode='nearest')[0, 0]
    return colorize(depth, 0.0, 1.0, colormap)


def kernel_variance_image(kernel_map, vmax=None, colormap='inferno', size=None):
    """Heat map of the kernel variance of the first kernel map of a batch (uint8 BGR).

    ``vmax`` fixes the top of the colour scale (e.g. to compare estimate and ground truth); default: the
    map's own maximum. ``size=(H, W)`` repeats each LR pixel (nearest) to show it beside the SR image.
    """
    if kernel_map.dim() == 3:
        kernel_map = kernel_map[None]
    var = kernel_variance(kernel_map[:1])
    if size is not None and tuple(var.shape[-2:]) != tuple(size):
        var = F.interpolate(var, size=tuple(size), mode='nearest')
    return colorize(var[0, 0], 0.0, vmax, colormap)


def add_tb_image(tb_logger, tag, img_bgr, step):
    """Log a uint8 BGR image to TensorBoard (no-op without a logger or with a non-integer step)."""
    if tb_logger is None or not isinstance(step, (int, np.integer)):
        return
    rgb = np.ascontiguousarray(img_bgr[..., ::-1])
    tb_logger.add_image(tag, rgb, int(step), dataformats='HWC')
