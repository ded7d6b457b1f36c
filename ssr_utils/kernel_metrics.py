"""Kernel PSNR over all kernels of a kernel map, registered in BasicSR's METRIC_REGISTRY.

MANet scores one kernel per image; spatially variant estimation is judged here on every LR pixel:
``PSNR = 10·log10(peak² / MSE)`` with the MSE over all k² taps of all h×w kernels of one image, and
``peak = 1`` (kernels are probability vectors, so this is MANet's ``is_kernel`` convention). A
batch is scored per image and averaged. Use it in ``val.metrics`` as ``type: calculate_kernel_psnr``;
SSR models hand it ``kernel`` (estimate) and ``kernel2`` (ground truth).
"""
import math

import numpy as np
import torch

from basicsr.utils.registry import METRIC_REGISTRY

# metric types that read kernel maps rather than images (models route their data by this set)
KERNEL_METRICS = {'calculate_kernel_psnr'}


def _as_batch(kmap, name):
    if torch.is_tensor(kmap):
        kmap = kmap.detach().cpu().double().numpy()
    kmap = np.asarray(kmap, dtype=np.float64)
    if kmap.ndim == 3:
        kmap = kmap[None]
    if kmap.ndim != 4:
        raise ValueError(f'calculate_kernel_psnr: {name} must be k²×h×w or B×k²×h×w, got shape {kmap.shape}')
    return kmap


def kernel_mse(kernel, kernel2):
    """Per-image MSE over all taps and pixels: array of length B."""
    a, b = _as_batch(kernel, 'kernel'), _as_batch(kernel2, 'kernel2')
    if a.shape != b.shape:
        raise ValueError(f'calculate_kernel_psnr: kernel shape {a.shape} differs from kernel2 shape {b.shape}')
    return ((a - b)**2).reshape(a.shape[0], -1).mean(axis=1)


@METRIC_REGISTRY.register()
def calculate_kernel_psnr(kernel, kernel2, peak=1.0, **kwargs):
    """Kernel PSNR (dB) between estimated ``kernel`` and ground-truth ``kernel2`` maps (see module doc).

    Identical maps give ``inf``. Extra keyword arguments (e.g. ``crop_border``) are ignored so the
    metric can share option blocks with image metrics.
    """
    values = []
    for mse in kernel_mse(kernel, kernel2):
        values.append(float('inf') if mse == 0 else 10.0 * math.log10(peak * peak / mse))
    return float(np.mean(values))
