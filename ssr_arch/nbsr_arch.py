"""NBSR: lightweight RRDB-based non-blind SR conditioned on a per-pixel kernel map (SPEC step 3)."""
import torch
from torch import nn as nn
from torch.nn import functional as F

from basicsr.archs.arch_util import default_init_weights
from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY
from ssr_arch.maconv_arch import SFTLayer
from ssr_data.degradations import distribution_kernels, kernel_code_spread
from ssr_data.kernels import KernelPCA, fill_missing_code_scale


class _DenseBlock(nn.Module):
    """Five 3x3 convs with dense connections; the residual is scaled by 0.2 (ESRGAN's stabiliser)."""

    def __init__(self, num_feat, num_grow_ch):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(num_feat + i * num_grow_ch, num_grow_ch if i < 4 else num_feat, 3, 1, 1) for i in range(5)])
        self.act = nn.LeakyReLU(0.2, inplace=True)
        default_init_weights(list(self.convs), 0.1)

    def forward(self, x):
        feats = [x]
        for i, conv in enumerate(self.convs):
            out = conv(torch.cat(feats, dim=1))
            if i < 4:
                feats.append(self.act(out))
        return x + 0.2 * out


class KernelRRDB(nn.Module):
    """SFT(features, kernel-code features) followed by a residual-in-residual dense block."""

    def __init__(self, num_feat, num_grow_ch, num_cond):
        super().__init__()
        self.sft = SFTLayer(num_feat, num_cond)
        self.dense = nn.Sequential(*[_DenseBlock(num_feat, num_grow_ch) for _ in range(3)])

    def forward(self, x, cond):
        return x + 0.2 * self.dense(self.sft(x, cond))


@ARCH_REGISTRY.register()
class NBSR(nn.Module):
    """Non-blind SR: ``forward(lr B×3×h×w, kernel_map B×k²×h×w) -> B×3×sh×sw``.

    The kernel map is reduced per pixel to its PCA code (the ``pca`` submodule, a
    :class:`ssr_data.kernels.KernelPCA` saved in the state dict), turned into condition features by
    1x1 convs and injected by SFT before every RRDB.

    Args:
        in_nc, out_nc (int): image channels.
        num_feat (int), num_block (int), num_grow_ch (int): RRDB trunk (lighter than ESRGAN's 64/23/32).
        num_cond (int): width of the kernel-code features.
        scale (int): 2, 3 or 4.
        kernel_size (int): k of the kernel map.
        pca_dim (int): code length L when no ``pca_path`` is given.
        pca_path (str | None): a KernelPCA file (``KernelPCA.save``). Without it, a PCA is fit on 4000
            kernels of ``kernel_distribution`` (seed 0); loading a checkpoint replaces it either way,
            because the basis is part of the state dict.
        kernel_distribution (dict | None): the distribution of the kernels the network is trained on, in
            the degradation's own keys (``kernel_mode``, ``sigma_range``, ``rho_min``, ``theta_jitter``, ...;
            ``ssr_data.degradations.KERNEL_DISTRIBUTION_KEYS``); None: the default one for ``scale``.
            NBSRModel fills it from ``datasets:train`` when the option file leaves it out.
        global_residual (bool): add the bicubic upsampled LR to the output (the network learns the
            difference, which trains much faster at small budgets).

    The PCA codes are divided by ``code_scale`` before the condition convs: the spread of each code
    component over 2000 reference kernels of ``kernel_distribution`` (seed 0), saved in the state dict, so
    that the codes of the kernels the network sees have unit spread. Raw codes are small (spread 0.01-0.17 for k = 21 at x4), and with them a demo NBSR
    (300 iterations) ignored its kernels: ground-truth, estimated and mean kernels gave the same PSNR to
    0.02 dB (scripts/experiments/demo_conditions.py). A checkpoint saved without ``code_scale`` loads
    with a scale of one, the codes it was trained on.
    """

    def __init__(self, in_nc=3, out_nc=3, num_feat=64, num_block=6, num_grow_ch=32, num_cond=64, scale=4,
                 kernel_size=21, pca_dim=10, pca_path=None, kernel_distribution=None, global_residual=True):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f'NBSR: scale must be 2, 3 or 4, got {scale}')
        self.scale = scale
        self.global_residual = global_residual and in_nc == out_nc
        if pca_path is not None:
            pca = KernelPCA.load(pca_path)
            if pca.kernel_size != kernel_size:
                raise ValueError(f'NBSR: {pca_path} holds a PCA for kernel_size {pca.kernel_size}, '
                                 f'but kernel_size is {kernel_size}')
        distribution = dict(kernel_distribution or {})
        if pca_path is None:
            get_root_logger().info(f'NBSR: no pca_path given; fitting a {pca_dim}-d kernel PCA on the x{scale} kernel '
                                   f'distribution {distribution or "(default)"} (a loaded checkpoint replaces it).')
            pca = KernelPCA.fit(distribution_kernels(4000, kernel_size, scale, distribution), pca_dim)
        self.pca = pca
        self.kernel_size = kernel_size
        self.register_buffer('code_scale', kernel_code_spread(pca, scale, distribution))
        act = nn.LeakyReLU(0.2, inplace=True)
        self.cond = nn.Sequential(
            nn.Conv2d(pca.dim, num_cond, 1), act, nn.Conv2d(num_cond, num_cond, 1), act,
            nn.Conv2d(num_cond, num_cond, 1))
        self.conv_first = nn.Conv2d(in_nc, num_feat, 3, 1, 1)
        self.body = nn.ModuleList([KernelRRDB(num_feat, num_grow_ch, num_cond) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        ups = []
        for factor in ([2, 2] if scale == 4 else [scale]):
            ups += [nn.Conv2d(num_feat, num_feat * factor * factor, 3, 1, 1), nn.PixelShuffle(factor), act]
        self.upsample = nn.Sequential(*ups)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, out_nc, 3, 1, 1)
        self.act = act

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        fill_missing_code_scale(state_dict, prefix, self.code_scale)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def kernel_code(self, kernel_map):
        return self.pca.encode(kernel_map)

    def forward(self, lr, kernel_map):
        if kernel_map.dim() != 4 or kernel_map.shape[1] != self.kernel_size**2:
            raise ValueError(f'NBSR: kernel_map must be B×{self.kernel_size**2}×h×w, got {tuple(kernel_map.shape)}')
        if kernel_map.shape[-2:] != lr.shape[-2:]:
            raise ValueError(f'NBSR: kernel map size {tuple(kernel_map.shape[-2:])} differs from the LR size '
                             f'{tuple(lr.shape[-2:])}; pass the LR-resolution kernel map')
        code = self.kernel_code(kernel_map.to(lr.dtype)) / self.code_scale.to(lr.dtype).view(1, -1, 1, 1)
        cond = self.cond(code)
        feat = self.conv_first(lr)
        body = feat
        for block in self.body:
            body = block(body, cond)
        feat = feat + self.conv_body(body)
        out = self.conv_last(self.act(self.conv_hr(self.upsample(feat))))
        if self.global_residual:
            out = out + F.interpolate(lr, scale_factor=self.scale, mode='bicubic', align_corners=False)
        return out
