"""Relative (affine-invariant) inverse depth: alignment, the MiDaS training loss and accuracy metrics.

A monocular network predicts inverse depth only up to an unknown scale and shift (MiDaS, DPT, Depth
Anything). Every comparison with ground truth therefore first fits, per image and by least squares over the
valid pixels, the scale ``s`` and shift ``t`` that bring the prediction closest to the target:
``argmin_{s,t} Σ m·(s·p + t − d)²`` (:func:`align_scale_shift`).

- **Loss** (:class:`ssr_utils.depth_loss.ScaleShiftInvariantLoss`, registered in BasicSR's LOSS_REGISTRY): MiDaS's
  scale-and-shift-invariant loss (Ranftl et al., TPAMI 2022, section 5): prediction and target are aligned
  per image -- by default each normalised by its median and mean absolute deviation (their Eq. 6-7,
  L_ssimae), or the prediction least-squares fitted to the target (L_ssimse) -- and the mean residual ``R``
  over the valid pixels of the batch is taken, plus ``grad_weight`` × the multi-scale gradient matching term
  (their Eq. 11, four scales): the mean of ``|∂x R| + |∂y R|`` at the residual subsampled by 1, 2, 4, 8.
- **Metrics** (:func:`depth_accuracy`, registered as ``calculate_depth_absrel`` / ``calculate_depth_delta1`` in
  :mod:`ssr_utils.depth_metrics`):
  MiDaS's evaluation of relative depth. The prediction is aligned, in inverse-depth (disparity) space, to the
  ground-truth disparity ``1/Z``; the aligned disparity is clamped below at the image's smallest ground-truth
  disparity (so no predicted depth lies beyond the farthest true depth of the image, MiDaS's depth cap taken
  per image), turned into depth ``Ẑ = 1/disparity`` and compared with the true depth ``Z`` pixel by pixel:
  ``AbsRel = mean |Ẑ − Z| / Z`` (lower is better) and ``δ1 = mean[max(Ẑ/Z, Z/Ẑ) < 1.25]`` (the fraction of
  pixels within 25 %, higher is better). Images are scored one by one and averaged.

The ground truth must be the true disparity (or any positive multiple of it): a min-max normalised inverse
depth has lost its shift, and with it the depth ratios that AbsRel and δ1 measure. Scenes from
``ssr_data.scenes`` give it exactly (``lo + d·(hi − lo)`` with ``meta['inv_depth_range'] = (lo, hi)``).
"""
import numpy as np
import torch

DELTA1_THRESHOLD = 1.25


def _as_b1hw(x, name):
    if not torch.is_tensor(x):
        x = torch.as_tensor(np.asarray(x))
    while x.dim() < 4:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f'{name}: expected an H×W, 1×H×W or B×1×H×W map, got shape {tuple(x.shape)}')
    return x


def align_scale_shift(pred, target, mask=None, eps=1e-12):
    """Per-image least-squares scale and shift: returns ``(s·pred + t, s, t)`` with ``s``, ``t`` of shape B×1×1×1.

    ``pred``, ``target``: B×1×H×W (or H×W); ``mask``: same shape, nonzero = valid (default: all pixels). An
    image whose valid prediction is constant gets ``s = 0`` and ``t`` = the target's mean (the best affine
    fit). Differentiable in ``pred``.
    """
    pred, target = _as_b1hw(pred, 'pred'), _as_b1hw(target, 'target')
    if pred.shape != target.shape:
        raise ValueError(f'align_scale_shift: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ')
    m = torch.ones_like(target) if mask is None else _as_b1hw(mask, 'mask').to(target.dtype)
    dims = (1, 2, 3)
    n = m.sum(dims, keepdim=True).clamp_min(1.0)
    # centred normal equations: better conditioned than the raw 2×2 system for large offsets
    p_mean = (m * pred).sum(dims, keepdim=True) / n
    d_mean = (m * target).sum(dims, keepdim=True) / n
    pc, dc = (pred - p_mean) * m, (target - d_mean) * m
    var = (pc * pc).sum(dims, keepdim=True)
    cov = (pc * dc).sum(dims, keepdim=True)
    scale = torch.where(var > eps, cov / var.clamp_min(eps), torch.zeros_like(var))
    shift = d_mean - scale * p_mean
    return scale * pred + shift, scale, shift


def normalise_median_mad(x, mask=None, eps=1e-8):
    """Per image ``(x − median) / mean|x − median|`` over the valid pixels (MiDaS's scale-and-shift
    normalisation, Eq. 6-7): invariant to any shift and any POSITIVE scale of ``x``; a negative scale flips it."""
    x = _as_b1hw(x, 'x')
    m = torch.ones_like(x, dtype=torch.bool) if mask is None else _as_b1hw(mask, 'mask') > 0
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        v = x[b][m[b]]
        if v.numel() == 0:
            continue
        med = v.median()
        mad = (v - med).abs().mean()
        out[b] = (x[b] - med) / mad.clamp_min(eps)
    return out * m.to(x.dtype)


def depth_accuracy(pred, disparity, mask=None):
    """AbsRel and δ1 of a relative inverse-depth prediction against the true disparity, per image.

    Args:
        pred: B×1×H×W (or H×W) relative inverse depth (any scale and shift; e.g. min-max normalised).
        disparity: same shape, the true inverse depth 1/Z (> 0 where valid), or any positive multiple.
        mask: optional, nonzero = valid; pixels with disparity <= 0 are always left out.
    Returns:
        dict ``absrel`` and ``delta1``: float64 numpy arrays of length B (see the module doc for the exact
        computation).
    """
    pred = _as_b1hw(pred, 'pred').double()
    disp = _as_b1hw(disparity, 'disparity').double().to(pred.device)
    if pred.shape != disp.shape:
        raise ValueError(f'depth_accuracy: prediction {tuple(pred.shape)} and disparity {tuple(disp.shape)} differ')
    valid = disp > 0
    if mask is not None:
        valid = valid & (_as_b1hw(mask, 'mask').to(pred.device) > 0)
    absrel, delta1 = [], []
    for b in range(pred.shape[0]):
        v = valid[b:b + 1]
        if not bool(v.any()):
            raise ValueError(f'depth_accuracy: image {b} has no valid pixel (disparity > 0)')
        aligned, _, _ = align_scale_shift(pred[b:b + 1], disp[b:b + 1], v)
        d_true = disp[b:b + 1][v]
        d_pred = aligned[v].clamp_min(float(d_true.min()))
        z_true, z_pred = 1.0 / d_true, 1.0 / d_pred
        absrel.append(float(((z_pred - z_true).abs() / z_true).mean()))
        ratio = torch.maximum(z_pred / z_true, z_true / z_pred)
        delta1.append(float((ratio < DELTA1_THRESHOLD).double().mean()))
    return {'absrel': np.asarray(absrel), 'delta1': np.asarray(delta1)}
