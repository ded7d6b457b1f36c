"""Adaptive Multi-modal Fusion (AMF), paper Eq. (3).

``F_out = (1 + M_alpha(f)) * BN(F_in) + M_beta(f)`` with ``M_alpha`` / ``M_beta`` per-pixel MLPs
(1x1 convolutions, hidden width 128, ReLU) on a condition feature map ``f``.

Initialisation (a documented deviation, see docs/diffusion.md): with ``zero_init=True`` the output
layers of both MLPs start at zero, so ``M_alpha = M_beta = 0``. In the paper's form
(``residual=False``) that makes a new AMF equal to ``BN(F_in)``, which is *not* the identity: put into
a frozen pretrained UNet it would change every prediction at step 0 and throw the diffusion prior
away. ``residual=True`` therefore carries the raw feature on the unmodulated path,

    ``F_out = F_in + M_alpha(f) * BN(F_in) + M_beta(f)``

which is Eq. (3) plus ``F_in - BN(F_in)``: the modulation terms are exactly the paper's, and a new
AMF is exactly the identity. Both forms are available; SSRUNet uses ``residual=True`` by default.

At inference the norm is a fixed per-channel affine map (BatchNorm with running statistics in eval mode),
so with ``alpha``, ``beta`` computed once per image an AMF is one per-pixel affine map of ``F_in``:
``F_out = F_in + (F_in * gain + shift)`` (:meth:`AMF.folded_modulation`); SSRUNet composes the AMFs of
one injection point into one such map, so a sampling step pays two elementwise passes per point instead
of a norm and three elementwise passes per modality.

``AMFFusion`` is the ``fusion: amf`` method of SSRUNet (``ssr_arch/fusion_arch.py``): the AMF layers of every
injection point and modality, their per-image modulations and the fold.
"""
import torch
from torch import nn

from basicsr.utils.registry import ARCH_REGISTRY

from ssr_arch.fusion_arch import FUSION_REGISTRY, ConditionFusion, apply_affine, resize_to
from ssr_utils.errors import OptionError

# modality tag of an injection point whose AMF layers are composed into one affine map (AMFFusion.fold)
FOLDED = 'folded'


def _norm_layer(norm, channels, num_groups):
    if norm == 'batch':
        return nn.BatchNorm2d(channels)
    if norm == 'group':
        groups = min(num_groups, channels)
        while channels % groups:
            groups -= 1
        return nn.GroupNorm(groups, channels)
    if norm in ('none', None):
        return nn.Identity()
    raise OptionError('norm', norm, 'expected batch, group or none')


