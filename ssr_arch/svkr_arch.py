"""SVKR: spatially variant kernel refinement, Algorithm 1 of the paper (SPEC step 4)."""
import json
import os.path as osp
from copy import deepcopy

import torch
from torch import nn as nn
from torch.nn import functional as F

from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY
from ssr_utils.checkpoint import read_state_dict


def load_subnetwork(net, path, param_key='params_ema', strict=True, label='network'):
    """Load BasicSR checkpoint ``path`` (``{'params': ..., 'params_ema': ...}`` or a bare state dict) into
    ``net``. ``param_key`` falls back to ``params`` when absent, as BasicSR's ``load_network``."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'SVKR: checkpoint for the {label} does not exist: {path}')
    state, _ = read_state_dict(path, param_key)
    try:
        net.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise RuntimeError(f'SVKR: {path} does not fit the {label} ({type(net).__name__}): {err}') from None
    get_root_logger().info(f'SVKR: loaded the {label} ({type(net).__name__}) from {path} [{param_key}]')


@ARCH_REGISTRY.register()
class SVKR(nn.Module):
    """Depth estimator DE, kernel estimator KE (DKENet) and non-blind SR (NBSR) iterated T times.

    ``I⁰ = LR``, ``D⁰ = DE(I⁰)``, ``K⁰ = KE(LR, D⁰)``; for t < T: ``Dᵗ⁺¹ = DE(Iᵗ)`` (resized to the LR
    size), ``Kᵗ⁺¹ = γ·KE(LR, Dᵗ⁺¹) + (1 − γ)·Kᵗ``, ``Iᵗ⁺¹ = NBSR(LR, Kᵗ⁺¹)``.

    Because ``I⁰ = LR``, the first iteration's ``D¹ = DE(LR) = D⁰`` and ``KE(LR, D¹) = K⁰``, so
    ``K¹ = K⁰``; this is used instead of recomputing them (same result, one DE and one KE pass fewer).
    For ``T = 0``, ``Iᵀ`` is defined as ``NBSR(LR, K⁰)`` so that the output is always an SR image; and
    in the per-iteration lists ``srs[t] = NBSR(LR, Kᵗ)`` for every t = 0..T (``srs[0]`` is computed only
    when asked for, or when T = 0). ``forward(lr, need_sr=False)`` skips the last NBSR pass (``Iᵀ``, then
    None) for callers that want only ``Dᵀ`` and ``Kᵀ``, such as SSR's conditions: same maps, one NBSR
    pass fewer.

    Args:
        num_iter (int): T (0 allowed).
        gamma (float): γ in [0, 1].
        use_depth (bool): False = the no-depth ablation: no depth estimator is built, KE is built without
            its depth branch (``kernel_opt.use_depth`` is overridden) and the returned depths are None.
        depth_opt (dict): the depth estimator (default ``{type: MonocularDepth}``); frozen, no gradient.
        kernel_opt (dict): the kernel estimator (default ``{type: DKENet}``).
        sr_opt (dict): the non-blind SR network (default ``{type: NBSR}``).
        scale (int | None), kernel_size (int | None): when given, set in both kernel_opt and sr_opt.
        pretrain_network_kernel (str | None), pretrain_network_sr (str | None): BasicSR checkpoints of
            DKENet / NBSR (e.g. ``experiments/<stage 1>/models/net_g_latest.pth``).
        param_key (str): key to read in those checkpoints (``params`` is used when it is absent).
        freeze_kernel (bool), freeze_sr (bool): keep a sub-network fixed when fine-tuning the loop.
    """

    def __init__(self, num_iter=3, gamma=0.9, use_depth=True, depth_opt=None, kernel_opt=None, sr_opt=None,
                 scale=None, kernel_size=None, pretrain_network_kernel=None, pretrain_network_sr=None,
                 param_key='params_ema', freeze_kernel=False, freeze_sr=False):
        super().__init__()
        # the options that rebuild this architecture; the weights (sub-network checkpoints included) are in
        # its state dict, so the checkpoint paths are not part of it
        self.config = json.loads(json.dumps(dict(
            num_iter=num_iter, gamma=gamma, use_depth=use_depth, depth_opt=depth_opt, kernel_opt=kernel_opt,
            sr_opt=sr_opt, scale=scale, kernel_size=kernel_size, freeze_kernel=freeze_kernel, freeze_sr=freeze_sr),
            default=str))
        if not isinstance(num_iter, int) or num_iter < 0:
            raise ValueError(f'SVKR: num_iter (T) must be an integer >= 0, got {num_iter!r}')
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f'SVKR: gamma must be in [0, 1], got {gamma!r}')
        self.num_iter = num_iter
        self.gamma = float(gamma)
        self.use_depth = bool(use_depth)
        depth_opt, kernel_opt, sr_opt = self.network_options(use_depth, depth_opt, kernel_opt, sr_opt, scale,
                                                             kernel_size)
        if self.use_depth:
            self.depth_net = build_network(depth_opt)
            for p in self.depth_net.parameters():
                p.requires_grad_(False)
            self.depth_net.eval()
        else:
            self.depth_net = None
        self.kernel_net = build_network(kernel_opt)
        self.sr_net = build_network(sr_opt)
        k_scale, s_scale = getattr(self.kernel_net, 'scale', None), getattr(self.sr_net, 'scale', None)
        if k_scale is not None and s_scale is not None and k_scale != s_scale:
            raise ValueError(f'SVKR: kernel_opt scale {k_scale} differs from sr_opt scale {s_scale}')
        self.scale = s_scale
        if pretrain_network_kernel:
            load_subnetwork(self.kernel_net, pretrain_network_kernel, param_key, label='kernel estimator')
        if pretrain_network_sr:
            load_subnetwork(self.sr_net, pretrain_network_sr, param_key, label='non-blind SR network')
        for flag, net in ((freeze_kernel, self.kernel_net), (freeze_sr, self.sr_net)):
            if flag:
                for p in net.parameters():
                    p.requires_grad_(False)

    @staticmethod
    def network_options(use_depth=True, depth_opt=None, kernel_opt=None, sr_opt=None, scale=None, kernel_size=None):
        """The option dicts SVKR builds its three sub-networks from (copies): the defaults filled in,
        ``use_depth`` set in ``kernel_opt``, ``scale`` / ``kernel_size`` (when given) in ``kernel_opt`` and
        ``sr_opt``; ``depth_opt`` is None without depth. E.g. to compare an SVKR's DKENet with the stage 1
        network whose checkpoint it loads."""
        kernel_opt = deepcopy(kernel_opt) if kernel_opt else {'type': 'DKENet'}
        sr_opt = deepcopy(sr_opt) if sr_opt else {'type': 'NBSR'}
        kernel_opt['use_depth'] = bool(use_depth)
        for key, value in (('scale', scale), ('kernel_size', kernel_size)):
            if value is not None:
                kernel_opt[key] = value
                sr_opt[key] = value
        depth_opt = (deepcopy(depth_opt) if depth_opt else {'type': 'MonocularDepth'}) if use_depth else None
        return depth_opt, kernel_opt, sr_opt

    def train(self, mode=True):
        super().train(mode)
        if self.depth_net is not None:
            self.depth_net.eval()  # frozen: BN/dropout of a pretrained depth network stay in inference mode
        return self

    def estimate_depth(self, img, size):
        """DE(img) at ``size`` (the LR size); None without depth."""
        if self.depth_net is None:
            return None
        with torch.no_grad():
            depth = self.depth_net(img.float())
            if depth.shape[-2:] != tuple(size):
                shrink = depth.shape[-2] > size[0]
                depth = F.interpolate(depth, size=size, mode='bilinear', align_corners=False, antialias=shrink)
            return depth.clamp_(0, 1).to(img.dtype)

    def forward(self, lr, return_all=False, need_sr=True, sr_with_kernel=None):
        """``sr_with_kernel``: a kernel map (e.g. the sample's ground truth) NBSR also runs on, returned as
        ``out['sr_with_kernel']``; through forward, so that DDP sees it (stage 3's ground-truth kernel loss)."""
        size = tuple(lr.shape[-2:])
        depth = self.estimate_depth(lr, size)  # D⁰ = DE(I⁰), I⁰ = LR
        kernel = self.kernel_net(lr, depth)  # K⁰
        # the k²-channel kernel maps (441 channels) are the largest tensors here: without return_all only
        # the current one (and, while mixing, the new estimate) is kept alive
        depths, kernels, srs = ([depth], [kernel], []) if return_all else (None, None, None)
        sr = None
        if return_all or (self.num_iter == 0 and need_sr):
            sr = self.sr_net(lr, kernel)
            if return_all:
                srs.append(sr)
        for t in range(self.num_iter):
            if t == 0:
                new_kernel = kernel  # D¹ = DE(I⁰) = D⁰, hence KE(LR, D¹) = K⁰
            else:
                depth = self.estimate_depth(sr, size)
                new_kernel = self.kernel_net(lr, depth)
            # γ·Kᵗ⁺¹ + (1 − γ)·Kᵗ with one temporary map instead of three (the same sums to the bit)
            mixed = self.gamma * new_kernel
            del new_kernel
            kernel = mixed.add_((1.0 - self.gamma) * kernel)
            del mixed
            sr = None  # Iᵗ was only needed for Dᵗ⁺¹
            if need_sr or return_all or t < self.num_iter - 1:  # the last Iᵀ only when it is wanted
                sr = self.sr_net(lr, kernel)
            if return_all:
                depths.append(depth)
                kernels.append(kernel)
                srs.append(sr)
        out = {'depth': depth, 'kernel': kernel, 'sr': sr}
        if return_all:
            out.update(depths=depths, kernels=kernels, srs=srs)
        if sr_with_kernel is not None:
            out['sr_with_kernel'] = self.sr_net(lr, sr_with_kernel)
        return out
