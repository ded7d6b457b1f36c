"""SSRPipeline: blind super-resolution with SSR from its bare networks, in the manner of a diffusers pipeline.

The pipeline holds the networks and nothing of training: the diffusion network (``SSRUNet``: UNet, VAE,
condition encoders, AMF, kernel PCA), the frozen SVKR that estimates the depth and kernel maps, the
training noise schedule the sampler is derived from, and the sampling defaults. ``SSRModel`` validation,
the test-table model (``SSRBenchmarkModel``) and ``scripts/inference_ssr.py`` all sample through it. This
module holds sampling only: ``ssr_pipelines.builder`` assembles a pipeline from an option file or an
experiment folder, ``ssr_pipelines.model_folder`` writes and reads model folders (``save_pretrained`` /
``from_pretrained``).

Sampling (``__call__``) is a list of named stages, each a method: ``check_inputs`` -> ``prepare_conditions``
(the SVKR's depth and kernel maps) -> ``encode_lr`` -> ``condition_windows`` -> ``prepare_timesteps`` /
``prepare_latents`` -> ``denoise`` (the one loop) -> ``decode`` (with the colour correction). It is tiled
sampling; a whole image is its one-window case, so padding, the colour correction and the seeded noise exist
once. Every image-sized stage is cut into overlapping windows when ``tile`` is given: the SVKR (LR space, with
a context margin), the VAE encoder (each window upsamples its own LR window, or ``LayerwiseVAETiling``), the
UNet at every denoising step (latent space; the AMF condition features are computed once per latent window,
the predictions are blended over the overlaps before the scheduler step, as in MultiDiffusion / StableSR's
tiled sampling) and the VAE decoder, whose rows stream through the colour correction into the output.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from ssr_utils import compat

compat.apply()

from ssr_arch.ssr_unet_arch import SSRUNet  # noqa: E402
from ssr_pipelines.model_folder import PIPELINE_CONFIG, load_model_folder, save_model_folder  # noqa: E402
from ssr_utils.amp import amp_dtype, autocast  # noqa: E402
from ssr_utils.color_fix import StreamingColorFix  # noqa: E402
from ssr_utils.errors import OptionError  # noqa: E402
from ssr_utils.tiled_vae import tiled_decode, tiled_encode  # noqa: E402
from ssr_utils.tiling import TiledRunner, tiled_apply  # noqa: E402
from ssr_utils.visualize import kernel_variance  # noqa: E402

SAMPLERS = ('ddim', 'dpmsolver++')
COLOR_FIXES = ('none', 'adain', 'wavelet')
# how a tiled run cuts the VAE: 'windows' = each window through the whole VAE, blended over the overlaps
# (every GroupNorm sees its window only); 'layerwise' = ssr_utils.tiled_vae, one layer at a time over the
# whole image, every GroupNorm on whole-image statistics (equal to the untiled VAE up to summation order)
VAE_TILINGS = ('windows', 'layerwise')
VAE_STORES = ('memory', 'disk')
COND_CACHES = ('auto', 'device', 'cpu', 'none')
# LR pixels of context around each SVKR window: more than the receptive field of the demo-size networks
# (about 6 LR pixels, measured); even, so that DKENet's stride-2 stages keep their phase in every window
SVKR_CONTEXT = 16
SVKR_MIN_SIZE = 8
SVKR_MULTIPLE = 2


# ------------------------------------------------------------------------------------------ helpers
def upsample_lr(lq, size):
    """The LR image upsampled (bicubic, clamped to [0, 1]) to ``size``: what the VAE encodes and what the
    colour correction matches."""
    return F.interpolate(lq, size=tuple(size), mode='bicubic', align_corners=False).clamp(0, 1)


def upsample_lr_rows(lq, scale, row0, row1):
    """Rows ``[row0, row1)`` of ``upsample_lr(lq, (h·s, w·s))`` computed from the LR rows they depend on
    (bicubic reaches two LR rows each way), so the whole upsampled image is never made."""
    s = scale
    h, w = lq.shape[-2:]
    la, lb = max(0, row0 // s - 2), min(h, -(-row1 // s) + 2)
    up = upsample_lr(lq[..., la:lb, :], ((lb - la) * s, w * s))
    return up[..., row0 - la * s:row1 - la * s, :]


def pad_lr(lq, scale, multiple):
    """Pad ``lq`` at the bottom / right (reflect, replicate where reflection cannot reach) so the output size
    ``size · scale`` is a multiple of the network's ``multiple``. Returns the padded image and (h, w)."""
    h, w = lq.shape[-2:]

    def padded(n):
        m = n
        while (m * scale) % multiple:
            m += 1
        return m

    ph, pw = padded(h) - h, padded(w) - w
    if ph or pw:
        mode = 'reflect' if ph < h and pw < w else 'replicate'
        lq = F.pad(lq, (0, pw, 0, ph), mode=mode)
    return lq, (h, w)


