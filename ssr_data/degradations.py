"""Depth-informed, spatially variant degradation of SSR (paper Eq. 1; SPEC pipeline step 1).

``sv_blur_downsample`` blurs with one kernel per LR pixel and subsamples in the same pass;
:class:`SVDegradation` draws everything for one training sample (kernel map from depth, Gaussian /
Poisson noise, JPEG) from a ``numpy.random.Generator``, so one seed fixes one sample.
"""
import math

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from ssr_data import kernels as K
from ssr_utils.errors import OptionError


# below this many unfolded values (8 MiB in float32) the unfold path is used; above, the polyphase loop,
# whose extra memory does not grow with k²
_UNFOLD_MAX_ELEMENTS = 1 << 21
# accelerators: unfolded values per chunk of images (256 MiB in float32). A batch of training crops is
# unfolded a chunk of images at a time (a 192-px batch of 16 at k = 21 in one chunk, 196 MB), three launches
# per chunk instead of k² = 441 (each a Python dispatch and a launch, which dominate on a GPU at these
# sizes); an image larger than one chunk takes the polyphase loop, whose extra memory does not grow with k²
_ACCEL_UNFOLD_MAX_ELEMENTS = 1 << 26
# CPU polyphase path: LR values (C·h·w summed over images) handled by one multiply-add call
_CPU_GROUP_ELEMENTS = 1 << 15


def _check_op_inputs(img, kernels, scale):
    if img.dim() != 4 or kernels.dim() != 4:
        raise ValueError(f'sv_blur_downsample: img must be B×C×H×W and kernels B×k²×h×w, '
                         f'got {tuple(img.shape)} and {tuple(kernels.shape)}')
    b, _, hh, ww = img.shape
    kk = kernels.shape[1]
    k = int(round(math.sqrt(kk)))
    if k * k != kk or k % 2 == 0:
        raise ValueError(f'sv_blur_downsample: kernels have {kk} channels, expected k² for an odd k')
    if int(scale) != scale or scale < 1:
        raise ValueError(f'sv_blur_downsample: scale must be a positive integer, got {scale}')
    scale = int(scale)
    if hh % scale or ww % scale:
        raise ValueError(f'sv_blur_downsample: image size {hh}×{ww} is not divisible by scale {scale}')
    h, w = hh // scale, ww // scale
    if kernels.shape[0] != b or tuple(kernels.shape[2:]) != (h, w):
        raise ValueError(f'sv_blur_downsample: kernels {tuple(kernels.shape)} do not match the LR grid '
                         f'{b}×k²×{h}×{w} of image {tuple(img.shape)} at scale {scale}')
    r = k // 2
    if r >= hh or r >= ww:
        raise ValueError(f'sv_blur_downsample: reflect padding of {r} needs an image larger than {r} pixels, '
                         f'got {hh}×{ww}')
    return k, scale, h, w


