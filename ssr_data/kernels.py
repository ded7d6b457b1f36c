"""Blur kernels for the SSR degradations: anisotropic Gaussians, one per LR pixel, and their PCA code.

Conventions (docs/interfaces.md §1): a kernel map is ``B×k²×h×w``, one kernel per LR pixel, each
kernel row-major ``k×k`` (index ``u·k + v``, ``u`` the row offset, ``v`` the column offset) and summing
to 1. Angles are in radians, measured from the image x axis (columns) towards the y axis (rows, down).

The depth-driven model (SPEC pipeline step 1): with the normalised inverse depth ``D`` (1 = near) and a
random focus plane ``d_f ~ U(0, 1)``, ``c = |D - d_f| / max(d_f, 1 - d_f)`` and
``σ_major = σ_min + (σ_max - σ_min)·c``, ``σ_minor = ρ·σ_major`` (``ρ ~ U(ρ_min, 1)`` per image), and the
angle is one ``θ ~ U(0, π)`` per image plus a smooth per-pixel perturbation (motion jitter).
"""
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ssr_utils.atomic_file import atomic_torch_save
from ssr_utils.errors import OptionError

# σ ranges (HR pixels) per scale. ×4 is the SPEC default (the anisotropic 21×21 setting of DAN/DCLS);
# ×2/×3 follow the same family scaled down so that the kernels stay well inside 21×21.
DEFAULT_SIGMA_RANGE = {2: (0.2, 2.0), 3: (0.2, 3.0), 4: (0.6, 5.0)}

PATTERNS = ('linear', 'rotate', 'block', 'depth')


def check_kernel_size(kernel_size, key='kernel_size'):
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)):
        raise OptionError(key, kernel_size, 'expected an odd integer')
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise OptionError(key, kernel_size, 'kernel size must be odd and positive (the kernel has a centre pixel)')
    return int(kernel_size)


def default_sigma_range(scale):
    if scale in DEFAULT_SIGMA_RANGE:
        return DEFAULT_SIGMA_RANGE[scale]
    return (0.2, 1.25 * scale)


def _grid(kernel_size, device, dtype):
    r = kernel_size // 2
    ax = torch.arange(-r, r + 1, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ax, ax, indexing='ij')  # yy: row offset u - r, xx: column offset v - r
    return xx.reshape(-1), yy.reshape(-1)


def _kernels_tap_major(sigma_major, sigma_minor, theta, kernel_size, out=None):
    """Normalised kernels as a ``k²×N`` tensor (tap-major: the layout of a kernel map's channels), written
    into ``out`` (a contiguous ``k²×N`` tensor of the parameters' dtype) when given."""
    sigma_major, sigma_minor, theta = torch.broadcast_tensors(
        *[v if torch.is_tensor(v) else torch.as_tensor(v, dtype=torch.float32)
          for v in (sigma_major, sigma_minor, theta)])
    dtype = torch.float64 if sigma_major.dtype == torch.float64 else torch.float32
    s1 = sigma_major.reshape(-1).to(dtype).clamp_min(1e-3)
    s2 = sigma_minor.reshape(-1).to(dtype).clamp_min(1e-3)
    th = theta.reshape(-1).to(dtype)
    cos, sin = torch.cos(th), torch.sin(th)
    # inverse covariance R diag(1/s1², 1/s2²) Rᵀ as a quadratic form a·x² + 2b·xy + c·y²
    i1, i2 = 1.0 / (s1 * s1), 1.0 / (s2 * s2)
    coef = torch.stack([cos * cos * i1 + sin * sin * i2, cos * sin * (i1 - i2), sin * sin * i1 + cos * cos * i2])
    xx, yy = _grid(kernel_size, s1.device, dtype)
    # a Gaussian is point-symmetric: tap k²-1-t is tap t mirrored through the centre ((x, y) -> (-x, -y)),
    # with the same exponent bit for bit; only taps 0..centre are evaluated, which nearly halves the work
    half = kernel_size * kernel_size // 2 + 1
    xx, yy = xx[:half], yy[:half]
    basis = torch.stack([xx * xx, 2 * xx * yy, yy * yy], dim=1).mul_(-0.5)  # half×3
    # exponents of every (tap, kernel) pair as a rank-3 outer-product sum (faster than a K=3 matmul);
    # the centre tap's exponent is 0, so each sum is >= 1. Exponents below -80 are clamped: exp() would
    # return float32 denormals there (< 2e-35 of the centre tap, below float32 resolution of the sum),
    # which are an order of magnitude slower on CPUs.
    kernels = s1.new_empty((2 * half - 1, s1.numel())) if out is None else out.view(2 * half - 1, s1.numel())  # k²×N
    q = torch.mul(basis[:, 0:1], coef[0], out=kernels[:half])
    q.addcmul_(basis[:, 1:2], coef[1]).addcmul_(basis[:, 2:3], coef[2])
    q.clamp_min_(-80.0).exp_()
    mirror = torch.arange(half - 2, -1, -1, device=s1.device)
    torch.index_select(q, 0, mirror, out=kernels[half:])
    return kernels.div_(kernels.sum(dim=0, keepdim=True))