def check_strength(strength, key='diffusion:strength'):
    """``strength`` as a float in (0, 1]."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise OptionError(key, strength, 'expected a number in (0, 1]') from None
    if not 0 < value <= 1:
        raise OptionError(key, strength, 'expected a number in (0, 1]')
    return value


def check_sampler(sampler, key='diffusion:sampler'):
    if sampler not in SAMPLERS:
        raise OptionError(key, sampler, f'expected one of {list(SAMPLERS)}')
    return sampler


def check_vae_tiling(vae_tiling, vae_store='memory'):
    if vae_tiling not in VAE_TILINGS:
        raise OptionError('vae_tiling', vae_tiling, f'expected one of {list(VAE_TILINGS)}')
    if vae_store not in VAE_STORES:
        raise OptionError('vae_store', vae_store, f'expected one of {list(VAE_STORES)}')
    return vae_tiling, vae_store


def check_cond_cache(cond_cache, key='cond_cache'):
    if cond_cache not in COND_CACHES:
        raise OptionError(key, cond_cache, 'expected auto, device, cpu or none')
    return cond_cache


def check_color_fix(method, key='diffusion:color_fix'):
    method = 'none' if method is None else method
    if method not in COLOR_FIXES:
        raise OptionError(key, method, 'expected adain, wavelet or none')
    return method


def strength_steps(num_steps, strength):
    """Index of the first sampler step and the number of steps run for ``strength`` (diffusers' img2img rule:
    ``int(num_steps * strength)`` steps, at least one)."""
    run = min(max(int(num_steps * strength), 1), num_steps)
    return num_steps - run, run


@contextmanager
def eval_mode(*nets):
    """The networks in eval mode for the block; their modes are restored afterwards."""
    modes = [(n, n.training) for n in nets if n is not None]
    for net, _ in modes:
        net.eval()
    try:
        yield
    finally:
        for net, mode in modes:
            net.train(mode)


def _round_up(n, m):
    return int(math.ceil(n / m) * m)


def _latent_map(x, lr_size, latent_size):
    """An LR-size condition map padded (replicate) to the padded image's ``lr_size``, resized to ``latent_size``."""
    if x is None:
        return None
    if tuple(x.shape[-2:]) != tuple(lr_size):
        x = F.pad(x, (0, lr_size[1] - x.shape[-1], 0, lr_size[0] - x.shape[-2]), mode='replicate')
    if tuple(x.shape[-2:]) != tuple(latent_size):
        x = F.interpolate(x, size=tuple(latent_size), mode='bilinear', align_corners=False, antialias=True)
    return x


def _map_conds(conds, fn):
    """Apply ``fn`` to every tensor of SSRUNet.encode_conditions' output (name -> [(tag, tensor, ...)])."""
    return {k: [(tag, *(fn(x) for x in xs)) for tag, *xs in v] for k, v in conds.items()}


def _as_batch(image):
    """``(B×3×h×w float32 tensor, function that turns a result back into the input's kind, input device)``.

    Tensors: ``B×3×h×w`` or ``3×h×w`` RGB in [0, 1]. NumPy arrays: ``h×w×3`` RGB (or ``h×w`` gray), uint8,
    uint16 or float in [0, 1]. PIL images (converted to RGB)."""
    if torch.is_tensor(image):
        squeeze = image.dim() == 3
        x = image[None] if squeeze else image
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'SSRPipeline: expected a B×3×h×w (or 3×h×w) RGB tensor, got {tuple(image.shape)}')
        return x.float(), (lambda y: y[0] if squeeze else y), x.device
    pil = None
    if not isinstance(image, np.ndarray):
        try:
            from PIL import Image
        except ImportError:
            Image = None
        if Image is not None and isinstance(image, Image.Image):
            pil = Image
            image = np.asarray(image.convert('RGB'))
        else:
            raise TypeError(f'SSRPipeline: expected a torch tensor, a NumPy array or a PIL image, got {type(image)}')
    arr = image[..., None].repeat(3, axis=2) if image.ndim == 2 else image
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f'SSRPipeline: expected an h×w×3 RGB (or h×w gray) array, got shape {image.shape}')
    top = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
    x = torch.from_numpy(np.ascontiguousarray(arr.astype(np.float32).transpose(2, 0, 1)) / top)[None]

    def back(y):
        out = y[0].permute(1, 2, 0).float().cpu().numpy()
        if top > 1:
            out = np.clip(np.round(out * top), 0, top).astype(arr.dtype)
        return pil.fromarray(out) if pil is not None else out

    return x, back, torch.device('cpu')


@dataclass
class SSRPipelineOutput:
    """``images``: the super-resolved images, the same kind as the input (a tensor gives ``B×3×(h·s)×(w·s)``
    RGB in [0, 1] on ``out_device``). ``depth``: the depth map that conditioned SSR (``B×1×h×w``, LR size,
    1 = near) or None. ``kernel_variance``: the spread of the kernel at every LR pixel (``B×1×h×w``,
    pixels²), with ``return_maps=True``."""
    images: Any
    depth: Optional[torch.Tensor] = None
    kernel_variance: Optional[torch.Tensor] = None