def _unfold_chunk(device, b, c, k, h, w, max_unfold=None):
    """Images per unfold chunk for a B×C input with k×k kernels on an h×w LR grid, or 0 for the polyphase
    loop. CPUs: the whole batch when it is small (one training crop), else the loop (which stays in cache).
    Accelerators: as many images as fit :data:`_ACCEL_UNFOLD_MAX_ELEMENTS` (or ``max_unfold``), if one does."""
    per_image = c * k * k * h * w
    if device.type == 'cpu' and max_unfold is None:
        return b if b * per_image <= _UNFOLD_MAX_ELEMENTS else 0
    most = (_ACCEL_UNFOLD_MAX_ELEMENTS if max_unfold is None else int(max_unfold)) // per_image
    if most < 1:
        return 0
    chunks = -(-b // most)
    return -(-b // chunks)  # chunks of equal size: 16 images that fit 12 at a time go as 8 + 8


def _unfold_blur(padded, kernels, k, s, h, w):
    """The blur of :func:`sv_blur_downsample` for the images of ``padded`` by one strided unfold."""
    n, c = padded.shape[:2]
    cols = F.unfold(padded, k, stride=s).view(n, c, k * k, h * w)
    return cols.mul_(kernels.reshape(n, 1, k * k, h * w)).sum(2).view(n, c, h, w)


def sv_blur_downsample(img, kernels, scale, max_unfold=None):
    """Spatially variant blur and ×``scale`` subsampling in one pass, evaluated at kept positions only.

    ``out[b,c,i,j] = Σ_uv kernels[b,u·k+v,i,j] · img[b,c,s·i+u−k//2, s·j+v−k//2]`` with reflect padding.

    The padded image is split once into its s² polyphase components; tap (u, v) then reads a shifted
    LR-sized window of one component, so the work is k² multiply-adds over the LR grid and the extra
    memory is one copy of the padded image. Small inputs (a training crop; on accelerators a batch of
    crops, a chunk of images at a time) take a strided unfold instead (fewer, larger operations).
    float16/bfloat16 inputs are accumulated in float32.

    Args:
        img (Tensor): B×C×H×W, H and W multiples of ``scale``.
        kernels (Tensor): B×k²×(H/s)×(W/s), one row-major k×k kernel per LR pixel.
        scale (int): s.
        max_unfold (int | None): most values unfolded at once (images are unfolded a chunk at a time; an
            image larger than that takes the polyphase loop). None: the device's default (CPU 2²¹ for the
            whole batch, accelerators 2²⁶ per chunk); 0: always the polyphase loop, whose extra memory does
            not grow with k².

    Returns:
        Tensor: B×C×(H/s)×(W/s) in the dtype of ``img``.
    """
    k, s, h, w = _check_op_inputs(img, kernels, scale)
    r = k // 2
    out_dtype = img.dtype
    acc_dtype = torch.float64 if img.dtype == torch.float64 else torch.float32
    padded = F.pad(img.to(acc_dtype), (r, r, r, r), mode='reflect')
    kernels = kernels.to(device=img.device, dtype=acc_dtype)
    b, c = img.shape[:2]
    chunk = _unfold_chunk(img.device, b, c, k, h, w, max_unfold)
    if chunk:
        # small inputs (training crops): a strided unfold beats k² tiny kernel launches
        parts = [_unfold_blur(padded[i:i + chunk], kernels[i:i + chunk], k, s, h, w) for i in range(0, b, chunk)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(out_dtype)
    out = img.new_zeros((b, c, h, w), dtype=acc_dtype)
    taps = kernels.unsqueeze(1)  # B×1×k²×h×w: tap uv broadcasts over the channels
    # On CPU a few images at a time (one for large images): each of the k² multiply-adds then stays small
    # enough to run on one thread, which avoids an OpenMP fork/join per tap (costly on busy machines) and
    # keeps the working set in cache, while small crops (a training batch) share each tap's call. On GPUs
    # the whole batch per tap: k² launches instead of B·k².
    if img.device.type == 'cpu':
        per_group = max(1, _CPU_GROUP_ELEMENTS // (c * h * w))
        groups = [slice(i, min(b, i + per_group)) for i in range(0, b, per_group)]
    else:
        groups = [slice(0, b)]
    for g in groups:
        o = out[g]
        phases = [[padded[g, :, pu::s, pv::s].contiguous() for pv in range(s)] for pu in range(s)]
        # views made once per group / row: at k² = 441 taps per small image, per-tap indexing costs
        # as much as the multiply-adds themselves
        tap_maps = taps[g].unbind(2)
        for u in range(k):
            a, pu = divmod(u, s)
            rows = [phase.narrow(2, a, h) for phase in phases[pu]]
            for v in range(k):
                b0, pv = divmod(v, s)
                o.addcmul_(rows[pv].narrow(3, b0, w), tap_maps[u * k + v])
    return out.to(out_dtype)


def naive_sv_blur_downsample(img, kernels, scale):
    """The naive method (reference and benchmark baseline): per-HR-pixel kernels, a full-resolution
    spatially variant blur with a stride-1 unfold, then subsampling. Same result, s² times the work and
    memory of order B·C·k²·H·W."""
    k, s, _, _ = _check_op_inputs(img, kernels, scale)
    r = k // 2
    b, c, hh, ww = img.shape
    kernels_hr = kernels.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)  # B×k²×H×W
    cols = F.unfold(F.pad(img, (r, r, r, r), mode='reflect'), k).view(b, c, k * k, hh * ww)
    blurred = (cols * kernels_hr.view(b, 1, k * k, hh * ww)).sum(2).view(b, c, hh, ww)
    return blurred[:, :, ::s, ::s]


def sv_blur_downsample_reference(img, kernels, scale):
    """Direct per-pixel loop of the formula (float64, for tests on tiny inputs only)."""
    k = int(round(math.sqrt(kernels.shape[1])))
    r = k // 2
    b, c, hh, ww = img.shape
    h, w = hh // scale, ww // scale

    def reflect(i, n):
        if i < 0:
            return -i
        if i >= n:
            return 2 * (n - 1) - i
        return i

    img64, ker64 = img.double(), kernels.double()
    out = torch.zeros(b, c, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            acc = torch.zeros(b, c, dtype=torch.float64)
            for u in range(k):
                y = reflect(scale * i + u - r, hh)
                for v in range(k):
                    x = reflect(scale * j + v - r, ww)
                    acc += ker64[:, u * k + v, i, j][:, None] * img64[:, :, y, x]
            out[:, :, i, j] = acc
    return out


# -------------------------------------------------------------------------------------------------
# noise and JPEG (numpy Generator driven, for per-sample determinism)
# -------------------------------------------------------------------------------------------------
def add_gaussian_noise(img, sigma, gray, rng):
    """``img`` C×h×w float in [0, 1]; ``sigma`` on the [0, 1] scale; ``gray``: one noise for all channels."""
    c, h, w = img.shape
    noise = rng.standard_normal((1 if gray else c, h, w)).astype(np.float32) * float(sigma)
    return (img + torch.from_numpy(noise).to(img.device, img.dtype)).clamp_(0, 1)


def add_poisson_noise(img, scale, gray, rng):
    """Shot noise: counts ~ Poisson(255·img) (luma only when ``gray``), the deviation scaled by ``scale``."""
    arr = img.detach().cpu().numpy().astype(np.float64)
    if gray:
        luma = (0.299 * arr[0] + 0.587 * arr[1] + 0.114 * arr[2])[None]
        noisy = rng.poisson(np.clip(luma, 0, 1) * 255.0) / 255.0
        noise = noisy - luma
    else:
        noisy = rng.poisson(np.clip(arr, 0, 1) * 255.0) / 255.0
        noise = noisy - arr
    noise = torch.from_numpy((noise * float(scale)).astype(np.float32)).to(img.device, img.dtype)
    return (img + noise).clamp_(0, 1)


def jpeg_compress(img, quality):
    """JPEG round trip of a C×h×w RGB float tensor in [0, 1] with an integer ``quality`` (OpenCV needs int)."""
    if isinstance(quality, (bool, np.bool_)) or not isinstance(quality, (int, np.integer)):
        raise TypeError(f'JPEG quality must be an int, got {quality!r} ({type(quality).__name__})')
    arr = img.detach().cpu().clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).numpy()
    bgr = np.ascontiguousarray(arr[:, :, ::-1])
    ok, buf = cv2.imencode('.jpg', bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError(f'cv2.imencode failed for JPEG quality {quality}')
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(dec)).permute(2, 0, 1).to(img.device, torch.float32).div_(255.0)


def quantize(img):
    """Round to 8-bit levels, as a saved LR image would be."""
    return img.clamp(0, 1).mul(255.0).round().div(255.0)


# -------------------------------------------------------------------------------------------------
# the per-sample degradation
# -------------------------------------------------------------------------------------------------
def _pair(opt, key, default):
    value = opt.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise OptionError(key, value, 'expected a [low, high] pair')
    lo, hi = float(value[0]), float(value[1])
    if lo > hi:
        raise OptionError(key, value, 'low is larger than high')
    return lo, hi


def _prob(opt, key, default):
    value = float(opt.get(key, default))
    if not 0.0 <= value <= 1.0:
        raise OptionError(key, value, 'expected a probability in [0, 1]')
    return value


KERNEL_MODES = ('depth', 'invariant', 'linear', 'rotate', 'block')


class SVDegradation:
    """Depth-driven spatially variant blur + ×s subsampling + noise + JPEG, drawn from a numpy Generator.

    Option keys (a dataset's option dict; all optional except ``scale``):
        scale, kernel_size (21), kernel_mode (``depth`` | ``invariant`` | ``linear`` | ``rotate`` |
        ``block``), sigma_range ([0.6, 5.0] for ×4), rho_min (0.2), theta_jitter (0.3 rad),
        jitter_cells (4), block_size (8),
        use_noise (true), noise_range ([1, 30], 0..255 scale), gray_noise_prob (0.4),
        poisson_prob (0.0), poisson_scale_range ([0.05, 3.0]),
        use_jpeg (true), jpeg_range ([30, 95], integer qualities).
    Paper Table 3: ``w/o noise`` = use_noise false, ``w/o jpeg`` = use_jpeg false, ``noise + jpeg`` = both.
    """

    def __init__(self, opt):
        self.scale = opt.get('scale', 4)
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise OptionError('scale', self.scale, 'expected a positive integer')
        self.kernel_size = K.check_kernel_size(opt.get('kernel_size', 21))
        self.kernel_mode = opt.get('kernel_mode', 'depth')
        if self.kernel_mode not in KERNEL_MODES:
            raise OptionError('kernel_mode', self.kernel_mode, f'expected one of {", ".join(KERNEL_MODES)}')
        self.sigma_range = _pair(opt, 'sigma_range', K.default_sigma_range(self.scale))
        if self.sigma_range[0] <= 0:
            raise OptionError('sigma_range', opt.get('sigma_range'), 'sigmas must be positive')
        self.rho_min = float(opt.get('rho_min', 0.2))
        if not 0.0 < self.rho_min <= 1.0:
            raise OptionError('rho_min', self.rho_min, 'expected a value in (0, 1]')
        self.theta_jitter = float(opt.get('theta_jitter', 0.3))
        self.jitter_cells = int(opt.get('jitter_cells', 4))
        self.block_size = int(opt.get('block_size', 8))
        self.use_noise = bool(opt.get('use_noise', True))
        self.noise_range = _pair(opt, 'noise_range', (1.0, 30.0))
        self.gray_noise_prob = _prob(opt, 'gray_noise_prob', 0.4)
        self.poisson_prob = _prob(opt, 'poisson_prob', 0.0)
        self.poisson_scale_range = _pair(opt, 'poisson_scale_range', (0.05, 3.0))
        self.use_jpeg = bool(opt.get('use_jpeg', True))
        jr = _pair(opt, 'jpeg_range', (30, 95))
        if not 1 <= jr[0] <= jr[1] <= 100:
            raise OptionError('jpeg_range', opt.get('jpeg_range'), 'JPEG qualities are integers in [1, 100]')
        self.jpeg_range = (int(round(jr[0])), int(round(jr[1])))

    def kernel_params(self, depth_lq, rng):
        """Per-pixel (σ_major, σ_minor, θ) maps (h×w) and the per-image scalars, for the kernel mode."""
        h, w = depth_lq.shape[-2:]
        mode = self.kernel_mode
        if mode == 'depth':
            smaj, smin, theta, p = K.sample_depth_kernel_params(depth_lq.reshape(h, w), rng, self.sigma_range,
                                                                self.rho_min, self.theta_jitter,
                                                                self.jitter_cells)
        elif mode == 'invariant':
            sig = float(rng.uniform(*self.sigma_range))
            rho = float(rng.uniform(self.rho_min, 1.0))
            th = float(rng.uniform(0, math.pi))
            smaj, smin, theta = (torch.full((h, w), sig), torch.full((h, w), sig * rho), torch.full((h, w), th))
            p = {'rho': rho, 'theta': th}
        else:
            seed = int(rng.integers(0, 2**31 - 1))
            smaj, smin, theta, p = K.pattern_params(mode, h, w, seed, self.sigma_range, self.rho_min,
                                                    block=self.block_size, theta_jitter=self.theta_jitter)
        params = {'focus': float(p.get('focus', -1.0)), 'rho': float(p.get('rho', -1.0)),
                  'theta': float(p.get('theta', -1.0)), 'sigma_mean': float(smaj.mean())}
        return smaj, smin, theta, params

    def lr_depth(self, depth_hr):
        """1×H×W depth -> 1×h×w, the area average over each LR pixel's s×s footprint."""
        return F.avg_pool2d(depth_hr[None].float(), self.scale)[0]

    # The draws below are shared by __call__ and draw_params, in the order __call__ consumes the rng
    # (the Gaussian noise field of __call__ is drawn between _draw_gaussian and _draw_poisson).
    def _draw_gaussian(self, rng):
        sigma = float(rng.uniform(*self.noise_range)) / 255.0
        gray = float(rng.uniform() < self.gray_noise_prob)
        return sigma, gray

    def _draw_poisson(self, rng):
        """(applied, scale)."""
        if self.poisson_prob > 0 and rng.uniform() < self.poisson_prob:
            return True, float(rng.uniform(*self.poisson_scale_range))
        return False, 0.0

    def _draw_quality(self, rng):
        return int(rng.integers(self.jpeg_range[0], self.jpeg_range[1] + 1))

    def sample_kernels(self, num, seed=0, map_size=8):
        """``num×k²`` per-pixel kernels drawn from this degradation's kernel distribution (e.g. to fit the
        kernel PCA for it): ``kernel_params`` on ``map_size²`` LR maps whose depth is uniform in [0, 1]
        per pixel, as many maps as needed; every map has its own per-image draws."""
        rng = np.random.default_rng(seed)
        out, have = [], 0
        while have < num:
            depth = torch.from_numpy(rng.uniform(0.0, 1.0, (map_size, map_size)).astype(np.float32))
            smaj, smin, theta, _ = self.kernel_params(depth, rng)
            kernels = K.anisotropic_gaussian_kernels(smaj.reshape(-1), smin.reshape(-1), theta.reshape(-1),
                                                     self.kernel_size)
            out.append(kernels.reshape(kernels.shape[0], -1))
            have += kernels.shape[0]
        return torch.cat(out)[:num]

    def __call__(self, gt, depth_hr, rng):
        """Degrade one sample.

        Args:
            gt (Tensor): 3×H×W RGB float in [0, 1], H and W multiples of the scale.
            depth_hr (Tensor): 1×H×W depth in [0, 1] (1 = near).
            rng (np.random.Generator): the only randomness used.

        Returns:
            dict: ``lq`` 3×h×w, ``kernel`` k²×h×w, ``depth_lq`` 1×h×w, ``params`` (floats / int).
        """
        s = self.scale
        depth_lq = self.lr_depth(depth_hr)
        smaj, smin, theta, params = self.kernel_params(depth_lq[0], rng)
        kmap = K.kernel_map_from_params(smaj, smin, theta, self.kernel_size)  # 1×k²×h×w
        lq = sv_blur_downsample(gt[None].float(), kmap, s)[0].clamp_(0, 1)
        noise_sigma, gray, poisson_scale, quality = 0.0, 0.0, 0.0, -1
        if self.use_noise:
            noise_sigma, gray = self._draw_gaussian(rng)
            lq = add_gaussian_noise(lq, noise_sigma, bool(gray), rng)
            poisson, poisson_scale = self._draw_poisson(rng)
            if poisson:
                lq = add_poisson_noise(lq, poisson_scale, bool(gray), rng)
        if self.use_jpeg:
            quality = self._draw_quality(rng)
            lq = jpeg_compress(lq, quality)
        else:
            lq = quantize(lq)
        params.update(noise_sigma=noise_sigma, gray_noise=gray, poisson_scale=poisson_scale, jpeg_quality=quality)
        return {'lq': lq, 'kernel': kmap[0], 'depth_lq': depth_lq, 'params': params}

    def draw_params(self, depth_hr, rng):
        """The numbers of one sample's degradation, drawn as :meth:`__call__` draws them, without applying it
        (``degrade_on: model``: :class:`ssr_data.batch_degradation.BatchDegradation` applies them).

        The crop, the flips and every kernel parameter come from the same rng positions as in
        :meth:`__call__`, so a seeded sample gets the same kernel map in both paths; the noise scalars
        and the JPEG quality follow the same laws (the noise field itself is drawn on the training
        device from ``noise_seed``, so with noise on the later draws fall at other rng positions).

        Returns:
            dict: ``depth_lq`` 1×h×w, ``kernel_params`` 3×h×w float32 (σ_major, σ_minor, θ per LR pixel),
            ``params`` (as :meth:`__call__`), ``noise_seed`` (int in [0, 2⁶³)).
        """
        depth_lq = self.lr_depth(depth_hr)
        smaj, smin, theta, params = self.kernel_params(depth_lq[0], rng)
        noise_sigma, gray, poisson_scale, quality = 0.0, 0.0, 0.0, -1
        if self.use_noise:
            noise_sigma, gray = self._draw_gaussian(rng)
            poisson, poisson_scale = self._draw_poisson(rng)
            # a Poisson draw with scale 0 adds nothing; 0 also means "not applied" downstream
            poisson_scale = poisson_scale if poisson else 0.0
        if self.use_jpeg:
            quality = self._draw_quality(rng)
        params.update(noise_sigma=noise_sigma, gray_noise=gray, poisson_scale=poisson_scale, jpeg_quality=quality)
        kernel_params = torch.stack([torch.as_tensor(v, dtype=torch.float32).expand(depth_lq.shape[-2:])
                                     for v in (smaj, smin, theta)])
        return {'depth_lq': depth_lq, 'kernel_params': kernel_params, 'params': params,
                'noise_seed': int(rng.integers(0, 2**63 - 1))}


# the SVDegradation keys that set the blur kernels' distribution (not the noise, JPEG or data keys)
KERNEL_DISTRIBUTION_KEYS = ('kernel_mode', 'sigma_range', 'rho_min', 'theta_jitter', 'jitter_cells', 'block_size')


def kernel_distribution_options(opt, key='kernel_distribution'):
    """The kernel-distribution keys of a degradation's (or a dataset's) option dict, the others dropped;
    ``key`` names the dict in errors. ``None`` gives ``{}``: the default distribution for the scale."""
    if opt is None:
        return {}
    if not isinstance(opt, dict):
        raise OptionError(key, opt, f'expected a dict of {", ".join(KERNEL_DISTRIBUTION_KEYS)}')
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in opt.items() if k in KERNEL_DISTRIBUTION_KEYS}


def distribution_kernels(num, kernel_size, scale, distribution=None, seed=0, key='kernel_distribution'):
    """``num×k²`` kernels of the distribution that ``distribution`` (SVDegradation's kernel keys, see
    ``KERNEL_DISTRIBUTION_KEYS``; None or ``{}``: the defaults for ``scale``) gives, e.g. to fit a kernel PCA or
    to measure the spread of its codes. The depth-driven mode (the default) draws the kernels' marginal with
    :func:`ssr_data.kernels.random_kernels` (depth and focus plane uniform, one kernel per draw); the other
    modes draw per-pixel kernels of random LR maps (:meth:`SVDegradation.sample_kernels`). ``key`` names the
    option in errors."""
    distribution = dict(distribution or {})
    unknown = sorted(set(distribution) - set(KERNEL_DISTRIBUTION_KEYS))
    if unknown:
        raise OptionError(f'{key}:{unknown[0]}', distribution[unknown[0]],
                          f'not a kernel-distribution key (expected {", ".join(KERNEL_DISTRIBUTION_KEYS)})')
    degradation = SVDegradation(dict(distribution, scale=scale, kernel_size=kernel_size))
    if degradation.kernel_mode == 'depth':
        return K.random_kernels(num, kernel_size, degradation.sigma_range, degradation.rho_min,
                                degradation.theta_jitter, seed=seed)
    return degradation.sample_kernels(num, seed=seed)