def anisotropic_gaussian_kernels(sigma_major, sigma_minor, theta, kernel_size=21):
    """Normalised anisotropic Gaussian kernels, fully vectorised.

    Args:
        sigma_major, sigma_minor, theta: tensors (or numbers) broadcastable to one shape ``S``.
        kernel_size (int): odd k.

    Returns:
        Tensor ``S×k²`` (row-major k×k, each summing to 1), float32 unless the inputs are float64.
    """
    kernel_size = check_kernel_size(kernel_size)
    shape = torch.broadcast_shapes(*[torch.as_tensor(v).shape for v in (sigma_major, sigma_minor, theta)])
    kernels = _kernels_tap_major(sigma_major, sigma_minor, theta, kernel_size)
    return kernels.t().reshape(*shape, kernel_size * kernel_size)


def kernel_taps(sigma_major, sigma_minor, theta, kernel_size=21, out=None):
    """Normalised kernels tap-major, ``k²×S`` for parameter maps broadcastable to one shape ``S``: tap ``t``
    of every kernel in one contiguous ``S`` block (what a per-tap multiply-add reads), no transpose copy.
    The same numbers as :func:`kernel_map_from_params`. ``out``: a contiguous tensor of ``k²·|S|`` elements
    and the parameters' dtype to write into (e.g. one sample's slice of a ``B×k²×h×w`` map)."""
    kernel_size = check_kernel_size(kernel_size)
    shape = torch.broadcast_shapes(*[torch.as_tensor(v).shape for v in (sigma_major, sigma_minor, theta)])
    if out is not None and not out.is_contiguous():
        raise ValueError('kernel_taps: out must be contiguous')
    return _kernels_tap_major(sigma_major, sigma_minor, theta, kernel_size, out).view(-1, *shape)


def kernel_map_from_params(sigma_major, sigma_minor, theta, kernel_size=21):
    """``B×k²×h×w`` kernel map from per-pixel parameter maps ``B×h×w`` (or ``h×w``)."""
    kernel_size = check_kernel_size(kernel_size)
    shape = torch.broadcast_shapes(*[torch.as_tensor(v).shape for v in (sigma_major, sigma_minor, theta)])
    if len(shape) == 2:
        shape = (1, ) + tuple(shape)
    b, h, w = shape
    kernels = _kernels_tap_major(sigma_major, sigma_minor, theta, kernel_size)  # k²×(B·h·w)
    return kernels.view(-1, b, h, w).transpose(0, 1).contiguous()


def spatially_invariant_kernel_map(sigma_major, sigma_minor, theta, h, w, kernel_size=21):
    """One kernel for every LR pixel (the classic blind-SR case): ``1×k²×h×w``."""
    kernel = anisotropic_gaussian_kernels(sigma_major, sigma_minor, theta, kernel_size).reshape(1, -1, 1, 1)
    return kernel.expand(1, kernel.shape[1], h, w).contiguous()