@ARCH_REGISTRY.register()
class AMF(nn.Module):
    """One AMF layer (Eq. 3) for one modality.

    Args:
        num_feat (int): channels of the modulated feature ``F_in``.
        cond_channels (int): channels of the condition feature ``f``.
        hidden (int): hidden width of ``M_alpha`` and ``M_beta`` (paper: 128).
        norm (str): ``batch`` (paper), ``group`` or ``none``.
        residual (bool): identity-at-init form (see the module docstring); False = literal Eq. (3).
        zero_init (bool): zero the output layers of ``M_alpha`` and ``M_beta``.
        num_groups (int): groups for ``norm: group``.
    """

    def __init__(self, num_feat, cond_channels, hidden=128, norm='batch', residual=True, zero_init=True, num_groups=32):
        super().__init__()
        for key, value in (('num_feat', num_feat), ('cond_channels', cond_channels), ('hidden', hidden)):
            if not isinstance(value, int) or value <= 0:
                raise OptionError(key, value, 'expected a positive integer')
        self.num_feat = num_feat
        self.cond_channels = cond_channels
        self.residual = residual
        self.norm = _norm_layer(norm, num_feat, num_groups)
        self.mlp_alpha = nn.Sequential(
            nn.Conv2d(cond_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_feat, 1))
        self.mlp_beta = nn.Sequential(
            nn.Conv2d(cond_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_feat, 1))
        if zero_init:
            for mlp in (self.mlp_alpha, self.mlp_beta):
                nn.init.zeros_(mlp[-1].weight)
                nn.init.zeros_(mlp[-1].bias)

    def modulation(self, cond, size=None):
        """``(M_alpha(f), M_beta(f))``; they depend on ``f`` only, so samplers compute them once."""
        if cond.shape[1] != self.cond_channels:
            raise ValueError(f'AMF: condition has {cond.shape[1]} channels, expected {self.cond_channels}')
        if size is not None:
            cond = resize_to(cond, size)
        return self.mlp_alpha(cond), self.mlp_beta(cond)

    def apply_modulation(self, feat, alpha, beta):
        """Eq. (3) (or its residual form) for precomputed ``alpha``, ``beta``."""
        size = feat.shape[-2:]
        alpha, beta = resize_to(alpha, size).to(feat.dtype), resize_to(beta, size).to(feat.dtype)
        normed = self.norm(feat)
        if self.residual:
            return feat + alpha * normed + beta
        return (1 + alpha) * normed + beta

    def norm_affine(self):
        """The norm as per-channel ``(scale, shift)`` (float32) when it is a fixed affine map: no norm, or
        BatchNorm in eval mode with running statistics. None when it depends on the feature (BatchNorm in
        training mode or without running statistics, GroupNorm)."""
        norm = self.norm
        if isinstance(norm, nn.Identity):
            ones = torch.ones(self.num_feat, device=self.mlp_alpha[0].weight.device)
            return ones, torch.zeros_like(ones)
        if not isinstance(norm, nn.BatchNorm2d) or norm.training or norm.running_mean is None:
            return None
        scale = torch.rsqrt(norm.running_var.float() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.float()
        shift = -norm.running_mean.float() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.float()
        return scale, shift

    def folded_modulation(self, alpha, beta):
        """Eq. (3) for fixed ``alpha``, ``beta`` as ``F_out = F_in + (F_in * gain + shift)``: returns float32
        ``(gain, shift)`` of ``alpha``'s shape, or None when the norm is not a fixed affine map
        (:meth:`norm_affine`). The gain is kept apart from the 1 of the residual path, so half precision
        rounds the small modulation, not ``1 + modulation``."""
        affine = self.norm_affine()
        if affine is None:
            return None
        scale, shift = (v.to(alpha.device).view(1, -1, 1, 1) for v in affine)
        alpha, beta = alpha.float(), beta.float()
        if self.residual:  # F + a(sF + t) + b
            return alpha * scale, alpha * shift + beta
        # (1 + a)(sF + t) + b = F + ((1 + a)s - 1)F + (1 + a)t + b
        return (1 + alpha) * scale - 1, (1 + alpha) * shift + beta

    def forward(self, feat, cond):
        """``feat``: B x num_feat x H x W; ``cond``: B x cond_channels x h x w (resized to H x W)."""
        if feat.shape[1] != self.num_feat:
            raise ValueError(f'AMF: feature has {feat.shape[1]} channels, expected {self.num_feat}')
        alpha, beta = self.modulation(cond, feat.shape[-2:])
        return self.apply_modulation(feat, alpha, beta)


@FUSION_REGISTRY.register()
class AMFFusion(ConditionFusion):
    """``fusion: amf`` (default, the paper's): one :class:`AMF` per injection point and modality, keyed
    ``<point>_<modality>``; at every point the modalities act one after another in the order of
    ``modalities``. Options: the ``AMF`` arguments (``network_g: amf``). At inference each point's layers
    are composed into one per-pixel affine map where their norms are fixed (:meth:`fold`)."""
    option_name = 'amf'
    foldable = True

    def __init__(self, unet, modalities, inject, feature_channels, input_channels, **options):
        super().__init__(unet, modalities, inject)
        self.resolved_options = dict(options)
        for name, _, feat_ch, level in self.points:
            for m in self.modalities:
                self[f'{name}_{m}'] = AMF(feat_ch, feature_channels[m][level], **options)

    def conditions(self, feats):
        """Per injection point, the list ``[(modality, alpha, beta), ...]`` in application order."""
        return {name: [(m, *self[f'{name}_{m}'].modulation(feats[m][level])) for m in self.modalities]
                for name, _, _, level in self.points}

    def fold(self, conds):
        """Each injection point's AMF layers composed into one per-pixel affine map, where they can be.

        Where every AMF of a point has a fixed norm (eval mode, :meth:`AMF.norm_affine`) and its modalities'
        modulations share one size, the point's list becomes ``[(FOLDED, gain, shift)]``: the point then
        computes ``h + (h * gain + shift)``, the same numbers as applying the AMFs one after another (up to
        rounding) in two elementwise passes instead of four per modality. Other points are kept as they are.
        ``gain`` and ``shift`` have the modulations' dtype; they are composed in float32."""
        folded = {}
        for name, entries in conds.items():
            gain = shift = None
            for m, alpha, beta in entries:
                ab = None if m == FOLDED else self[f'{name}_{m}'].folded_modulation(alpha, beta)
                if ab is None or (gain is not None and ab[0].shape != gain.shape):
                    gain = None
                    break
                if gain is None:
                    gain, shift = ab
                else:  # h(1 + G) + S, then (1 + g) and s: 1 + G' = (1 + G)(1 + g), S' = S(1 + g) + s
                    g, s = ab
                    gain, shift = gain + g + gain * g, shift + shift * g + s
            dtype = entries[0][1].dtype if entries else None
            folded[name] = entries if gain is None else [(FOLDED, gain.to(dtype), shift.to(dtype))]
        return folded

    def fuse(self, name, hidden, point_conds):
        for m, alpha, beta in point_conds:
            if m == FOLDED:
                hidden = apply_affine(hidden, alpha, beta)
            else:
                hidden = self[f'{name}_{m}'].apply_modulation(hidden, alpha, beta)
        return hidden