# ------------------------------------------------------------------------------------------ SVKR
@torch.no_grad()
def svkr_tiled(svkr, lr, tile=0, overlap=16, context=SVKR_CONTEXT, want=('sr', ), kernel_code=None, dtype=None,
               progress=False, out_device=None, into=None):
    """SVKR over LR windows. ``want`` from ``sr`` (HR image), ``depth`` (LR), ``kvar`` (kernel variance,
    LR), ``code`` (PCA code of the kernel map via ``kernel_code``, LR) -> dict of blended maps.
    ``tile`` None or 0: one window. ``into``: name -> tensor the rows are written into. ``dtype``: autocast.

    The full k²-channel kernel map is never stitched (441 channels at LR size would dominate memory);
    blended codes equal the code of blended kernels because the PCA encoding is affine per pixel."""
    device = next(svkr.parameters()).device

    def fn(t):
        with autocast(device, dtype):  # without 'sr' the last NBSR pass (Iᵀ) is skipped: same maps
            out = svkr(t.to(device)) if 'sr' in want else svkr(t.to(device), need_sr=False)
        res = {}
        if 'sr' in want:
            res['sr'] = out['sr'].float()
        if 'depth' in want and out.get('depth') is not None:
            res['depth'] = out['depth'].float()
        if 'kvar' in want:
            res['kvar'] = kernel_variance(out['kernel'].float())
        if 'code' in want:
            with autocast(device, dtype):
                res['code'] = kernel_code(out['kernel'].float()).float()
        return res

    return tiled_apply(fn, lr, tile if tile and tile > 0 else None, overlap, context, multiple=SVKR_MULTIPLE,
                       min_size=SVKR_MIN_SIZE, out_device=out_device, progress=progress, desc='SVKR tiles',
                       into=into)