def smooth_field(h, w, rng, cells=4):
    """A smooth random field in [-1, 1] (h×w float32): a coarse Gaussian grid, bicubically upsampled."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells + 1, cells + 1)).astype(np.float32))
    field = F.interpolate(coarse, size=(h, w), mode='bicubic', align_corners=True)[0, 0]
    return field.clamp_(-2.5, 2.5).div_(2.5)


def depth_defocus_sigma(depth, focus, sigma_min, sigma_max):
    """σ_major of the thin-lens defocus model: min at the focus plane, max at the farthest depth."""
    c = (depth - focus).abs() / max(focus, 1.0 - focus, 1e-6)
    return sigma_min + (sigma_max - sigma_min) * c.clamp(0.0, 1.0)


def sample_depth_kernel_params(depth_lq, rng, sigma_range=(0.6, 5.0), rho_min=0.2, theta_jitter=0.3,
                               jitter_cells=4, focus=None):
    """Sample the per-pixel parameters of the depth-driven model for one image.

    Args:
        depth_lq (Tensor): h×w depth at LR resolution, in [0, 1] (1 = near).
        rng (np.random.Generator): the only source of randomness (determinism per sample index).
        focus (float | None): the focus plane's depth; None draws it, U(0, 1), per image. A fixed plane makes
            the blur a function of depth alone (the draw is made either way, so the other numbers stay the same).

    Returns:
        (sigma_major, sigma_minor, theta) h×w float32 maps and a dict of the per-image scalars.
    """
    depth_lq = torch.as_tensor(depth_lq, dtype=torch.float32)
    h, w = depth_lq.shape
    sigma_min, sigma_max = float(sigma_range[0]), float(sigma_range[1])
    drawn_focus = float(rng.uniform(0.0, 1.0))
    focus = drawn_focus if focus is None else check_focus_plane(focus)
    rho = float(rng.uniform(rho_min, 1.0))
    theta0 = float(rng.uniform(0.0, math.pi))
    jitter = smooth_field(h, w, rng, jitter_cells) * theta_jitter
    sigma_major = depth_defocus_sigma(depth_lq, focus, sigma_min, sigma_max)
    sigma_minor = sigma_major * rho
    theta = theta0 + jitter
    params = {'focus': focus, 'rho': rho, 'theta': theta0}
    return sigma_major, sigma_minor, theta, params


def random_kernels(num, kernel_size=21, sigma_range=(0.6, 5.0), rho_min=0.2, theta_jitter=0.3, seed=0):
    """``num×k²`` kernels from the marginal of the depth-driven distribution (for fitting the PCA).

    Depth and focus plane are independent U(0, 1), so σ_major covers the same range with the same law as
    per-pixel kernels of the training degradations.
    """
    rng = np.random.default_rng(seed)
    depth = torch.from_numpy(rng.uniform(0, 1, num).astype(np.float32))
    focus = torch.from_numpy(rng.uniform(0, 1, num).astype(np.float32))
    c = (depth - focus).abs() / torch.maximum(focus, 1 - focus).clamp_min(1e-6)
    sigma_major = sigma_range[0] + (sigma_range[1] - sigma_range[0]) * c.clamp(0, 1)
    rho = torch.from_numpy(rng.uniform(rho_min, 1.0, num).astype(np.float32))
    theta = torch.from_numpy((rng.uniform(0, math.pi, num) + theta_jitter * rng.uniform(-1, 1, num)).astype(np.float32))
    return anisotropic_gaussian_kernels(sigma_major, sigma_major * rho, theta, kernel_size)


def check_focus_plane(value, key='focus_plane'):
    """A fixed focus plane: a depth in [0, 1]."""
    try:
        focus = float(value)
    except (TypeError, ValueError):
        raise OptionError(key, value, 'expected a depth in [0, 1] (or ~ for one drawn per image)') from None
    if not 0.0 <= focus <= 1.0:
        raise OptionError(key, value, 'expected a depth in [0, 1] (or ~ for one drawn per image)')
    return focus


def pattern_params(pattern, h, w, seed, sigma_range=(0.6, 5.0), rho_min=0.2, depth_lq=None, block=8,
                   theta_jitter=0.3, focus=None):
    """Fixed, reproducible spatially variant test patterns (MANet-style test modes + depth-driven).

    - ``linear``: σ grows linearly from σ_min (left) to σ_max (right); one ρ, θ for the image.
    - ``rotate``: θ turns with the polar angle around the centre; σ_major fixed (mid-range), ρ fixed.
    - ``block``: independent random (σ_major, ρ, θ) in ``block×block`` LR-pixel tiles.
    - ``depth``: the training model driven by ``depth_lq`` (h×w, required); ``focus``: a fixed focus plane
      (default: drawn per image).

    Returns ``(sigma_major, sigma_minor, theta, params)`` like :func:`sample_depth_kernel_params`.
    """
    rng = np.random.default_rng(seed)
    smin, smax = float(sigma_range[0]), float(sigma_range[1])
    if pattern == 'linear':
        rho = float(rng.uniform(rho_min, 1.0))
        theta0 = float(rng.uniform(0, math.pi))
        ramp = torch.linspace(smin, smax, w).expand(h, w)
        sigma_major = ramp.clone()
        theta = torch.full((h, w), theta0)
        params = {'rho': rho, 'theta': theta0}
    elif pattern == 'rotate':
        rho = float(rng.uniform(rho_min, 0.5 * (1 + rho_min)))  # clearly anisotropic, so θ matters
        sig = float(rng.uniform(0.5 * (smin + smax), smax))
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32) - (h - 1) / 2,
                                torch.arange(w, dtype=torch.float32) - (w - 1) / 2, indexing='ij')
        theta = torch.atan2(yy, xx)
        sigma_major = torch.full((h, w), sig)
        params = {'rho': rho, 'sigma': sig}
    elif pattern == 'block':
        bh, bw = math.ceil(h / block), math.ceil(w / block)
        sig = torch.from_numpy(rng.uniform(smin, smax, (bh, bw)).astype(np.float32))
        rhos = torch.from_numpy(rng.uniform(rho_min, 1.0, (bh, bw)).astype(np.float32))
        ths = torch.from_numpy(rng.uniform(0, math.pi, (bh, bw)).astype(np.float32))

        def up(t):
            return t.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]

        sigma_major, theta = up(sig), up(ths)
        sigma_minor = sigma_major * up(rhos)
        return sigma_major, sigma_minor, theta, {'block': float(block)}
    elif pattern == 'depth':
        if depth_lq is None:
            raise ValueError("pattern 'depth' needs a depth map (depth_lq)")
        return sample_depth_kernel_params(depth_lq, rng, sigma_range, rho_min, theta_jitter, focus=focus)
    else:
        raise OptionError('pattern', pattern, f'expected one of {", ".join(PATTERNS)}')
    return sigma_major, sigma_major * rho, theta, params


def widen_kernel_map(kernel_map, factor):
    """Every kernel of a ``B×k²×h×w`` map raised to ``1/factor²`` and renormalised: for a Gaussian, both sigmas
    times ``factor`` (exact up to the k×k window), so ``factor`` < 1 makes the kernels narrower and > 1 wider
    (the kernel deviations of paper Fig. 8). ``factor`` 1 returns the map itself."""
    if factor == 1:
        return kernel_map
    k = kernel_map.double().clamp_min(1e-30).pow(1.0 / factor**2)
    return (k / k.sum(dim=1, keepdim=True)).to(kernel_map.dtype)


class KernelPCA(nn.Module):
    """PCA code of kernels: ``encode(kmap) = components @ (k - mean)`` per pixel, ``decode`` the inverse.

    Args:
        components (Tensor): L×k² (orthonormal rows, largest variance first).
        mean (Tensor): k².
        kernel_size (int): k.
        dim (int): only when ``components`` is None: build an all-zero placeholder of that dimension
            (a network that holds a PCA and gets it from its state dict).
    """

    def __init__(self, components=None, mean=None, kernel_size=21, dim=10):
        super().__init__()
        kernel_size = check_kernel_size(kernel_size)
        if components is None:
            components = torch.zeros(dim, kernel_size**2)
        if mean is None:
            mean = torch.zeros(kernel_size**2)
        components = torch.as_tensor(components, dtype=torch.float32)
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        if components.dim() != 2 or components.shape[1] != kernel_size**2 or mean.numel() != kernel_size**2:
            raise ValueError(f'KernelPCA: components must be L×{kernel_size**2} and mean {kernel_size**2} for '
                             f'kernel_size {kernel_size}; got {tuple(components.shape)} and {tuple(mean.shape)}')
        self.kernel_size = kernel_size
        self.register_buffer('components', components.clone())
        self.register_buffer('mean', mean.clone())

    @property
    def dim(self):
        return self.components.shape[0]

    @classmethod
    def fit(cls, kernels, dim=10):
        """Fit on ``N×k²`` kernels (top eigenvectors of their covariance, in float64)."""
        kernels = torch.as_tensor(kernels).reshape(kernels.shape[0], -1).double().cpu()
        n, kk = kernels.shape
        kernel_size = int(round(math.sqrt(kk)))
        if kernel_size * kernel_size != kk:
            raise ValueError(f'KernelPCA.fit: {kk} values per kernel is not a square k²')
        if not 0 < dim <= kk:
            raise OptionError('pca_dim', dim, f'expected 1..{kk}')
        mean = kernels.mean(0)
        centred = kernels - mean
        cov = centred.t() @ centred / max(n - 1, 1)
        # one thread: for this small matrix multi-threaded LAPACK gains nothing and, on a busy machine,
        # its spinning threads made the call 100x slower (measured 6-12 s against 0.04 s)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            evals, evecs = torch.linalg.eigh(cov)
        finally:
            torch.set_num_threads(threads)
        comps = evecs[:, torch.argsort(evals, descending=True)[:dim]].t()
        # fix the sign of each component (eigh's is arbitrary): largest-magnitude entry positive
        idx = comps.abs().argmax(dim=1)
        signs = torch.sign(comps[torch.arange(dim), idx])
        comps = comps * signs[:, None]
        return cls(comps.float(), mean.float(), kernel_size)

    def encode(self, kmap):
        """``B×k²×h×w`` -> ``B×L×h×w``."""
        comps = self.components.to(kmap.dtype)
        return torch.einsum('lk,bkhw->blhw', comps, kmap - self.mean.to(kmap.dtype)[None, :, None, None])

    def decode(self, code):
        """``B×L×h×w`` -> ``B×k²×h×w`` (not re-normalised: the PCA is linear)."""
        comps = self.components.to(code.dtype)
        return torch.einsum('lk,blhw->bkhw', comps, code) + self.mean.to(code.dtype)[None, :, None, None]

    def forward(self, kmap):
        return self.encode(kmap)

    def save(self, path):
        atomic_torch_save({'components': self.components.detach().cpu(), 'mean': self.mean.detach().cpu(),
                           'kernel_size': int(self.kernel_size)}, path)

    @classmethod
    def load(cls, path, map_location='cpu'):
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f'KernelPCA file does not exist: {path}')
        missing = {'components', 'mean', 'kernel_size'} - set(state)
        if missing:
            raise KeyError(f'{path}: not a KernelPCA file (missing {sorted(missing)})')
        return cls(state['components'], state['mean'], int(state['kernel_size']))

    def extra_repr(self):
        return f'kernel_size={self.kernel_size}, dim={self.dim}'


def fill_missing_code_scale(state_dict, prefix, code_scale):
    """A state dict of a network that standardises kernel codes (``code_scale`` beside its ``pca``), saved before
    ``code_scale`` existed: give it a scale of ones, the raw codes that network was trained on (in place; for a
    module's ``_load_from_state_dict``)."""
    key = prefix + 'code_scale'
    if key not in state_dict and prefix + 'pca.components' in state_dict:
        state_dict[key] = torch.ones_like(code_scale)
