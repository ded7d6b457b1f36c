"""Depth-informed, spatially variant degradation of SSR (paper Eq. 1; SPEC pipeline step 1): the operators,
the stages and the one recipe both degradation paths run.

``sv_blur_downsample`` blurs with one kernel per LR pixel and subsamples in the same pass. The degradation
is a list of registered stages (``degradation_stages``, default ``blur``, ``gaussian_noise``,
``poisson_noise``, ``jpeg``; ``ssr_utils.registry.DEGRADATION_STAGE_REGISTRY``): each reads its options,
draws one sample's numbers from the sample's ``numpy.random.Generator`` and applies numbers to a batch.
:class:`DegradationRecipe` holds them in order: ``draw`` (one function for the draws), ``apply`` (one
executor: the per-sample path runs it on a batch of one in the DataLoader worker, ``degrade_on: model`` on
the batch on the training device, :mod:`ssr_data.batch_degradation`). :class:`SVDegradation` is the recipe
a dataset uses; one seed fixes one sample.
"""
import math

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from ssr_data import kernels as K
from ssr_data.jpeg_sim import simulate_jpeg
from ssr_utils.errors import OptionError
from ssr_utils.huge_pages import empty_on_huge_pages
from ssr_utils.registry import DEGRADATION_STAGE_REGISTRY


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
# 8-bit output operators
# -------------------------------------------------------------------------------------------------
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
# where the random fields come from
# -------------------------------------------------------------------------------------------------
class GeneratorNoise:
    """Random fields of the per-sample path: drawn from the sample's ``numpy.random.Generator`` at the moment
    the stage that needs them runs, so a sample's draws stay in one stream in stage order (one seed fixes the
    sample, noise included)."""

    def __init__(self, rng):
        self.rng = rng

    def normal(self, index, shape, device):
        """Standard normal float32 values of ``shape`` for sample ``index``."""
        return torch.from_numpy(self.rng.standard_normal(shape).astype(np.float32)).to(device)

    def poisson(self, index, rate):
        """Poisson counts of the float64 ``rate`` tensor (same shape and dtype) for sample ``index``."""
        counts = self.rng.poisson(rate.detach().cpu().numpy())
        return torch.from_numpy(counts.astype(np.float64)).to(rate.device, rate.dtype)


class SeededNoise:
    """Random fields of ``degrade_on: model``: one ``torch.Generator`` per sample on the batch's device, seeded
    with the sample's ``noise_seed`` (drawn last from its numpy stream), so sample i depends on its own seed
    only, whatever batch it is in."""

    def __init__(self, seeds, device):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = {}

    def generator(self, index):
        if index not in self.generators:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(self.seeds[index])
            self.generators[index] = gen
        return self.generators[index]

    def normal(self, index, shape, device):
        return torch.randn(shape, generator=self.generator(index), device=device)

    def poisson(self, index, rate):
        return torch.poisson(rate, generator=self.generator(index))


# -------------------------------------------------------------------------------------------------
# the stages
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


def check_scale(opt):
    scale = opt.get('scale', 4)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise OptionError('scale', scale, 'expected a positive integer')
    return scale


def per_sample_values(values, default, b):
    """B numbers of one kind as a list (from a sequence, a CPU tensor, or None: ``default`` for all)."""
    if values is None:
        return [default] * b
    return values.tolist() if torch.is_tensor(values) else list(values)


def per_sample_column(values, like):
    """B numbers as a B×1×1×1 tensor of ``like``'s dtype on its device (to scale a whole batch at once)."""
    return torch.tensor(values, dtype=like.dtype).view(-1, 1, 1, 1).to(like.device, non_blocking=True)


class DegradationState:
    """The batch a recipe works on: ``gt`` B×3×H×W float32, ``lq`` B×3×h×w (None until the first stage
    has made it), ``kernel`` B×k²×h×w (kept when ``keep_kernels``)."""

    def __init__(self, gt, keep_kernels=True):
        self.gt = gt
        self.lq = None
        self.kernel = None
        self.keep_kernels = keep_kernels

    @property
    def batch_size(self):
        return self.gt.shape[0]