# ------------------------------------------------------------------------------------------ sampling parts
@dataclass(frozen=True)
class SamplingWindows:
    """How one call cuts the image. ``tile`` / ``overlap``: as asked, in LR pixels (the SVKR's windows).
    ``lr_*``: the VAE encoder's windows in LR pixels, rounded so that every window starts on a whole latent
    pixel and has the network's size multiple; ``latent_*``: the UNet's and the VAE decoder's windows in
    latent pixels. A ``None`` tile: the whole image is one window."""
    scale: int
    tile: int
    overlap: int
    lr_tile: Optional[int]
    lr_overlap: int
    lr_context: int
    lr_multiple: int
    latent_tile: Optional[int]
    latent_overlap: int
    latent_multiple: int

    @classmethod
    def plan(cls, tile, overlap, scale, vae_scale_factor, size_multiple):
        """The windows of a call with ``tile`` (None / 0: untiled) and ``overlap`` LR pixels."""
        s, f, m = scale, vae_scale_factor, size_multiple
        tile = int(tile) if tile else 0
        overlap = int(overlap)
        if tile and not 0 <= overlap < tile:
            raise OptionError('tile_overlap', overlap, f'expected 0 <= overlap < tile ({tile})')
        lr_multiple = m // math.gcd(m, s)
        lr_step = f // math.gcd(f, s)
        if tile:
            lr_tile = _round_up(max(tile, 1), lr_multiple)
            lr_overlap = max(0, min(_round_up(overlap, lr_step), lr_tile - lr_step))
            lr_context = max(lr_overlap, _round_up(2, lr_step))  # at least bicubic's reach
            latent_tile, latent_overlap = lr_tile * s // f, lr_overlap * s // f
        else:
            lr_tile, lr_overlap, lr_context, latent_tile, latent_overlap = None, 0, 0, None, 0
        return cls(s, tile, overlap, lr_tile, lr_overlap, lr_context, lr_multiple, latent_tile, latent_overlap,
                   max(1, m // f))

    @property
    def tiled(self):
        return self.lr_tile is not None


class WindowVAETiling:
    """``vae_tiling='windows'``: each window runs through the whole VAE and the overlaps are blended, so every
    GroupNorm normalises with its own window's statistics. With one window it is the untiled VAE."""
    name = 'windows'

    def encode(self, net, lq, windows, progress=False, image=None):
        """Padded LR image ``lq`` -> LR latent of its upsampling; each window upsamples its own LR window. With
        ``image`` (HR size of ``lq``) that image is encoded instead, in the same windows at HR size."""
        s = windows.scale
        if image is not None:
            return tiled_apply(lambda t: net.encode_image(t).float(), image, windows.lr_tile and windows.lr_tile * s,
                               windows.lr_overlap * s, context=windows.lr_context * s,
                               multiple=windows.lr_multiple * s, out_device=lq.device, progress=progress,
                               desc='VAE encode')

        def encode_window(t):
            return net.encode_image(upsample_lr(t, (t.shape[-2] * s, t.shape[-1] * s))).float()

        return tiled_apply(encode_window, lq, windows.lr_tile, windows.lr_overlap, context=windows.lr_context,
                           multiple=windows.lr_multiple, out_device=lq.device, progress=progress, desc='VAE encode')

    def decode(self, net, latents, windows, push, out_device, progress=False):
        """Latents -> image rows in [0, 1], handed top to bottom to ``push(row0, row1, rows)``."""
        tiled_apply(lambda t: net.decode_latent(t).float(), latents, windows.latent_tile, windows.latent_overlap,
                    context=windows.latent_overlap, multiple=windows.latent_multiple, out_device=out_device,
                    progress=progress, desc='VAE decode', into={'out': push})


class LayerwiseVAETiling:
    """``vae_tiling='layerwise'``: ``ssr_utils.tiled_vae`` runs one layer at a time over the whole image in tiles,
    every GroupNorm on whole-image statistics (the untiled VAE up to summation order). Its image-size
    activations live in ``store``: ``memory`` (host memory) or ``disk`` (a temporary file)."""
    name = 'layerwise'

    def __init__(self, store='memory'):
        self.store = store

    def encode(self, net, lq, windows, progress=False, image=None):
        s = windows.scale
        image = (upsample_lr(lq, (lq.shape[-2] * s, lq.shape[-1] * s)) if image is None else image) * 2 - 1
        latent = tiled_encode(net.vae, image, tile_size=windows.lr_tile * s, out_device=lq.device, store=self.store,
                              progress=progress).mode()
        return latent * net.vae.config.scaling_factor

    def decode(self, net, latents, windows, push, out_device, progress=False):
        # rows in [-1, 1] -> decode_latent's [0, 1]
        tiled_decode(net.vae, latents / net.vae.config.scaling_factor, tile_size=windows.latent_tile,
                     out_device=out_device, store=self.store, progress=progress,
                     out=lambda r0, r1, rows: push(r0, r1, ((rows + 1) / 2).clamp(0, 1)))


def vae_tiling_strategy(vae_tiling='windows', vae_store='memory', tiled=True):
    """The VAE tiling of a call (checked): ``LayerwiseVAETiling`` for a tiled ``layerwise`` call, else
    ``WindowVAETiling`` (untiled, both are the untiled VAE)."""
    vae_tiling, vae_store = check_vae_tiling(vae_tiling, vae_store)
    return LayerwiseVAETiling(vae_store) if tiled and vae_tiling == 'layerwise' else WindowVAETiling()


class ConditionWindows:
    """The AMF condition features of every latent window, computed on first use and kept where ``cache`` says
    (``device``; ``cpu``, moved back each step; ``none``: recomputed every step), and the network's prediction
    over the windows (``predict``), blended over the overlaps before the scheduler step."""

    def __init__(self, net, lr_latent, depth, code, runner, cache, device):
        self.net, self.lr_latent, self.depth, self.code = net, lr_latent, depth, code
        self.runner, self.cache, self.device = runner, cache, device
        self.features = {}

    def __call__(self, window):
        """The condition features of ``window`` = ``(y0, y1, x0, x1)`` in latent pixels."""
        if window in self.features:
            feats = self.features[window]
            return _map_conds(feats, lambda x: x.to(self.device, non_blocking=True)) if self.cache == 'cpu' else feats
        y0, y1, x0, x1 = window
        code = None if self.code is None else self.code[..., y0:y1, x0:x1]
        lr_latent = self.lr_latent[..., y0:y1, x0:x1]
        depth = None if self.depth is None else self.depth[..., y0:y1, x0:x1]
        feats = self.net.encode_conditions(lr_latent, depth, None if code is None else code.to(lr_latent.dtype),
                                           size=(y1 - y0, x1 - x0))
        if self.cache == 'device':
            self.features[window] = feats
        elif self.cache == 'cpu':
            self.features[window] = _map_conds(feats, lambda x: x.to('cpu'))
        return feats

    def window_prediction(self, model_input, t, window):
        if tuple(model_input.shape[-2:]) != (window[1] - window[0], window[3] - window[2]):
            raise RuntimeError('SSRPipeline: latent window was padded; size multiple mismatch')
        return self.net(model_input, t, conditions=self(window)).float()

    def predict(self, model_input, t):
        """The network's prediction (the noise, or v) for the whole latent ``model_input`` at step ``t``."""
        return self.runner(lambda z, window: self.window_prediction(z, t, window), model_input)


@dataclass(frozen=True)
class SamplingSettings:
    """The arguments of one ``SSRPipeline.__call__``, checked, with the pipeline's defaults filled in."""
    num_inference_steps: int
    strength: float
    sampler: str
    seed: int
    color_fix: str
    dtype: Optional[torch.dtype]
    cond_cache: str
    windows: SamplingWindows
    vae_tiling: Any  # WindowVAETiling | LayerwiseVAETiling

# ------------------------------------------------------------------------------------------ pipeline
class SSRPipeline:
    """SSR super-resolution from bare networks.

    Args:
        unet (SSRUNet | None): the diffusion network (None: an SVKR-only pipeline, ``svkr_only`` works).
        scheduler: the training noise schedule (a diffusers ``DDPMScheduler`` or its config dict); the DDIM /
            DPM-Solver++ sampler is derived from it.
        svkr (SVKR | None): estimates the depth and kernel maps (None: pass ``depth=`` / ``kernel=``).
        scale (int | None): the SR factor (default: the SVKR's).
        sampler, num_inference_steps, strength, seed, color_fix, solver_order: sampling defaults (the
            ``diffusion`` block of an option file), each overridable per call.
        dtype: autocast precision (``none`` / ``fp16`` / ``bf16`` or a torch dtype; the weights stay float32).
    """
    config_name = PIPELINE_CONFIG

    def __init__(self, unet=None, scheduler=None, svkr=None, scale=None, sampler='dpmsolver++', num_inference_steps=50,
                 strength=1.0, seed=0, color_fix='wavelet', solver_order=2, dtype=None):
        if unet is None and svkr is None:
            raise ValueError('SSRPipeline needs an SSRUNet, an SVKR or both')
        if unet is not None and not isinstance(unet, SSRUNet):
            raise TypeError(f'SSRPipeline: unet must be an SSRUNet, got {type(unet).__name__}')
        if unet is not None and scheduler is None:
            raise ValueError('SSRPipeline: the SSRUNet needs its training noise schedule (scheduler=)')
        if isinstance(scheduler, dict):
            from diffusers import DDPMScheduler
            scheduler = DDPMScheduler.from_config(scheduler)
        svkr_scale = getattr(svkr, 'scale', None)
        scale = svkr_scale if scale is None else int(scale)
        if scale is None:
            raise ValueError('SSRPipeline: give scale= (there is no SVKR to take it from)')
        if svkr_scale is not None and int(svkr_scale) != scale:
            raise OptionError('scale', scale, f'the SVKR super-resolves ×{svkr_scale}')
        self.unet, self.svkr, self.scheduler = unet, svkr, scheduler
        self.scale = scale
        self.sampler = check_sampler(sampler)
        self.num_inference_steps = int(num_inference_steps)
        if self.num_inference_steps < 1:
            raise OptionError('diffusion:num_inference_steps', num_inference_steps, 'expected an integer >= 1')
        self.strength = check_strength(strength)
        self.seed = int(seed)
        self.color_fix = check_color_fix(color_fix)
        self.solver_order = int(solver_order)
        self.dtype = amp_dtype(dtype, 'dtype')

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        """What ``model_index.json`` holds besides the components: the scale and the sampling defaults."""
        return dict(scale=self.scale, sampler=self.sampler, num_inference_steps=self.num_inference_steps,
                    strength=self.strength, seed=self.seed, color_fix=self.color_fix, solver_order=self.solver_order)

    @property
    def device(self):
        net = self.unet if self.unet is not None else self.svkr
        return next(net.parameters()).device

    def to(self, device):
        for net in (self.unet, self.svkr):
            if net is not None:
                net.to(device)
        return self

    def needs_maps(self):
        """Whether the SSR network is conditioned on depth or kernel maps (which the SVKR estimates)."""
        return self.unet is not None and any(m != 'lr' for m in self.unet.modalities)

    def kernel_pca(self):
        """The kernel PCA the conditions are coded with (the SSRUNet's, else the SVKR's NBSR's), or None."""
        if self.unet is not None and self.unet.has_pca:
            return self.unet.pca
        return getattr(getattr(self.svkr, 'sr_net', None), 'pca', None)

    # ------------------------------------------------------------------ sampling
    def sampling_scheduler(self, sampler=None):
        """A fresh DDIM or DPM-Solver++ scheduler on the training schedule."""
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
        sampler = check_sampler(self.sampler if sampler is None else sampler, 'sampler')
        cfg = self.scheduler.config
        if sampler == 'ddim':
            return DDIMScheduler.from_config(cfg)
        return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type='dpmsolver++',
                                                       solver_order=self.solver_order)

    strength_steps = staticmethod(strength_steps)

    # ------------------------------------------------------------------ sampling stages
    def check_inputs(self, num_inference_steps=None, strength=None, sampler=None, seed=None, tile=None,
                     tile_overlap=16, color_fix=None, dtype=None, cond_cache='auto', vae_tiling='windows',
                     vae_store='memory'):
        """Check the sampling arguments of ``__call__`` (an ``OptionError`` names a bad one) and fill in the
        pipeline's defaults; returns the ``SamplingSettings`` the other stages read."""
        if self.unet is None:
            raise RuntimeError('SSRPipeline: this pipeline has no SSR network (an SVKR-only model); use svkr_only()')
        steps = int(num_inference_steps or self.num_inference_steps)
        if steps < 1:
            raise OptionError('num_inference_steps', num_inference_steps, 'expected an integer >= 1')
        vae_tiling = vae_tiling_strategy(vae_tiling, vae_store, tiled=bool(tile))
        color_fix = check_color_fix(self.color_fix if color_fix is None else color_fix, 'color_fix')
        dtype = self.dtype if dtype is None else amp_dtype(dtype, 'dtype')
        windows = SamplingWindows.plan(tile, tile_overlap, self.scale, self.unet.vae_scale_factor,
                                       self.unet.size_multiple)
        return SamplingSettings(
            num_inference_steps=steps, strength=check_strength(self.strength if strength is None else strength,
                                                               'strength'),
            sampler=check_sampler(self.sampler if sampler is None else sampler, 'sampler'),
            seed=int(self.seed if seed is None else seed), color_fix=color_fix, dtype=dtype,
            cond_cache=check_cond_cache(cond_cache), windows=windows, vae_tiling=vae_tiling)

    @torch.no_grad()
    def prepare_conditions(self, lr, depth=None, kernel=None, tile=None, tile_overlap=16, dtype=None, return_maps=False,
                           progress=False):
        """The LR-size maps SSR is conditioned on: ``depth`` (B×1×h×w), ``code`` (the kernel map's PCA code) and,
        with ``return_maps``, ``kvar`` (kernel variance); the given ``depth`` / ``kernel`` maps, the rest from the
        SVKR, tiled in LR space when ``tile`` is given; with ``network_g: lr_input: svkr`` also ``sr``, the SVKR's
        Iᵀ (HR size), what the LR encoder reads. Returns a dict of the maps there are."""
        net, dev = self.unet, self.device
        need_depth, need_kernel = 'depth' in net.modalities, 'kernel' in net.modalities
        need_sr = net.lr_input == 'svkr'
        maps = {}
        if depth is not None:
            maps['depth'] = depth.to(dev).float()
        if kernel is not None:
            kernel = kernel.to(dev).float()
            if need_kernel:
                with autocast(dev, dtype):
                    maps['code'] = net.kernel_code(kernel).float()
            if return_maps:
                maps['kvar'] = kernel_variance(kernel)
        want = [name for name, wanted in (('depth', need_depth or return_maps), ('code', need_kernel),
                                          ('kvar', return_maps), ('sr', need_sr)) if wanted and name not in maps]
        needed = [name for name in want if name != 'kvar' and (name in ('code', 'sr') or need_depth)]
        if want and self.svkr is None:
            if 'sr' in needed:
                raise OptionError('network_svkr', None, 'the LR encoder reads the SVKR\'s Iᵀ (network_g: lr_input: '
                                  'svkr): SSR needs its SVKR')
            if needed:
                raise OptionError('network_svkr', None, 'SSR needs an SVKR for the depth / kernel maps (or give '
                                  'depth= and kernel= maps)')
            want = []
        if want:
            maps.update(svkr_tiled(self.svkr, lr, tile, tile_overlap, want=want, kernel_code=net.kernel_code,
                                   dtype=dtype, progress=progress, out_device=dev))
            if need_depth and 'depth' not in maps:
                raise OptionError('network_svkr:use_depth', False, 'the depth modality needs an SVKR with depth')
        return maps

    @torch.no_grad()
    def encode_lr(self, lq, windows, vae_tiling=None, progress=False, svkr_sr=None):
        """The padded LR image ``lq`` (``pad_lr``), upsampled to the output size and VAE-encoded: the scaled LR
        latent (float32) the conditions and a ``strength`` < 1 start from. ``windows``: ``SamplingWindows``;
        ``vae_tiling``: the VAE tiling strategy (default: ``WindowVAETiling``). With ``svkr_sr`` (the SVKR's Iᵀ of
        the unpadded image; ``network_g: lr_input: svkr``) that image, padded as ``lq`` is, is encoded instead:
        restoration, then generation."""
        vae_tiling = WindowVAETiling() if vae_tiling is None else vae_tiling
        image = None
        if svkr_sr is not None:
            s = windows.scale
            image = svkr_sr.to(lq.device).float().clamp(0, 1)
            gh, gw = lq.shape[-2] * s - image.shape[-2], lq.shape[-1] * s - image.shape[-1]
            if gh or gw:
                mode = 'reflect' if gh < image.shape[-2] and gw < image.shape[-1] else 'replicate'
                image = F.pad(image, (0, gw, 0, gh), mode=mode)
        return vae_tiling.encode(self.unet, lq, windows, progress, image=image)

    def condition_windows(self, lr_latent, maps, windows, cond_cache='auto'):
        """The ``ConditionWindows`` of a call: the LR latent and the maps of ``prepare_conditions`` (padded as the
        image was and resized to the latent) cut into the UNet's windows; its ``predict`` is what ``denoise``
        runs at every step. ``cond_cache``: see ``__call__``."""
        net, dev = self.unet, self.device
        zh, zw = lr_latent.shape[-2:]
        f, s = net.vae_scale_factor, self.scale
        depth = maps.get('depth') if 'depth' in net.modalities else None
        code = maps.get('code') if 'kernel' in net.modalities else None
        lr_size = (zh * f // s, zw * f // s)  # the padded LR image's: its upsampling is a whole number of latents
        depth, code = (_latent_map(x, lr_size, (zh, zw)) for x in (depth, code))
        runner = TiledRunner(windows.latent_tile, windows.latent_overlap, context=0, multiple=windows.latent_multiple,
                             out_device=dev, with_window=True)
        if check_cond_cache(cond_cache) == 'auto':  # one window (a whole image): its features are computed once
            one = len(runner.windows(zh, zw)[0]) == 1
            cond_cache = 'device' if one else ('cpu' if dev.type == 'cuda' else 'none')
        return ConditionWindows(net, lr_latent, depth, code, runner, cond_cache, dev)

    def prepare_timesteps(self, num_inference_steps=None, strength=None, sampler=None):
        """A fresh sampling scheduler (``sampling_scheduler``) set to ``num_inference_steps`` and the timesteps
        that run: all of them for ``strength`` 1, the last ``int(steps · strength)`` below 1 (diffusers' img2img
        rule). Returns ``(scheduler, timesteps)``."""
        steps = int(num_inference_steps or self.num_inference_steps)
        strength = check_strength(self.strength if strength is None else strength, 'strength')
        scheduler = self.sampling_scheduler(sampler)
        scheduler.set_timesteps(steps, device=self.device)
        timesteps = scheduler.timesteps
        if strength < 1:
            start = strength_steps(steps, strength)[0] * scheduler.order
            timesteps = timesteps[start:]
            if hasattr(scheduler, 'set_begin_index'):
                scheduler.set_begin_index(start)
        return scheduler, timesteps

    def prepare_latents(self, latent_shape, scheduler, timesteps, generator, init_latent=None):
        """The starting latent (float32): seeded noise from ``generator`` (a ``torch.Generator`` on the pipeline's
        device), scaled for the scheduler; with ``init_latent`` (the LR latent, for ``strength`` < 1) that latent
        noised with the same noise to the first of ``timesteps``."""
        latents = torch.randn(latent_shape, generator=generator, device=self.device, dtype=torch.float32)
        if init_latent is None:
            return latents * scheduler.init_noise_sigma
        if tuple(init_latent.shape) != tuple(latent_shape):
            raise ValueError(f'SSRPipeline.prepare_latents: init_latent {tuple(init_latent.shape)} does not match the '
                             f'latent shape {tuple(latent_shape)}')
        t0 = timesteps[:1].repeat(latent_shape[0])
        return scheduler.add_noise(init_latent.to(self.device, torch.float32), latents, t0)

    @torch.no_grad()
    def denoise(self, latents, scheduler, timesteps, predict, progress=False):
        """The sampling loop: at every timestep ``predict(model_input, t)`` is the network's prediction (the
        noise, or v with ``prediction_type: v_prediction``; e.g. ``ConditionWindows.predict``) and the scheduler
        steps; returns the final latent (float32)."""
        for t in tqdm(timesteps, desc='SSR sampling', disable=not progress, leave=False):
            pred = predict(scheduler.scale_model_input(latents, t), t)
            latents = scheduler.step(pred.float(), t, latents).prev_sample
        return latents

    @torch.no_grad()
    def decode(self, latents, lq, windows, color_fix, out, vae_tiling=None, out_device=None, progress=False):
        """The final latent -> the image, written into ``out`` (B×3×(h·s)×(w·s), the unpadded size): VAE-decoded
        (``vae_tiling``, default ``WindowVAETiling``) in row bands that stream through the colour correction
        (``color_fix`` against the upsampled padded LR image ``lq``). Returns ``out``."""
        vae_tiling = WindowVAETiling() if vae_tiling is None else vae_tiling
        out_device = out.device if out_device is None else out_device
        s = self.scale
        fixer = StreamingColorFix(color_fix, lambda a, b: upsample_lr_rows(lq, s, a, b).to(out_device).float(),
                                  lq.shape[-2] * s, out)
        vae_tiling.decode(self.unet, latents, windows, fixer.push, out_device, progress)
        fixer.finish()
        return out

    @torch.no_grad()
    def __call__(self, image, num_inference_steps=None, strength=None, sampler=None, seed=None, tile=None,
                 tile_overlap=16, color_fix=None, dtype=None, depth=None, kernel=None, return_maps=False,
                 progress=False, out=None, out_device=None, cond_cache='auto', vae_tiling='windows', vae_store='memory'):
        """Super-resolve ``image`` (see ``SSRPipelineOutput``; tensors, NumPy arrays and PIL images).

        ``tile`` / ``tile_overlap``: windows in LR pixels (None / 0: the whole image is one window).
        ``depth`` (B×1×h×w) / ``kernel`` (B×k²×h×w), LR size: given maps instead of the SVKR's estimates.
        ``out``: a float32 B×3×(h·s)×(w·s) tensor the result is written into (e.g. a view of an image array).
        ``cond_cache``: where the per-window AMF features live between steps: ``device``, ``cpu``, ``none``
        (recomputed every step), ``auto`` = ``device`` for one window, else ``cpu`` on CUDA and ``none`` elsewhere
        (measured on CPU, bench_inference.py: same time, a third of the memory).
        ``vae_tiling``: how ``tile`` cuts the VAE encoder and decoder: ``windows`` (default,
        ``WindowVAETiling``) or ``layerwise`` (``LayerwiseVAETiling``, no tone seams; its image-size activations
        in ``vae_store``: ``memory`` or ``disk``). Without ``tile`` both are the untiled VAE. Other arguments
        default to the pipeline's.

        The stages, each a method: ``check_inputs`` -> ``prepare_conditions`` (SVKR maps) -> ``encode_lr`` ->
        ``condition_windows`` -> ``prepare_timesteps`` / ``prepare_latents`` -> ``denoise`` -> ``decode``."""
        run = self.check_inputs(num_inference_steps, strength, sampler, seed, tile, tile_overlap, color_fix, dtype,
                                cond_cache, vae_tiling, vae_store)
        lr, back, in_device = _as_batch(image)
        out_device = torch.device(out_device) if out_device is not None else in_device
        lr, dev = lr.to(self.device), self.device
        b, _, h, w = lr.shape
        with eval_mode(self.unet, self.svkr):
            maps = self.prepare_conditions(lr, depth, kernel, run.windows.tile, run.windows.overlap, run.dtype,
                                           return_maps, progress)
            lq, _ = pad_lr(lr, self.scale, self.unet.size_multiple)
            if out is None:
                out = torch.empty((b, 3, h * self.scale, w * self.scale), dtype=torch.float32, device=out_device)
            with autocast(dev, run.dtype):
                lr_latent = self.encode_lr(lq, run.windows, run.vae_tiling, progress, svkr_sr=maps.get('sr'))
                conditions = self.condition_windows(lr_latent, maps, run.windows, run.cond_cache)
                scheduler, timesteps = self.prepare_timesteps(run.num_inference_steps, run.strength, run.sampler)
                generator = torch.Generator(device=dev).manual_seed(run.seed)
                latents = self.prepare_latents(lr_latent.shape, scheduler, timesteps, generator,
                                               init_latent=lr_latent if run.strength < 1 else None)
                latents = self.denoise(latents, scheduler, timesteps, conditions.predict, progress)
                self.decode(latents, lq, run.windows, run.color_fix, out, run.vae_tiling, out_device, progress)
        return SSRPipelineOutput(images=back(out), depth=maps.get('depth'),
                                 kernel_variance=maps.get('kvar') if return_maps else None)

    @torch.no_grad()
    def svkr_only(self, image, tile=None, tile_overlap=16, dtype=None, return_maps=False, progress=False, out=None,
                  out_device=None):
        """The SVKR's non-blind SR result Iᵀ (fast, deterministic), tiled in LR space when ``tile`` is given;
        with ``return_maps`` also its depth and kernel-variance maps. Returns an ``SSRPipelineOutput``."""
        if self.svkr is None:
            raise RuntimeError('SSRPipeline: this pipeline has no SVKR')
        lr, back, in_device = _as_batch(image)
        out_device = torch.device(out_device) if out_device is not None else in_device
        want = ('sr', 'depth', 'kvar') if return_maps else ('sr', )
        with eval_mode(self.svkr):
            res = svkr_tiled(self.svkr, lr.to(self.device), tile, tile_overlap, want=want,
                             dtype=self.dtype if dtype is None else amp_dtype(dtype, 'dtype'), progress=progress,
                             out_device=out_device, into=None if out is None else {'sr': out})
        sr = res['sr'].clamp_(0, 1)
        return SSRPipelineOutput(images=back(sr), depth=res.get('depth'), kernel_variance=res.get('kvar'))

    # ------------------------------------------------------------------ folders
    def save_pretrained(self, save_directory):
        """Write the model folder (``ssr_pipelines.model_folder``); ``model_index.json`` last, so a folder that has
        it is complete."""
        save_model_folder(self, save_directory)

    @classmethod
    def from_pretrained(cls, folder, device=None, dtype=None):
        """Load a folder written by ``save_pretrained`` (local paths only) onto ``device`` (default: CPU).
        ``dtype``: the default autocast precision of the loaded pipeline."""
        unet, scheduler, svkr, config = load_model_folder(folder)
        return cls(unet, scheduler, svkr, dtype=dtype, **config).to(device if device is not None else 'cpu')
