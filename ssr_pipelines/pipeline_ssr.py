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
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from ssr_utils import compat

compat.apply()

from diffusers import AutoencoderKL  # noqa: E402
from diffusers.utils import BaseOutput  # noqa: E402

from ssr_arch.ssr_unet_arch import SSRUNet  # noqa: E402
from ssr_data.kernels import KernelPCA  # noqa: E402
from ssr_pipelines.model_folder import PIPELINE_CONFIG, load_model_folder, save_model_folder  # noqa: E402
from ssr_utils.amp import amp_dtype, autocast  # noqa: E402
from ssr_utils.color_fix import StreamingColorFix  # noqa: E402
from ssr_utils.errors import OptionError  # noqa: E402
from ssr_utils.tiled_vae import choose_store, layerwise_store_bytes, tiled_decode, tiled_encode  # noqa: E402
from ssr_utils.tiling import TiledRunner, tiled_apply  # noqa: E402
from ssr_utils.visualize import kernel_variance  # noqa: E402

SAMPLERS = ('ddim', 'dpmsolver++')
COLOR_FIXES = ('none', 'adain', 'wavelet')
# how a tiled run cuts the VAE: 'windows' = each window through the whole VAE, blended over the overlaps
# (every GroupNorm sees its window only); 'layerwise' = ssr_utils.tiled_vae, one layer at a time over the
# whole image, every GroupNorm on whole-image statistics (equal to the untiled VAE up to summation order)
VAE_TILINGS = ('windows', 'layerwise')
VAE_STORES = ('auto', 'memory', 'disk')
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


def check_vae_residual(value, key='diffusion:vae_residual'):
    if not isinstance(value, bool):
        raise OptionError(key, value, 'expected true or false')
    return value


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


OUTPUT_TYPES = ('pil', 'np', 'pt', 'latent')