class DegradationStage:
    """One step of the degradation (docs/degradations.md, "Adding a degradation stage").

    Subclass it, register it under the name ``degradation_stages`` lists
    (``@DEGRADATION_STAGE_REGISTRY.register('name')``) and it runs in both paths, the per-sample one and
    ``degrade_on: model``, through :class:`DegradationRecipe`:

    - ``__init__(opt)`` reads the stage's options from the dataset's option dict (``OptionError`` naming the
      key for a bad one; :attr:`option_keys` lists them);
    - ``draw(rng, depth_lq, drawn) -> dict`` draws one sample's numbers from its numpy Generator (nothing
      drawn when the stage is switched off: the "not applied" values), ``drawn`` holding the earlier
      stages' numbers;
    - ``apply(state, numbers, noise)`` applies a batch of numbers (``numbers[key]``: a B×... tensor or B
      numbers) to the :class:`DegradationState`; random fields only from ``noise`` (:class:`GeneratorNoise`
      or :class:`SeededNoise`).

    :attr:`carried` are the numbers ``apply`` reads (a ``degrade_on: model`` sample carries them),
    :attr:`reported` the ones that go into the sample's ``params`` (scalars, every sample the same keys);
    :attr:`synthesis_keys` the options ``apply`` reads (they travel with ``degrade_on: model`` samples).
    """
    option_keys = ()
    synthesis_keys = ()
    carried = ()
    reported = ()
    makes_lr = False  # the first stage makes ``state.lq`` from ``state.gt``; only the first one may

    def __init__(self, opt):
        self.opt = opt

    def synthesis_options(self):
        return {key: getattr(self, key) for key in self.synthesis_keys}

    def draw(self, rng, depth_lq, drawn):
        raise NotImplementedError

    def apply(self, state, numbers, noise):
        raise NotImplementedError


KERNEL_MODES = ('depth', 'invariant', 'linear', 'rotate', 'block')
# LR pixels blurred per group on CPU: enough crops to share each tap's call, few enough that their kernels
# stay near the cache (measured with k = 21 and batches of 16: 8 crops of 32², 3-4 of 48², 2 of 64²)
CPU_KERNEL_PIXELS = 8192


def kernel_params(sigma_major, sigma_minor, theta, shape):
    """The blur stage's numbers: (σ_major, σ_minor, θ) maps (or numbers) -> one 3×h×w float32 tensor."""
    return torch.stack([torch.as_tensor(v, dtype=torch.float32).expand(tuple(shape)[-2:])
                        for v in (sigma_major, sigma_minor, theta)])


def whole_batch_at_once(device):
    """Accelerators take the batch in one go (few large launches); CPUs in cache-sized groups."""
    return device.type != 'cpu'


