"""The depth losses (``train: *_opt: type: ...``), registered in BasicSR's LOSS_REGISTRY; ``ssr_utils/*_loss.py``
modules are imported by :func:`ssr_utils.registry_scan.import_losses_and_metrics` (BasicSR's discovery of
``basicsr/losses/*_loss.py``). The relative-depth alignment they use: :mod:`ssr_utils.relative_depth`."""
import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import LOSS_REGISTRY

from ssr_utils.relative_depth import align_scale_shift, normalise_median_mad


def _gradient_matching(residual, mask, scales):
    """MiDaS's multi-scale gradient matching term: Σ_k mean over valid pairs of |∂x R_k| + |∂y R_k|."""
    total = residual.new_zeros(())
    for k in range(scales):
        step = 2**k
        r, m = residual[:, :, ::step, ::step], mask[:, :, ::step, ::step]
        if r.shape[-1] < 2 and r.shape[-2] < 2:
            break
        mx = m[..., 1:] * m[..., :-1]
        my = m[..., 1:, :] * m[..., :-1, :]
        gx = (r[..., 1:] - r[..., :-1]).abs() * mx
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs() * my
        total = total + (gx.sum() + gy.sum()) / m.sum().clamp_min(1.0)
    return total


@LOSS_REGISTRY.register()
class ScaleShiftInvariantLoss(nn.Module):
    """MiDaS's scale-and-shift-invariant loss with multi-scale gradient matching (see the module doc).

    Args:
        loss_weight (float): weight of the whole loss.
        alignment (str): how prediction and target are brought together per image:
            ``median`` (default; MiDaS's L_ssimae: both normalised by :func:`normalise_median_mad`, then the
            mean absolute difference) -- invariant to shift and positive scale, and it fixes the sign, so
            larger outputs always mean nearer (what ``MonocularDepth`` assumes);
            ``lstsq`` (MiDaS's L_ssimse: the prediction least-squares aligned to the target by
            :func:`align_scale_shift`, then the mean squared residual) -- invariant to any scale, including a
            negative one, so only for networks whose sign is already right (fine-tuning a MiDaS model).
        grad_weight (float): weight α of the gradient matching term (MiDaS: 0.5; 0 = off).
        grad_scales (int): number of scales K of the gradient term (MiDaS: 4).
    ``forward(pred, target, mask=None)``: B×1×H×W tensors; ``pred`` is resized (bilinear) to the target's
    size when they differ; ``mask`` marks valid target pixels.
    """

    def __init__(self, loss_weight=1.0, alignment='median', grad_weight=0.5, grad_scales=4):
        super().__init__()
        if alignment not in ('median', 'lstsq'):
            raise ValueError(f'ScaleShiftInvariantLoss: alignment must be median or lstsq, got {alignment!r}')
        if grad_weight < 0 or int(grad_scales) < 1:
            raise ValueError('ScaleShiftInvariantLoss: grad_weight must be >= 0 and grad_scales >= 1')
        self.loss_weight = float(loss_weight)
        self.alignment = alignment
        self.grad_weight = float(grad_weight)
        self.grad_scales = int(grad_scales)

    def forward(self, pred, target, mask=None):
        if pred.dim() == 3:
            pred = pred.unsqueeze(1)
        if target.dim() == 3:
            target = target.unsqueeze(1)
        pred = pred.float()
        target = target.float()
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred, size=target.shape[-2:], mode='bilinear', align_corners=False)
        m = torch.ones_like(target) if mask is None else mask.to(target.dtype)
        n = m.sum().clamp_min(1.0)
        if self.alignment == 'median':
            residual = (normalise_median_mad(pred, m) - normalise_median_mad(target, m)) * m
            data = residual.abs().sum() / n
        else:
            aligned, _, _ = align_scale_shift(pred, target, m)
            residual = (aligned - target) * m
            data = residual.square().sum() / n
        loss = data
        if self.grad_weight > 0:
            loss = loss + self.grad_weight * _gradient_matching(residual, m, self.grad_scales)
        return self.loss_weight * loss