class _Images:
    """The images of one call as a ``B×3×h×w`` float32 tensor (``batch``, on ``device``, the input's), and how
    results go back in the input's kind (``convert``).

    Inputs: a tensor ``B×3×h×w`` (or ``3×h×w``) RGB in [0, 1]; a NumPy array ``h×w×3`` RGB (or ``h×w`` gray),
    uint8, uint16 or float in [0, 1]; a PIL image (converted to RGB); or a list of these, all of one size."""

    def __init__(self, image):
        self.items = None
        if isinstance(image, (list, tuple)):
            if not image:
                raise ValueError('SSRPipeline: an empty list of images')
            self.items = [_Images(item) for item in image]
            sizes = sorted({tuple(item.batch.shape[-2:]) for item in self.items})
            if len(sizes) > 1:
                raise ValueError(f'SSRPipeline: the images of a list must have one size, got {sizes} (call the '
                                 'pipeline once per size)')
            self.device = self.items[0].device
            self.batch = torch.cat([item.batch.to(self.device) for item in self.items])
            return
        self.kind, self.top, self.np_dtype = 'tensor', 1.0, None
        if torch.is_tensor(image):
            self.kind = 'tensor3' if image.dim() == 3 else 'tensor'
            x = image[None] if image.dim() == 3 else image
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f'SSRPipeline: expected a B×3×h×w (or 3×h×w) RGB tensor, got {tuple(image.shape)}')
            self.batch, self.device = x.float(), x.device
            return
        if not isinstance(image, np.ndarray):
            try:
                from PIL import Image
            except ImportError:
                Image = None
            if Image is None or not isinstance(image, Image.Image):
                raise TypeError('SSRPipeline: expected a torch tensor, a NumPy array, a PIL image or a list of them, '
                                f'got {type(image)}')
            self.kind = 'pil'
            image = np.asarray(image.convert('RGB'))
        else:
            self.kind = 'numpy'
        arr = image[..., None].repeat(3, axis=2) if image.ndim == 2 else image
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f'SSRPipeline: expected an h×w×3 RGB (or h×w gray) array, got shape {image.shape}')
        self.np_dtype = arr.dtype
        self.top = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
        self.batch = torch.from_numpy(np.ascontiguousarray(arr.astype(np.float32).transpose(2, 0, 1)) / self.top)[None]
        self.device = torch.device('cpu')

    def convert(self, y, output_type=None):
        """``y`` (``N×3×H×W`` in [0, 1]: the samples of every input image, image by image) as ``output_type``:
        ``pt`` the tensor, ``np`` a float32 ``N×H×W×3`` array and ``pil`` a list of PIL images (diffusers'
        conventions); None the input's kind: one result for one sample of one image, several samples of one image
        stacked along a new first axis (a list for a PIL image), a list for a list."""
        if output_type == 'pt':
            return y
        if output_type == 'np':
            return y.permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == 'pil':
            from PIL import Image
            arrays = np.clip(np.round(y.permute(0, 2, 3, 1).float().cpu().numpy() * 255), 0, 255).astype(np.uint8)
            return [Image.fromarray(a) for a in arrays]
        if self.items is not None:
            per = y.shape[0] // len(self.items)
            return [self.items[j // per].convert(y[j:j + 1]) for j in range(y.shape[0])]
        if self.kind == 'tensor':
            return y
        if self.kind == 'tensor3':
            return y[0] if y.shape[0] == 1 else y
        arrays = y.permute(0, 2, 3, 1).float().cpu().numpy()
        if self.top > 1:
            arrays = np.clip(np.round(arrays * self.top), 0, self.top).astype(self.np_dtype)
        if self.kind == 'pil':
            from PIL import Image
            images = [Image.fromarray(a) for a in arrays]
            return images[0] if len(images) == 1 else images
        return arrays[0] if arrays.shape[0] == 1 else arrays


def check_output_type(output_type):
    if output_type is not None and output_type not in OUTPUT_TYPES:
        raise OptionError('output_type', output_type, f'expected one of {list(OUTPUT_TYPES)} or None (the input\'s '
                          'kind)')
    return output_type


@dataclass
class SSRPipelineOutput(BaseOutput):
    """``images``: the super-resolved images (``output_type``; by default the input's kind: a tensor gives
    ``B×3×(h·s)×(w·s)`` RGB in [0, 1] on ``out_device``); with several samples per image, the samples of each
    image one after another. ``depth``: the depth map that conditioned SSR (``B×1×h×w``, LR size, 1 = near, one
    per input image) or None. ``kernel_variance``: the spread of the kernel at every LR pixel (``B×1×h×w``,
    pixels²), with ``return_maps=True``. A diffusers ``BaseOutput``: ``out.images``, ``out['images']`` and
    ``out.to_tuple()`` (the fields that are not None, in this order: what ``return_dict=False`` returns)."""
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
    activations live in ``store``: ``memory`` (host memory), ``disk`` (a temporary file) or ``auto`` (memory when
    they take at most half of the memory the system has available, else disk: ``tiled_vae.choose_store``).
    ``tile_size``: the tiles in output pixels; default (None) the call's windows (``SamplingWindows``)."""
    name = 'layerwise'

    def __init__(self, store='auto', tile_size=None):
        self.store = store
        self.tile_size = None if tile_size is None else int(tile_size)

    def _store(self, vae, part, batch, height, width):
        if self.store != 'auto':
            return self.store
        return choose_store(layerwise_store_bytes(vae, height, width, batch, part))

    def encode(self, net, lq, windows, progress=False, image=None):
        s = windows.scale
        h, w = lq.shape[-2] * s, lq.shape[-1] * s
        tile = self.tile_size or windows.lr_tile * s
        image = (upsample_lr(lq, (h, w)) if image is None else image) * 2 - 1
        store = self._store(net.vae, 'encoder', lq.shape[0], h, w)
        latent = tiled_encode(net.vae, image, tile_size=tile, out_device=lq.device, store=store,
                              progress=progress).mode()
        return latent * net.vae.config.scaling_factor

    def decode(self, net, latents, windows, push, out_device, progress=False):
        f = net.vae_scale_factor
        tile = max(1, self.tile_size // f) if self.tile_size else windows.latent_tile
        store = self._store(net.vae, 'decoder', latents.shape[0], latents.shape[-2] * f, latents.shape[-1] * f)
        # rows in [-1, 1] -> decode_latent's [0, 1]
        tiled_decode(net.vae, latents / net.vae.config.scaling_factor, tile_size=tile, out_device=out_device,
                     store=store, progress=progress,
                     out=lambda r0, r1, rows: push(r0, r1, ((rows + 1) / 2).clamp(0, 1)))


def vae_tiling_strategy(vae_tiling='windows', vae_store='memory', tiled=True, tile_size=None):
    """The VAE tiling of a call (checked): ``LayerwiseVAETiling`` for a tiled ``layerwise`` call, or for any call
    with a ``tile_size`` of its own (``enable_vae_tiling``); else ``WindowVAETiling`` (untiled, both are the
    untiled VAE)."""
    vae_tiling, vae_store = check_vae_tiling(vae_tiling, vae_store)
    if vae_tiling == 'layerwise' and (tiled or tile_size):
        return LayerwiseVAETiling(vae_store, None if tiled else tile_size)
    return WindowVAETiling()


def _repeat_batch(conds, batch):
    """The condition features of ``B`` images for ``batch`` samples (each image's samples one after another):
    unchanged when the batches agree or when there is one image (broadcast by the fusion)."""
    first = next((xs[0] for entries in conds.values() for _, *xs in entries), None)
    if first is None or first.shape[0] in (1, batch):
        return conds
    if batch % first.shape[0]:
        raise RuntimeError(f'SSRPipeline: {batch} samples for condition features of {first.shape[0]} images')
    return _map_conds(conds, lambda x: x.repeat_interleave(batch // first.shape[0], 0))


class ConditionWindows:
    """The AMF condition features of every latent window, computed on first use and kept where ``cache`` says
    (``device``; ``cpu``, moved back each step; ``none``: recomputed every step), and the network's prediction
    over the windows (``predict``), blended over the overlaps before the scheduler step. The features are those
    of the input images; several samples of one image share them."""

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
        conditions = _repeat_batch(self(window), model_input.shape[0])
        return self.net(model_input, t, conditions=conditions).float()

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
    vae_residual: bool
    cond_cache: str
    windows: SamplingWindows
    vae_tiling: Any  # WindowVAETiling | LayerwiseVAETiling
    num_images: int = 1
    output_type: Optional[str] = None
    callback_tensor_inputs: tuple = ('latents', )


# ------------------------------------------------------------------------------------------ precision
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def weights_dtype(value, key='torch_dtype'):
    """``torch.float16`` / ``torch.bfloat16`` / ``torch.float32`` (or ``fp16`` / ``bf16`` / ``fp32``) as a dtype."""
    return amp_dtype(value, key) or torch.float32


def float32_modules(net, dtype):
    """The modules of ``net`` that keep float32 weights when it is cast to the half-precision ``dtype``:
    batch norms (their running variances leave float16's range; the AMF layers fold them into float32 affine
    maps), the kernel PCA bases (the kernel maps are float32: DKENet's softmax; a code is a difference of
    taps near 1/k²), modules that mark themselves ``keep_in_float32`` (DKENet's focus-plane estimator, which
    computes in float32), and, for float16, a VAE whose config asks for it (diffusers' ``force_upcast``)."""
    keep = []
    for module in net.modules():
        if isinstance(module, _BATCH_NORMS + (KernelPCA, )) or getattr(module, 'keep_in_float32', False):
            keep.append(module)
        elif dtype == torch.float16 and isinstance(module, AutoencoderKL) and module.config.get('force_upcast'):
            keep.append(module)
    return keep


def cast_weights(net, dtype):
    """Cast the floating-point weights and buffers of ``net`` to ``dtype`` in place, except those of
    ``float32_modules`` (float32, never rounded on the way: each tensor is converted once from what it holds)."""
    kept = {id(sub) for module in (float32_modules(net, dtype) if dtype != torch.float32 else ())
            for sub in module.modules()}
    for module in net.modules():
        target = torch.float32 if id(module) in kept else dtype
        for param in module.parameters(recurse=False):
            if param.is_floating_point() and param.dtype != target:
                param.data = param.data.to(target)
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_floating_point() and buf.dtype != target:
                setattr(module, name, buf.to(target))
    return net


# ------------------------------------------------------------------------------------------ offload
def _own_tensors_to(module, device):
    for param in module.parameters(recurse=False):
        param.data = param.data.to(device)
    for name, buf in list(module.named_buffers(recurse=False)):
        if buf is not None:
            setattr(module, name, buf.to(device))


class StageOffload:
    """``enable_model_cpu_offload``: every component waits on the offload device (the host) and is moved to the
    execution device for the stage that runs it, the one before it moved back first, so the execution device
    holds one component's weights at a time: the SVKR (``prepare_conditions``), the VAE (``encode_lr``,
    ``decode``), the diffusion UNet with the condition encoders and AMF (``denoise``). The kernel PCA (a few KB)
    stays on the execution device."""

    def __init__(self, pipe, execution_device, offload_device='cpu'):
        self.execution_device, self.offload_device = torch.device(execution_device), torch.device(offload_device)
        net = pipe.unet
        self.components = {}  # name -> (modules, modules whose own tensors move)
        if pipe.svkr is not None:
            self.components['svkr'] = ([pipe.svkr], [])
        if net is not None:
            self.components['vae'] = ([net.vae], [])
            rest = [child for name, child in net.named_children() if name not in ('vae', 'pca')]
            self.components['unet'] = (rest, [net])
            net.pca.to(self.execution_device)
        self.resident = set(self.components)
        self.log = []  # (component, 'execution' | 'offload') of every move, in order

    def _move(self, name, device, role):
        modules, own = self.components[name]
        for module in modules:
            module.to(device)
        for module in own:
            _own_tensors_to(module, device)
        self.log.append((name, role))

    def use(self, *names):
        """Only ``names`` on the execution device."""
        for name in sorted(self.resident - set(names)):
            self._move(name, self.offload_device, 'offload')
            self.resident.discard(name)
        for name in names:
            if name in self.components and name not in self.resident:
                self._move(name, self.execution_device, 'execution')
                self.resident.add(name)

    def release(self):
        """Every component to the offload device (the end of a call)."""
        self.use()


# ------------------------------------------------------------------------------------------ pipeline
class SSRPipeline:
    """SSR super-resolution from bare networks.

    Args:
        unet (SSRUNet | None): the diffusion network (None: an SVKR-only pipeline, ``svkr_only`` works).
        scheduler: the training noise schedule (a diffusers ``DDPMScheduler`` or its config dict); the DDIM /
            DPM-Solver++ sampler is derived from it.
        svkr (SVKR | None): estimates the depth and kernel maps (None: pass ``depth=`` / ``kernel=``).
        scale (int | None): the SR factor (default: the SVKR's).
        sampler, num_inference_steps, strength, seed, color_fix, solver_order, vae_residual: sampling defaults
            (the ``diffusion`` block of an option file), each overridable per call.
        dtype: autocast precision (``none`` / ``fp16`` / ``bf16`` or a torch dtype) over the weights as they are;
            ``pipe.to(torch.float16)`` (or ``from_pretrained(..., torch_dtype=...)``) casts the weights themselves.

    Memory switches, as diffusers names them: ``enable_vae_tiling`` / ``disable_vae_tiling``,
    ``enable_model_cpu_offload``, ``enable_attention_slicing`` / ``disable_attention_slicing``, half-precision
    weights (``to(dtype)``); progress bars: ``set_progress_bar_config`` / ``progress_bar``.
    """
    config_name = PIPELINE_CONFIG
    # what callback_on_step_end may ask for (diffusers' _callback_tensor_inputs); 'latents' is taken back
    _callback_tensor_inputs = ['latents', 'noise_pred', 'lr_latent']

    def __init__(self, unet=None, scheduler=None, svkr=None, scale=None, sampler='dpmsolver++', num_inference_steps=50,
                 strength=1.0, seed=0, color_fix='wavelet', solver_order=2, vae_residual=False, dtype=None):
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
        self.vae_residual = check_vae_residual(vae_residual)
        self.dtype = amp_dtype(dtype, 'dtype')
        self._weights_dtype = torch.float32
        self._progress_bar_config = {}
        self._vae_tiling = None  # enable_vae_tiling's (store, tile_size)
        self._offload = None  # a StageOffload
        self._interrupt = False
        self._num_timesteps = 0

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        """What ``model_index.json`` holds besides the components: the scale and the sampling defaults."""
        return dict(scale=self.scale, sampler=self.sampler, num_inference_steps=self.num_inference_steps,
                    strength=self.strength, seed=self.seed, color_fix=self.color_fix, solver_order=self.solver_order,
                    vae_residual=self.vae_residual)

    @property
    def device(self):
        """Where sampling runs (with model offload: the execution device, not where the weights wait)."""
        if self._offload is not None:
            return self._offload.execution_device
        net = self.unet if self.unet is not None else self.svkr
        return next(net.parameters()).device

    @property
    def torch_dtype(self):
        """The dtype the networks' weights were cast to (``to(dtype)``; float32 unless cast), as diffusers'
        ``pipe.dtype``; ``float32_modules`` keep float32 in a half-precision pipeline."""
        return self._weights_dtype

    @property
    def num_timesteps(self):
        """The number of denoising steps the last call ran (diffusers' ``num_timesteps``)."""
        return self._num_timesteps

    @property
    def interrupt(self):
        """Set ``pipe._interrupt = True`` in ``callback_on_step_end`` to stop the loop after that step (the latent
        reached so far is decoded), as in diffusers."""
        return self._interrupt

    def networks(self):
        return [net for net in (self.unet, self.svkr) if net is not None]

    def to(self, device=None, dtype=None):
        """Move the networks to ``device`` and / or cast their weights to ``dtype`` (``torch.float16`` /
        ``torch.bfloat16``: ``float32_modules`` stay float32, and sampling then runs under autocast in that dtype;
        ``torch.float32`` casts back). ``pipe.to(torch.float16)`` and ``pipe.to('cuda', torch.float16)`` work as in
        diffusers. A device turns model offload off."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None:
            dtype = weights_dtype(dtype, 'dtype')
            for net in self.networks():
                cast_weights(net, dtype)
            previous, self._weights_dtype = self._weights_dtype, dtype
            if dtype != torch.float32:
                self.dtype = dtype
            elif previous != torch.float32:
                self.dtype = None
        if device is not None:
            self._offload = None
            for net in self.networks():
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

    # ------------------------------------------------------------------ memory switches
    def _needs_unet(self, what):
        if self.unet is None:
            raise RuntimeError(f'SSRPipeline.{what}: this pipeline has no SSR network (an SVKR-only model)')

    def enable_vae_tiling(self, tile_size=512, store='auto'):
        """Decode (and encode) with the layer-wise tiled VAE (``LayerwiseVAETiling``: seam-free, every GroupNorm on
        whole-image statistics) also when a call is not tiled, in tiles of ``tile_size`` output pixels
        (diffusers' ``enable_vae_tiling``); ``store``: where its image-size activations live (``auto``, ``memory``,
        ``disk``). A tiled call (``tile=``) tiles the VAE along its own windows, layer-wise unless
        ``vae_tiling='windows'``, with or without this switch."""
        self._needs_unet('enable_vae_tiling')
        check_vae_tiling('layerwise', store)
        tile_size = int(tile_size)
        if tile_size < self.unet.vae_scale_factor:
            raise OptionError('tile_size', tile_size, f'expected at least the VAE factor {self.unet.vae_scale_factor}')
        self._vae_tiling = (store, tile_size)

    def disable_vae_tiling(self):
        """Untiled calls decode with the whole VAE again (the default)."""
        self._vae_tiling = None

    def enable_attention_slicing(self, slice_size='auto'):
        """The UNet's attention in slices of ``slice_size`` heads (diffusers' ``set_attention_slice``: ``auto`` =
        half the heads, ``max`` = one at a time, or a number). As in diffusers it applies to the UNet; the VAE's
        attention is tiled by ``enable_vae_tiling`` instead. With PyTorch's scaled-dot-product attention (the
        default here) slicing costs memory and time instead: each slice's score matrix is computed whole
        (docs/inference.md, measured)."""
        self._needs_unet('enable_attention_slicing')
        self.unet.unet.set_attention_slice(slice_size)

    def disable_attention_slicing(self):
        """Back to whole attention (PyTorch's scaled-dot-product attention)."""
        self._needs_unet('disable_attention_slicing')
        self.unet.unet.set_attention_slice(None)

    def enable_model_cpu_offload(self, gpu_id=None, device=None):
        """Keep the networks in host memory and move each to ``device`` (default ``cuda:<gpu_id>``) only for the
        stage that runs it (``StageOffload``): the GPU holds the SVKR, the VAE or the UNet, one at a time. Our
        own stage-level offload, not accelerate's hooks: the stages are explicit methods here, and it needs no
        extra package. ``pipe.to(device)`` turns it off."""
        if device is None:
            if not torch.cuda.is_available():
                raise RuntimeError('SSRPipeline.enable_model_cpu_offload: no CUDA device to run on (give device=); '
                                   'on the CPU the networks already live in host memory')
            device = torch.device('cuda', 0 if gpu_id is None else int(gpu_id))
        for net in self.networks():
            net.to('cpu')
        self._offload = StageOffload(self, device)
        self._offload.release()

    def _place(self, *components):
        if self._offload is not None:
            self._offload.use(*components)

    def _vae_autocast(self, dtype):
        """The autocast of the VAE stages: as the call's, but off for a VAE kept in float32 among half weights."""
        vae = self.unet.vae
        if dtype is not None and self._weights_dtype != torch.float32 and \
                next(vae.parameters()).dtype == torch.float32:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return autocast(self.device, dtype)

    # ------------------------------------------------------------------ progress bars
    def set_progress_bar_config(self, **kwargs):
        """tqdm options of the bars (diffusers' ``set_progress_bar_config``): ``disable=False`` shows them in calls
        that do not pass ``progress=`` (the default is no bars), other keys (``desc``, ``leave``, ``position``...)
        go to tqdm."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable=None, total=None, **kwargs):
        """A tqdm bar with ``set_progress_bar_config``'s options (``kwargs`` first, the config on top)."""
        options = dict(kwargs)
        options.update(self._progress_bar_config)
        if iterable is not None:
            return tqdm(iterable, **options)
        if total is not None:
            return tqdm(total=total, **options)
        raise ValueError('SSRPipeline.progress_bar: give iterable or total')

    def _progress(self, progress):
        if progress is not None:
            return bool(progress)
        return not self._progress_bar_config.get('disable', True)

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

    def samples_per_image(self, batch, num_images_per_image=None, num_images_per_prompt=None, generator=None):
        """The number of samples of each of ``batch`` images: ``num_images_per_image`` (``num_images_per_prompt``
        as diffusers users type it), else one per generator of a list, else 1."""
        n = num_images_per_image
        if num_images_per_prompt is not None:
            if n is not None and int(n) != int(num_images_per_prompt):
                raise OptionError('num_images_per_prompt', num_images_per_prompt,
                                  f'differs from num_images_per_image = {n} (give one of the two)')
            n = num_images_per_prompt
        if isinstance(generator, (list, tuple)):
            if n is None:
                if not generator or len(generator) % batch:
                    raise ValueError(f'SSRPipeline: {len(generator)} generators for {batch} image(s): give one per '
                                     'sample')
                n = len(generator) // batch
            elif len(generator) != batch * int(n):
                raise ValueError(f'SSRPipeline: a list of {len(generator)} generators for {batch} image(s) × {n} '
                                 f'sample(s); give one per sample ({batch * int(n)})')
        n = 1 if n is None else n
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise OptionError('num_images_per_image', n, 'expected an integer >= 1')
        return int(n)

    def prepare_generators(self, batch, num_images=1, generator=None, seed=None):
        """The noise source of ``batch × num_images`` samples: ``generator`` as given (one ``torch.Generator``, or a
        list with one per sample), else one generator per sample on the pipeline's device seeded ``seed + k`` for
        the k-th sample of every image (``seed`` default: the pipeline's), so that a sample is the same whatever
        else is in the batch."""
        if generator is not None:
            if seed is not None:
                raise ValueError('SSRPipeline: give seed= or generator=, not both')
            return list(generator) if isinstance(generator, (list, tuple)) else generator
        seed = int(self.seed if seed is None else seed)
        return [torch.Generator(device=self.device).manual_seed(seed + k) for _ in range(batch)
                for k in range(num_images)]

    # ------------------------------------------------------------------ sampling stages
    def check_inputs(self, num_inference_steps=None, strength=None, sampler=None, seed=None, tile=None,
                     tile_overlap=16, color_fix=None, dtype=None, cond_cache='auto', vae_tiling=None,
                     vae_store=None, num_images_per_image=1, output_type=None, callback_on_step_end_tensor_inputs=None,
                     vae_residual=None):
        """Check the sampling arguments of ``__call__`` (an ``OptionError`` names a bad one) and fill in the
        pipeline's defaults; returns the ``SamplingSettings`` the other stages read."""
        if self.unet is None:
            raise RuntimeError('SSRPipeline: this pipeline has no SSR network (an SVKR-only model); use svkr_only()')
        steps = int(num_inference_steps or self.num_inference_steps)
        if steps < 1:
            raise OptionError('num_inference_steps', num_inference_steps, 'expected an integer >= 1')
        tiled = bool(tile)
        store, tile_size = self._vae_tiling or ('auto', None)
        vae_tiling = vae_tiling_strategy('layerwise' if vae_tiling is None else vae_tiling,
                                         store if vae_store is None else vae_store, tiled=tiled,
                                         tile_size=None if tiled else tile_size)
        color_fix = check_color_fix(self.color_fix if color_fix is None else color_fix, 'color_fix')
        dtype = self.dtype if dtype is None else amp_dtype(dtype, 'dtype')
        if self._weights_dtype != torch.float32 and dtype != self._weights_dtype:
            raise OptionError('dtype', dtype, f'the weights are {self._weights_dtype} (pipe.to(torch.float32) casts '
                              'them back for another precision)')
        windows = SamplingWindows.plan(tile, tile_overlap, self.scale, self.unet.vae_scale_factor,
                                       self.unet.size_multiple)
        names = ('latents', ) if callback_on_step_end_tensor_inputs is None else \
            tuple(callback_on_step_end_tensor_inputs)
        unknown = [n for n in names if n not in self._callback_tensor_inputs]
        if unknown:
            raise OptionError('callback_on_step_end_tensor_inputs', unknown,
                              f'expected names from {self._callback_tensor_inputs}')
        return SamplingSettings(
            num_inference_steps=steps, strength=check_strength(self.strength if strength is None else strength,
                                                               'strength'),
            sampler=check_sampler(self.sampler if sampler is None else sampler, 'sampler'),
            seed=int(self.seed if seed is None else seed), color_fix=color_fix, dtype=dtype,
            vae_residual=check_vae_residual(self.vae_residual if vae_residual is None else vae_residual,
                                            'vae_residual'),
            cond_cache=check_cond_cache(cond_cache), windows=windows, vae_tiling=vae_tiling,
            num_images=self.samples_per_image(1, num_images_per_image), output_type=check_output_type(output_type),
            callback_tensor_inputs=names)

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
            self._place('svkr')
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
        image = self.padded_svkr_image(lq, windows, svkr_sr)
        self._place('vae')
        return vae_tiling.encode(self.unet, lq, windows, progress, image=image)

    @staticmethod
    def padded_svkr_image(lq, windows, svkr_sr):
        """The SVKR's Iᵀ of the unpadded image padded to the HR size of the padded ``lq`` (None without one)."""
        if svkr_sr is None:
            return None
        s = windows.scale
        image = svkr_sr.to(lq.device).float().clamp(0, 1)
        gh, gw = lq.shape[-2] * s - image.shape[-2], lq.shape[-1] * s - image.shape[-1]
        if gh or gw:
            mode = 'reflect' if gh < image.shape[-2] and gw < image.shape[-1] else 'replicate'
            image = F.pad(image, (0, gw, 0, gh), mode=mode)
        return image

    def vae_round_trip_loss(self, lr_latent, lq, windows, vae_tiling=None, out_device=None, progress=False,
                            svkr_sr=None):
        """What the VAE's round trip loses on the image ``encode_lr`` encoded (the upsampled padded ``lq``, or
        with ``svkr_sr`` the SVKR's Iᵀ): that image minus the decoding of its latent ``lr_latent``, one per image
        at the padded HR size. ``vae_residual`` adds it to the decoded result."""
        vae_tiling = WindowVAETiling() if vae_tiling is None else vae_tiling
        out_device = lq.device if out_device is None else torch.device(out_device)
        s = self.scale
        lost = torch.empty((lr_latent.shape[0], 3, lq.shape[-2] * s, lq.shape[-1] * s), dtype=torch.float32,
                           device=out_device)
        image = self.padded_svkr_image(lq, windows, svkr_sr)

        def take(r0, r1, rows):
            r1 = min(r1, lost.shape[-2])
            source = upsample_lr_rows(lq, s, r0, r1) if image is None else image[..., r0:r1, :]
            lost[..., r0:r1, :] = source.to(out_device) - rows[..., :r1 - r0, :lost.shape[-1]].to(out_device)

        self._place('vae')
        vae_tiling.decode(self.unet, lr_latent, windows, take, out_device, progress)
        return lost

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
        """The starting latent (float32, on the pipeline's device) of ``latent_shape[0]`` samples: noise from
        ``generator`` (one ``torch.Generator`` for the whole batch, or a list with one per sample; drawn on each
        generator's device, as diffusers' ``randn_tensor``), scaled for the scheduler; with ``init_latent`` (the LR
        latent of the images, for ``strength`` < 1; each image's for each of its samples) that latent noised with
        the same noise to the first of ``timesteps``."""
        shape = tuple(latent_shape)
        if isinstance(generator, (list, tuple)):
            if len(generator) != shape[0]:
                raise ValueError(f'SSRPipeline.prepare_latents: {len(generator)} generators for {shape[0]} samples')
            latents = torch.cat([torch.randn((1, ) + shape[1:], generator=g, device=g.device, dtype=torch.float32)
                                 .to(self.device) for g in generator])
        else:
            source = generator.device if generator is not None else self.device
            latents = torch.randn(shape, generator=generator, device=source, dtype=torch.float32).to(self.device)
        if init_latent is None:
            return latents * scheduler.init_noise_sigma
        if tuple(init_latent.shape[1:]) != shape[1:] or shape[0] % init_latent.shape[0]:
            raise ValueError(f'SSRPipeline.prepare_latents: init_latent {tuple(init_latent.shape)} does not match the '
                             f'latent shape {shape}')
        init_latent = init_latent.to(self.device, torch.float32).repeat_interleave(shape[0] // init_latent.shape[0], 0)
        t0 = timesteps[:1].repeat(shape[0])
        return scheduler.add_noise(init_latent, latents, t0)

    @torch.no_grad()
    def denoise(self, latents, scheduler, timesteps, predict, progress=False, callback_on_step_end=None,
                callback_tensor_inputs=('latents', ), callback_tensors=None):
        """The sampling loop: at every timestep ``predict(model_input, t)`` is the network's prediction (the
        noise, or v with ``prediction_type: v_prediction``; e.g. ``ConditionWindows.predict``) and the scheduler
        steps; returns the final latent (float32).

        ``callback_on_step_end(pipe, step, timestep, callback_kwargs)`` runs after every step, as in diffusers:
        ``callback_kwargs`` holds the tensors named in ``callback_tensor_inputs`` (``latents``, ``noise_pred``,
        and those of ``callback_tensors``, e.g. ``lr_latent``); a ``latents`` in the dict it returns replaces the
        latent. Setting ``pipe._interrupt`` stops the loop."""
        self._place('unet')
        self._num_timesteps = len(timesteps)
        extra = dict(callback_tensors or {})
        bar = dict(dict(desc='SSR sampling', leave=False), **self._progress_bar_config)
        bar['disable'] = not progress
        for i, t in enumerate(tqdm(timesteps, **bar)):
            if self._interrupt:
                break
            noise_pred = predict(scheduler.scale_model_input(latents, t), t)
            latents = scheduler.step(noise_pred.float(), t, latents).prev_sample
            if callback_on_step_end is not None:
                available = dict(extra, latents=latents, noise_pred=noise_pred)
                returned = callback_on_step_end(self, i, t, {name: available[name] for name in callback_tensor_inputs})
                latents = (returned or {}).pop('latents', latents)
        return latents

    @torch.no_grad()
    def decode(self, latents, lq, windows, color_fix, out, vae_tiling=None, out_device=None, progress=False,
               lost=None):
        """The final latent -> the image, written into ``out`` (N×3×(h·s)×(w·s), the unpadded size): VAE-decoded
        (``vae_tiling``, default ``WindowVAETiling``) in row bands that stream through the colour correction
        (``color_fix`` against the upsampled padded LR image ``lq``: one per sample, or one per image for several
        samples of each). ``lost`` (``vae_round_trip_loss``, one per image): added to the decoded rows before the
        colour correction. Returns ``out``."""
        vae_tiling = WindowVAETiling() if vae_tiling is None else vae_tiling
        out_device = out.device if out_device is None else out_device
        s = self.scale
        if lq.shape[0] != latents.shape[0]:
            lq = lq.repeat_interleave(latents.shape[0] // lq.shape[0], 0)
        self._place('vae')
        fixer = StreamingColorFix(color_fix, lambda a, b: upsample_lr_rows(lq, s, a, b).to(out_device).float(),
                                  lq.shape[-2] * s, out)
        push = fixer.push
        if lost is not None:
            per_image = latents.shape[0] // lost.shape[0]

            def push(r0, r1, rows):
                add = lost[..., r0:r1, :rows.shape[-1]].to(rows)
                fixer.push(r0, r1, (rows + add.repeat_interleave(per_image, 0)).clamp(0, 1))

        vae_tiling.decode(self.unet, latents, windows, push, out_device, progress)
        fixer.finish()
        return out

    @torch.no_grad()
    def __call__(self, image, num_inference_steps=None, strength=None, sampler=None, seed=None, tile=None,
                 tile_overlap=16, color_fix=None, dtype=None, depth=None, kernel=None, return_maps=False,
                 progress=None, out=None, out_device=None, cond_cache='auto', vae_tiling=None, vae_store=None,
                 generator=None, num_images_per_image=None, num_images_per_prompt=None, output_type=None,
                 return_dict=True, callback_on_step_end=None, callback_on_step_end_tensor_inputs=None,
                 vae_residual=None):
        """Super-resolve ``image`` (see ``SSRPipelineOutput``; tensors, NumPy arrays, PIL images, lists of them).

        diffusers' conventions: ``generator`` (a ``torch.Generator``, or a list with one per sample),
        ``num_images_per_image`` (also ``num_images_per_prompt``): samples of every image, which share its
        conditions (the SVKR's maps, the LR latent, the condition features: computed once per image), samples of
        one image one after another; ``output_type`` ``pil`` | ``np`` | ``pt`` | ``latent`` (default None: the
        input's kind); ``return_dict=False`` gives ``SSRPipelineOutput.to_tuple()``; ``callback_on_step_end`` /
        ``callback_on_step_end_tensor_inputs`` (``denoise``); ``progress`` (default:
        ``set_progress_bar_config``, no bars). ``seed``: without ``generator``, sample k of every image is drawn
        from ``seed + k`` (default: the pipeline's seed).

        ``tile`` / ``tile_overlap``: windows in LR pixels (None / 0: the whole image is one window).
        ``depth`` (B×1×h×w) / ``kernel`` (B×k²×h×w), LR size: given maps instead of the SVKR's estimates.
        ``out``: a float32 N×3×(h·s)×(w·s) tensor the result is written into (e.g. a view of an image array).
        ``cond_cache``: where the per-window AMF features live between steps: ``device``, ``cpu``, ``none``
        (recomputed every step), ``auto`` = ``device`` for one window, else ``cpu`` on CUDA and ``none`` elsewhere
        (measured on CPU, bench_inference.py: same time, a third of the memory).
        ``vae_tiling``: how ``tile`` cuts the VAE encoder and decoder: ``layerwise`` (default,
        ``LayerwiseVAETiling``: no tone seams; its image-size activations in ``vae_store``: ``auto``, ``memory``
        or ``disk``) or ``windows`` (``WindowVAETiling``). Without ``tile`` the VAE is whole unless
        ``enable_vae_tiling()``. ``dtype``: autocast precision (default the pipeline's). Other arguments default to
        the pipeline's. ``vae_residual``: add back what the VAE's round trip loses on the image the start latent is
        encoded from (the bicubic-upsampled LR image, or the SVKR's Iᵀ with ``network_g: lr_input: svkr``), so
        that a small ``strength`` approaches that image instead of its VAE reconstruction (one more VAE decode;
        one HR-size image per input held; default: the pipeline's).

        The stages, each a method: ``check_inputs`` -> ``prepare_conditions`` (SVKR maps) -> ``encode_lr`` ->
        ``condition_windows`` -> ``prepare_timesteps`` / ``prepare_latents`` -> ``denoise`` ->
        ``vae_round_trip_loss`` (with ``vae_residual``) -> ``decode``."""
        images = _Images(image)
        b = images.batch.shape[0]
        if hasattr(callback_on_step_end, 'tensor_inputs'):  # diffusers' PipelineCallback objects
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        num_images = self.samples_per_image(b, num_images_per_image, num_images_per_prompt, generator)
        run = self.check_inputs(num_inference_steps, strength, sampler, seed, tile, tile_overlap, color_fix, dtype,
                                cond_cache, vae_tiling, vae_store, num_images, output_type,
                                callback_on_step_end_tensor_inputs, vae_residual)
        generators = self.prepare_generators(b, num_images, generator, seed)
        progress = self._progress(progress)
        out_device = torch.device(out_device) if out_device is not None else images.device
        dev, s, n = self.device, self.scale, b * num_images
        lr = images.batch.to(dev)
        h, w = lr.shape[-2:]
        if out is not None and tuple(out.shape) != (n, 3, h * s, w * s):
            raise ValueError(f'SSRPipeline: out is {tuple(out.shape)}, the result {(n, 3, h * s, w * s)}')
        self._interrupt = False
        try:
            with eval_mode(self.unet, self.svkr):
                maps = self.prepare_conditions(lr, depth, kernel, run.windows.tile, run.windows.overlap, run.dtype,
                                               return_maps, progress)
                lq, _ = pad_lr(lr, s, self.unet.size_multiple)
                with self._vae_autocast(run.dtype):
                    lr_latent = self.encode_lr(lq, run.windows, run.vae_tiling, progress, svkr_sr=maps.get('sr'))
                with autocast(dev, run.dtype):
                    conditions = self.condition_windows(lr_latent, maps, run.windows, run.cond_cache)
                    scheduler, timesteps = self.prepare_timesteps(run.num_inference_steps, run.strength, run.sampler)
                    latents = self.prepare_latents((n, ) + tuple(lr_latent.shape[1:]), scheduler, timesteps,
                                                   generators, init_latent=lr_latent if run.strength < 1 else None)
                    latents = self.denoise(latents, scheduler, timesteps, conditions.predict, progress,
                                           callback_on_step_end, run.callback_tensor_inputs, dict(lr_latent=lr_latent))
                del conditions
                if run.output_type == 'latent':
                    result = latents
                else:
                    if out is None:
                        out = torch.empty((n, 3, h * s, w * s), dtype=torch.float32, device=out_device)
                    with self._vae_autocast(run.dtype):
                        lost = self.vae_round_trip_loss(lr_latent, lq, run.windows, run.vae_tiling, out_device,
                                                        progress, maps.get('sr')) if run.vae_residual else None
                        self.decode(latents, lq, run.windows, run.color_fix, out, run.vae_tiling, out_device, progress,
                                    lost)
                    result = images.convert(out, run.output_type)
        finally:
            self._place()
        output = SSRPipelineOutput(images=result, depth=maps.get('depth'),
                                   kernel_variance=maps.get('kvar') if return_maps else None)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def svkr_only(self, image, tile=None, tile_overlap=16, dtype=None, return_maps=False, progress=None, out=None,
                  out_device=None, output_type=None, return_dict=True):
        """The SVKR's non-blind SR result Iᵀ (fast, deterministic), tiled in LR space when ``tile`` is given;
        with ``return_maps`` also its depth and kernel-variance maps. Returns an ``SSRPipelineOutput``
        (``output_type`` and ``return_dict`` as in ``__call__``)."""
        if self.svkr is None:
            raise RuntimeError('SSRPipeline: this pipeline has no SVKR')
        images = _Images(image)
        output_type = check_output_type(output_type)
        if output_type == 'latent':
            raise OptionError('output_type', output_type, 'the SVKR result has no latent')
        dtype = self.dtype if dtype is None else amp_dtype(dtype, 'dtype')
        if self._weights_dtype != torch.float32 and dtype != self._weights_dtype:
            raise OptionError('dtype', dtype, f'the weights are {self._weights_dtype}')
        out_device = torch.device(out_device) if out_device is not None else images.device
        want = ('sr', 'depth', 'kvar') if return_maps else ('sr', )
        try:
            self._place('svkr')
            with eval_mode(self.svkr):
                res = svkr_tiled(self.svkr, images.batch.to(self.device), tile, tile_overlap, want=want, dtype=dtype,
                                 progress=self._progress(progress), out_device=out_device,
                                 into=None if out is None else {'sr': out})
        finally:
            self._place()
        sr = res['sr'].clamp_(0, 1)
        output = SSRPipelineOutput(images=images.convert(sr, output_type), depth=res.get('depth'),
                                   kernel_variance=res.get('kvar'))
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------ folders
    def save_pretrained(self, save_directory, copy_parts='auto'):
        """Write the model folder (``ssr_pipelines.model_folder``); ``model_index.json`` last, so a folder that has
        it is complete. ``copy_parts``: which frozen parts loaded from their own folders (a Stable Diffusion base
        or the project's prior, the SVKR's depth network) travel inside the folder: ``auto`` (those under
        ``model_folder.COPY_PARTS_MAX_MB``), ``all`` or ``none`` (referenced by absolute path)."""
        return save_model_folder(self, save_directory, copy_parts=copy_parts)

    @classmethod
    def from_pretrained(cls, folder, device=None, dtype=None, torch_dtype=None):
        """Load a folder written by ``save_pretrained`` (local paths only) onto ``device`` (default: CPU).
        ``torch_dtype``: cast the weights (``torch.float16`` / ``torch.bfloat16``; ``float32_modules`` stay
        float32; loaded in float32, then cast). ``dtype``: the default autocast precision over float32 weights."""
        if torch_dtype is not None and dtype is not None and weights_dtype(torch_dtype) != torch.float32 and \
                amp_dtype(dtype, 'dtype') != weights_dtype(torch_dtype):
            raise OptionError('dtype', dtype, f'differs from torch_dtype = {torch_dtype} (half-precision weights run in '
                              'their own precision; give one of the two)')
        unet, scheduler, svkr, config = load_model_folder(folder)
        pipe = cls(unet, scheduler, svkr, dtype=dtype, **config)
        if torch_dtype is not None:
            pipe.to(dtype=torch_dtype)  # on the host, before the move: the device never holds the float32 copy
        return pipe.to(device if device is not None else 'cpu')