@DEGRADATION_STAGE_REGISTRY.register('blur')
class SVBlurStage(DegradationStage):
    """The spatially variant blur + ×s subsampling (paper Eq. 1): one anisotropic Gaussian per LR pixel.

    Options: ``scale``, ``kernel_size`` (21), ``kernel_mode`` (``depth`` | ``invariant`` | ``linear`` |
    ``rotate`` | ``block``), ``sigma_range`` ([0.6, 5.0] for ×4), ``rho_min`` (0.2), ``theta_jitter``
    (0.3 rad), ``jitter_cells`` (4), ``block_size`` (8), ``focus_plane`` (``depth`` mode: ~ draws the focus plane
    per image, U(0, 1), the default; a depth in [0, 1] fixes it, so that blur follows depth alone). Numbers: ``kernel_params`` 3×h×w float32
    (σ_major, σ_minor, θ of every LR pixel, whatever the mode); reported ``focus``, ``rho``, ``theta`` (−1
    where the mode has no such scalar) and ``sigma_mean``.
    """
    option_keys = ('scale', 'kernel_size', 'kernel_mode', 'sigma_range', 'rho_min', 'theta_jitter', 'jitter_cells',
                   'block_size', 'focus_plane')
    synthesis_keys = ('scale', 'kernel_size')
    carried = ('kernel_params', )
    reported = ('focus', 'rho', 'theta', 'sigma_mean')
    makes_lr = True

    def __init__(self, opt):
        super().__init__(opt)
        self.scale = check_scale(opt)
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
        self.focus_plane = None if opt.get('focus_plane') is None else K.check_focus_plane(opt['focus_plane'])

    def parameter_maps(self, depth_lq, rng):
        """Per-pixel (σ_major, σ_minor, θ) maps (h×w) for the kernel mode, and the reported scalars."""
        h, w = depth_lq.shape[-2:]
        mode = self.kernel_mode
        if mode == 'depth':
            smaj, smin, theta, p = K.sample_depth_kernel_params(depth_lq.reshape(h, w), rng, self.sigma_range,
                                                                self.rho_min, self.theta_jitter,
                                                                self.jitter_cells, focus=self.focus_plane)
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

    def draw(self, rng, depth_lq, drawn):
        smaj, smin, theta, params = self.parameter_maps(depth_lq[0], rng)
        return {'kernel_params': kernel_params(smaj, smin, theta, depth_lq.shape[-2:]), **params}

    def apply(self, state, numbers, noise):
        state.kernel, state.lq = self.kernels_and_blur(state.gt, numbers['kernel_params'], state.keep_kernels)

    def kernels_and_blur(self, gt, kernel_params, keep_kernels):
        """Kernel maps (B×k²×h×w, or None) and the clamped blurred, subsampled LR (B×3×h×w).

        On accelerators the whole batch in one go. On CPU, groups of about :data:`CPU_KERNEL_PIXELS` LR pixels:
        each crop's kernels are written straight into its slice of the map (no copy) and the group is blurred
        while they are still in cache. A batch of one (the per-sample path) is one map.
        """
        b, c, hh, ww = gt.shape
        s, k = self.scale, self.kernel_size
        h, w = hh // s, ww // s
        kernel_params = kernel_params.to(gt.device, torch.float32)
        if tuple(kernel_params.shape) != (b, 3, h, w):
            raise ValueError(f'kernel_params {tuple(kernel_params.shape)} do not match the LR grid {b}×3×{h}×{w} of '
                             f'HR {tuple(gt.shape)} at scale {s}')
        if b == 1:  # one sample (the per-sample path): one map, in ordinary memory (too small to gain from huge pages)
            kmap = K.kernel_map_from_params(kernel_params[:, 0], kernel_params[:, 1], kernel_params[:, 2], k)
            return (kmap if keep_kernels else None), sv_blur_downsample(gt, kmap, s).clamp_(0, 1)
        if whole_batch_at_once(gt.device):
            kmap = K.kernel_taps(kernel_params[:, 0], kernel_params[:, 1], kernel_params[:, 2], k).transpose(0, 1)
            lq = sv_blur_downsample(gt, kmap, s)
            return (kmap.contiguous() if keep_kernels else None), lq.clamp_(0, 1)
        group = max(1, min(b, CPU_KERNEL_PIXELS // (h * w)))
        kmap = empty_on_huge_pages((b if keep_kernels else group, k * k, h, w), gt)
        lq = gt.new_empty((b, c, h, w))
        for g0 in range(0, b, group):
            g1 = min(b, g0 + group)
            dest = kmap[g0:g1] if keep_kernels else kmap[:g1 - g0]
            for i in range(g0, g1):
                K.kernel_taps(kernel_params[i, 0], kernel_params[i, 1], kernel_params[i, 2], k, out=dest[i - g0])
            lq[g0:g1] = sv_blur_downsample(gt[g0:g1], dest, s)
        return (kmap if keep_kernels else None), lq.clamp_(0, 1)


def add_gaussian_noise(lq, sigma, gray, noise):
    """Gaussian noise of B levels ``sigma`` ([0, 1] scale) on a B×C×h×w batch, one field for all channels
    where ``gray``; clamped to [0, 1]. Only the draws are per sample (each sample's own stream, its own
    shape); scaling, the grey copies and the clamp act on the whole batch, a handful of launches on an
    accelerator."""
    b, c, h, w = lq.shape
    if not any(sig > 0 for sig in sigma):
        return lq
    fields = lq.new_zeros((b, c, h, w))
    rows = fields.unbind(0)
    for i in range(b):
        if sigma[i] > 0:
            target = rows[i][:1] if gray[i] else rows[i]
            target.copy_(noise.normal(i, tuple(target.shape), lq.device))
    gray_mask = per_sample_column([bool(g) for g in gray], lq).bool()
    fields = torch.where(gray_mask, fields[:, :1], fields).mul_(per_sample_column([float(x) for x in sigma], lq))
    return lq.add_(fields).clamp_(0, 1)


def add_poisson_noise(lq, scale, gray, noise):
    """Shot noise on a B×C×h×w batch: counts ~ Poisson(255·x) (of the luma, in every channel, where
    ``gray``), the deviation from x scaled by the sample's ``scale`` (0: none); clamped to [0, 1]. The
    deviation is computed in float64, as the per-sample path always has."""
    b = lq.shape[0]
    shot_idx = [i for i in range(b) if scale[i] > 0]
    if not shot_idx:
        return lq
    x = lq.double()
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    gray_mask = per_sample_column([bool(g) for g in gray], lq).bool()
    base = torch.where(gray_mask, luma, x)  # grey: the luma in every channel, drawn once (channel 0)
    rate = base.clamp(0, 1).mul(255.0)
    counts = torch.zeros_like(rate)
    rates, rows = rate.unbind(0), counts.unbind(0)
    for i in shot_idx:
        target = rows[i][:1] if gray[i] else rows[i]
        target.copy_(noise.poisson(i, rates[i][:1] if gray[i] else rates[i]))
    counts = torch.where(gray_mask, counts[:, :1], counts)
    shot = counts.div_(255.0).sub_(base).mul_(per_sample_column([float(v) for v in scale], x))
    noisy = (lq + shot.to(lq.dtype)).clamp_(0, 1)
    return torch.where(per_sample_column([float(v) > 0 for v in scale], lq).bool(), noisy, lq)


@DEGRADATION_STAGE_REGISTRY.register('gaussian_noise')
class GaussianNoiseStage(DegradationStage):
    """Gaussian noise, σ ~ U(noise_range)/255, one field for all channels with probability
    ``gray_noise_prob``. Options: ``use_noise`` (true; shared with the Poisson stage), ``noise_range``
    ([1, 30], 0..255 scale), ``gray_noise_prob`` (0.4). Numbers: ``noise_sigma`` (0: none), ``gray_noise``."""
    option_keys = ('use_noise', 'noise_range', 'gray_noise_prob')
    carried = reported = ('noise_sigma', 'gray_noise')

    def __init__(self, opt):
        super().__init__(opt)
        self.use_noise = bool(opt.get('use_noise', True))
        self.noise_range = _pair(opt, 'noise_range', (1.0, 30.0))
        self.gray_noise_prob = _prob(opt, 'gray_noise_prob', 0.4)

    def draw(self, rng, depth_lq, drawn):
        if not self.use_noise:
            return {'noise_sigma': 0.0, 'gray_noise': 0.0}
        sigma = float(rng.uniform(*self.noise_range)) / 255.0
        return {'noise_sigma': sigma, 'gray_noise': float(rng.uniform() < self.gray_noise_prob)}

    def apply(self, state, numbers, noise):
        b = state.batch_size
        state.lq = add_gaussian_noise(state.lq, per_sample_values(numbers.get('noise_sigma'), 0.0, b),
                                      per_sample_values(numbers.get('gray_noise'), 0.0, b), noise)


@DEGRADATION_STAGE_REGISTRY.register('poisson_noise')
class PoissonNoiseStage(DegradationStage):
    """Poisson (shot) noise with probability ``poisson_prob`` (0), its deviation scaled by
    U(``poisson_scale_range``) ([0.05, 3.0]); grey where the Gaussian stage drew grey noise. Options:
    ``use_noise``, ``poisson_prob``, ``poisson_scale_range``. Numbers: ``poisson_scale`` (0: not applied)."""
    option_keys = ('use_noise', 'poisson_prob', 'poisson_scale_range')
    carried = reported = ('poisson_scale', )

    def __init__(self, opt):
        super().__init__(opt)
        self.use_noise = bool(opt.get('use_noise', True))
        self.poisson_prob = _prob(opt, 'poisson_prob', 0.0)
        self.poisson_scale_range = _pair(opt, 'poisson_scale_range', (0.05, 3.0))

    def draw(self, rng, depth_lq, drawn):
        if self.use_noise and self.poisson_prob > 0 and rng.uniform() < self.poisson_prob:
            return {'poisson_scale': float(rng.uniform(*self.poisson_scale_range))}
        return {'poisson_scale': 0.0}

    def apply(self, state, numbers, noise):
        b = state.batch_size
        state.lq = add_poisson_noise(state.lq, per_sample_values(numbers.get('poisson_scale'), 0.0, b),
                                     per_sample_values(numbers.get('gray_noise'), 0.0, b), noise)


JPEG_BACKENDS = ('opencv', 'torch')


@DEGRADATION_STAGE_REGISTRY.register('jpeg')
class JPEGStage(DegradationStage):
    """The 8-bit LR a saved image would hold: JPEG at an integer quality ~ U{jpeg_range}, or without JPEG
    the rounding to 8-bit levels. Options: ``use_jpeg`` (true), ``jpeg_range`` ([30, 95]), ``jpeg_backend``
    (``opencv``: libjpeg-turbo per image on the host, the per-sample path's; ``torch``:
    :func:`ssr_data.jpeg_sim.simulate_jpeg` on the batch's device, ``degrade_on: model`` only). Numbers:
    ``jpeg_quality`` (−1: none)."""
    option_keys = ('use_jpeg', 'jpeg_range', 'jpeg_backend')
    synthesis_keys = ('jpeg_backend', )
    carried = reported = ('jpeg_quality', )

    def __init__(self, opt):
        super().__init__(opt)
        self.use_jpeg = bool(opt.get('use_jpeg', True))
        lo, hi = _pair(opt, 'jpeg_range', (30, 95))
        if not 1 <= lo <= hi <= 100:
            raise OptionError('jpeg_range', opt.get('jpeg_range'), 'JPEG qualities are integers in [1, 100]')
        self.jpeg_range = (int(round(lo)), int(round(hi)))
        self.jpeg_backend = opt.get('jpeg_backend', 'opencv')
        if self.jpeg_backend not in JPEG_BACKENDS:
            raise OptionError('jpeg_backend', self.jpeg_backend, f'expected one of {", ".join(JPEG_BACKENDS)}')

    def draw(self, rng, depth_lq, drawn):
        if not self.use_jpeg:
            return {'jpeg_quality': -1}
        return {'jpeg_quality': int(rng.integers(self.jpeg_range[0], self.jpeg_range[1] + 1))}

    def apply(self, state, numbers, noise):
        quality = [int(q) for q in per_sample_values(numbers.get('jpeg_quality'), -1, state.batch_size)]
        lq = state.lq
        out = quantize(lq)
        idx = [i for i, q in enumerate(quality) if q >= 0]
        if idx and self.jpeg_backend == 'torch':
            out[idx] = simulate_jpeg(lq[idx], [quality[i] for i in idx])
        elif idx:
            host = lq[idx].float().cpu()
            out[idx] = torch.stack([jpeg_compress(host[j], quality[i]) for j, i in enumerate(idx)]).to(lq.device)
        state.lq = out


# -------------------------------------------------------------------------------------------------
# the recipe: the stages in order, drawn and applied
# -------------------------------------------------------------------------------------------------
DEFAULT_STAGES = ('blur', 'gaussian_noise', 'poisson_noise', 'jpeg')


def stage_names(opt):
    """The ``degradation_stages`` option: registered stage names, the first one making the LR."""
    names = opt.get('degradation_stages')
    if names is None:
        return list(DEFAULT_STAGES)
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise OptionError('degradation_stages', names, 'expected a list of stage names')
    for name in names:
        if name not in DEGRADATION_STAGE_REGISTRY:
            raise OptionError('degradation_stages', names, f'no degradation stage {name!r} registered (known: '
                              f'{", ".join(DEGRADATION_STAGE_REGISTRY.names())})')
    if len(set(names)) != len(names):
        raise OptionError('degradation_stages', names, 'a stage is listed twice')
    makers = [n for n in names if DEGRADATION_STAGE_REGISTRY.get(n).makes_lr]
    if makers != [names[0]]:
        raise OptionError('degradation_stages', names, 'the first stage, and only the first, must make the LR '
                          f'image from the HR crop (e.g. blur); stages that do: {makers or "none"}')
    return list(names)


class DegradationRecipe:
    """The degradation of a dataset's options: its stages (``degradation_stages``, default
    :data:`DEFAULT_STAGES`) in order, each built from the same option dict.

    - :meth:`draw`: one sample's numbers, every stage's in stage order from the sample's rng (what a
      ``degrade_on: model`` sample carries);
    - :meth:`apply`: the executor, numbers -> the LR of a batch (and its kernel maps), random fields from a
      noise source: ``degrade_on: model`` runs it on the training device (:class:`SeededNoise`);
    - :meth:`degrade`: one sample through the same executor, a batch of one, each stage's numbers drawn
      just before it applies them and its fields from the same rng (:class:`GeneratorNoise`): the per-sample
      path.
    """

    def __init__(self, opt):
        self.scale = check_scale(opt)
        self.names = stage_names(opt)
        self.stages = [DEGRADATION_STAGE_REGISTRY.get(name)(opt) for name in self.names]

    def stage(self, name):
        return self.stages[self.names.index(name)]

    @property
    def carried(self):
        return [key for stage in self.stages for key in stage.carried]

    @property
    def reported(self):
        return [key for stage in self.stages for key in stage.reported]

    def synthesis_options(self):
        """What :meth:`apply` needs besides the numbers (JSON-able): the stage names and their apply options."""
        out = {'scale': self.scale, 'degradation_stages': list(self.names)}
        for stage in self.stages:
            out.update(stage.synthesis_options())
        return out

    def lr_depth(self, depth_hr):
        """1×H×W depth -> 1×h×w, the area average over each LR pixel's s×s footprint."""
        return F.avg_pool2d(depth_hr[None].float(), self.scale)[0]

    def draw(self, depth_lq, rng):
        """The numbers of one sample (every stage's, in stage order), then a ``noise_seed`` for its fields."""
        drawn = {}
        for stage in self.stages:
            drawn.update(stage.draw(rng, depth_lq, drawn))
        return drawn, int(rng.integers(0, 2**63 - 1))

    def apply(self, gt, numbers, noise, keep_kernels=True, until=None):
        """The executor: the stages applied in order to a batch of HR crops (B×3×H×W), up to the stage named
        ``until`` (excluded). Returns the :class:`DegradationState` (``lq``, ``kernel``)."""
        state = DegradationState(gt.float(), keep_kernels)
        for name, stage in zip(self.names, self.stages):
            if name == until:
                break
            stage.apply(state, numbers, noise)
        return state

    def degrade(self, gt, depth_lq, rng, noise=None):
        """One sample (``gt`` 3×H×W) through the executor as a batch of one; each stage's numbers are drawn
        from ``rng`` just before it runs and its random fields from ``rng`` too (``noise``, default
        ``GeneratorNoise(rng)``), so the whole sample comes from one stream. Returns ``(lq 3×h×w, kernel
        k²×h×w, numbers)``."""
        state = DegradationState(gt[None].float(), keep_kernels=True)
        noise = GeneratorNoise(rng) if noise is None else noise
        drawn, numbers = {}, {}
        for stage in self.stages:
            mine = stage.draw(rng, depth_lq, drawn)
            drawn.update(mine)
            # as a batch of one: what the stages drew so far, as degrade_on: model hands them all over
            numbers.update({key: (value[None] if torch.is_tensor(value) else [value]) for key, value in mine.items()})
            stage.apply(state, numbers, noise)
        return state.lq[0], (None if state.kernel is None else state.kernel[0]), drawn


class SVDegradation(DegradationRecipe):
    """Depth-driven spatially variant blur + ×s subsampling + noise + JPEG, drawn from a numpy Generator.

    Option keys (a dataset's option dict; all optional except ``scale``): ``degradation_stages`` (default
    blur, gaussian_noise, poisson_noise, jpeg) and each stage's own keys:
        blur: scale, kernel_size (21), kernel_mode (``depth`` | ``invariant`` | ``linear`` | ``rotate`` |
        ``block``), sigma_range ([0.6, 5.0] for ×4), rho_min (0.2), theta_jitter (0.3 rad),
        jitter_cells (4), block_size (8);
        gaussian_noise / poisson_noise: use_noise (true), noise_range ([1, 30], 0..255 scale),
        gray_noise_prob (0.4), poisson_prob (0.0), poisson_scale_range ([0.05, 3.0]);
        jpeg: use_jpeg (true), jpeg_range ([30, 95], integer qualities).
    Paper Table 3: ``w/o noise`` = use_noise false, ``w/o jpeg`` = use_jpeg false, ``noise + jpeg`` = both.
    """

    def __init__(self, opt):
        super().__init__(opt)
        blur = self.stages[0]
        # the kernel distribution's settings, read by the scripts that sample it
        self.kernel_size, self.kernel_mode, self.sigma_range = blur.kernel_size, blur.kernel_mode, blur.sigma_range
        self.rho_min, self.theta_jitter, self.jitter_cells = blur.rho_min, blur.theta_jitter, blur.jitter_cells

    def kernel_params(self, depth_lq, rng):
        """Per-pixel (σ_major, σ_minor, θ) maps (h×w) and the per-image scalars, for the kernel mode."""
        return self.stages[0].parameter_maps(depth_lq, rng)

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

    def _split(self, drawn):
        return ({key: drawn[key] for key in self.carried}, {key: drawn[key] for key in self.reported})

    def __call__(self, gt, depth_hr, rng, noise=None):
        """Degrade one sample (the per-sample path: :meth:`degrade`).

        Args:
            gt (Tensor): 3×H×W RGB float in [0, 1], H and W multiples of the scale.
            depth_hr (Tensor): 1×H×W depth in [0, 1] (1 = near).
            rng (np.random.Generator): the only randomness used.
            noise: where the random fields come from (default: ``rng``, :class:`GeneratorNoise`).

        Returns:
            dict: ``lq`` 3×h×w, ``kernel`` k²×h×w (None if no stage makes one), ``depth_lq`` 1×h×w, ``params``
            (the stages' reported numbers), ``numbers`` (their carried ones: what the batch path applies).
        """
        depth_lq = self.lr_depth(depth_hr)
        lq, kernel, drawn = self.degrade(gt, depth_lq, rng, noise)
        numbers, params = self._split(drawn)
        return {'lq': lq, 'kernel': kernel, 'depth_lq': depth_lq, 'params': params, 'numbers': numbers}

    def draw_params(self, depth_hr, rng):
        """The numbers of one sample's degradation without applying them (``degrade_on: model``:
        :class:`ssr_data.batch_degradation.BatchDegradation` applies them with :meth:`apply`).

        Every number comes from the same rng position as in :meth:`__call__` (the crop, the flips and the
        kernel parameters included), except after a stage that draws random fields: those fields are drawn
        on the training device from ``noise_seed``, so with noise on the later numbers fall at other rng
        positions (same laws).

        Returns:
            dict: ``depth_lq`` 1×h×w, ``numbers`` (the stages' :attr:`carried` numbers, e.g.
            ``kernel_params`` 3×h×w float32), ``params`` (as :meth:`__call__`), ``noise_seed`` (int in
            [0, 2⁶³)).
        """
        depth_lq = self.lr_depth(depth_hr)
        drawn, noise_seed = self.draw(depth_lq, rng)
        numbers, params = self._split(drawn)
        return {'depth_lq': depth_lq, 'numbers': numbers, 'params': params, 'noise_seed': noise_seed}


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


def kernel_code_spread(pca, scale, distribution=None, num=2000, seed=0):
    """Standard deviation of each component of ``pca``'s code (tensor of length L) over ``num`` kernels of the
    distribution (``distribution_kernels``): what a network divides the codes by so that the codes of the kernels
    it is trained on have unit spread. Raw codes are small (0.01-0.17 for k = 21 at x4, the last components far
    less), too small for a condition network at the learning rates its other inputs need. An empty basis (all
    zeros: not fitted yet) gives ones."""
    if not bool(pca.components.abs().sum() > 0):
        return torch.ones(pca.dim)
    k = pca.kernel_size
    reference = torch.as_tensor(distribution_kernels(num, k, scale, distribution, seed=seed)).float()
    codes = pca.encode(reference.t().reshape(1, k * k, 1, num).to(pca.components))
    return codes.std(dim=(0, 2, 3)).float().clamp_min(1e-6)
