"""SSRPipeline: blind super-resolution with SSR from its bare networks, in the manner of a diffusers pipeline.

The pipeline holds the networks and nothing of training: the diffusion network (``SSRUNet``: UNet, VAE,
condition encoders, AMF, kernel PCA), the frozen SVKR that estimates the depth and kernel maps, the
training noise schedule the sampler is derived from, and the sampling defaults. ``SSRModel`` validation,
the test-table model (``SSRBenchmarkModel``) and ``scripts/inference_ssr.py`` all sample through it.

Sampling (``__call__``) is tiled sampling; a whole image is its one-window case, so padding, the
colour correction and the seeded noise exist once. Every image-sized stage is cut into overlapping
windows when ``tile`` is given: the SVKR (LR space, with a context margin), the VAE encoder (each
window upsamples its own LR window), the UNet at every denoising step (latent space; the AMF condition
features are computed once per latent window, the predictions are blended over the overlaps before
the scheduler step, as in MultiDiffusion / StableSR's tiled sampling) and the VAE decoder, whose rows
stream through the colour correction into the output.

Model folders (``save_pretrained`` / ``from_pretrained``)::

    model_index.json          the pipeline config (scale, sampling defaults, components)
    ssr_unet/                 SSRUNet: config.json + diffusion_pytorch_model.safetensors
    scheduler/                the training noise schedule (diffusers' scheduler_config.json)
    svkr/                     SVKR: config.json + model.safetensors
    kernel_pca.pth            the kernel PCA basis the conditions are coded with (KernelPCA.load)

A frozen Stable Diffusion base (``network_g: pretrained_path``) is referenced by its absolute path in
``ssr_unet/config.json``, not copied; so is a depth network of the SVKR (``depth_opt: model_path``). A folder
moved to another machine needs them there too; where such a path is missing, loading stops with an
``OptionError`` naming the file that holds it.
"""
import json
import math
import os
import os.path as osp
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from ssr_utils import compat

compat.apply()

from basicsr.archs import build_network  # noqa: E402
from basicsr.utils import get_root_logger  # noqa: E402

import ssr_arch  # noqa: E402,F401  (registers the networks the folders name)
from ssr_arch.ssr_unet_arch import WEIGHTS_NAME as UNET_WEIGHTS, SSRUNet  # noqa: E402
from ssr_utils.amp import amp_dtype, autocast  # noqa: E402
from ssr_utils.atomic_file import atomic_write  # noqa: E402
from ssr_utils.checkpoint import read_state_dict  # noqa: E402
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
SAMPLING_KEYS = ('sampler', 'num_inference_steps', 'strength', 'seed', 'color_fix', 'solver_order')
# LR pixels of context around each SVKR window: more than the receptive field of the demo-size networks
# (about 6 LR pixels, measured); even, so that DKENet's stride-2 stages keep their phase in every window
SVKR_CONTEXT = 16
SVKR_MIN_SIZE = 8
SVKR_MULTIPLE = 2

PIPELINE_CONFIG = 'model_index.json'
UNET_FOLDER = 'ssr_unet'
SCHEDULER_FOLDER = 'scheduler'
SVKR_FOLDER = 'svkr'
SVKR_WEIGHTS = 'model.safetensors'
KERNEL_PCA_FILE = 'kernel_pca.pth'
# the SVKR's depth estimator is frozen and loads from its own model_path: referenced, never saved
_SVKR_REFERENCED = ('depth_net.', )

SVKR_WEIGHTS_HINT = ('the SVKR has no trained weights, and SSR would condition on the depth / kernel maps of a '
                     'random network; train it first (python basicsr/train.py -opt options/train_svkr.yml, after '
                     'train_dkenet.yml and train_nbsr.yml) and set path:pretrain_network_svkr to its '
                     'experiments/<name>/models/net_g_latest.pth')


# ------------------------------------------------------------------------------------------ helpers
@contextmanager
def _referenced_path(config_file, what, prefix=''):
    """A model folder references a frozen part by an absolute path (module doc); when that path is gone (a
    folder moved to another machine) the error names the file that holds it and what to do."""
    try:
        yield
    except OptionError as err:
        if err.key not in ('model_path', 'pretrained_path'):
            raise
        raise OptionError(f'{config_file}: {prefix}{err.key}', err.value,
                          f'{err.problem}. {what[0].upper() + what[1:]} is referenced by this path, not copied into '
                          'the model folder: copy it along and set the path in that file') from None


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


def scheduler_from_options(diffusion_opt=None, pretrained_path=None):
    """The training noise schedule (a diffusers ``DDPMScheduler``) of an option file's ``diffusion`` block:
    ``<pretrained_path>/scheduler`` when the base folder has one, with the block's keys on top."""
    from diffusers import DDPMScheduler
    d = dict(diffusion_opt or {})
    keys = ('num_train_timesteps', 'beta_schedule', 'beta_start', 'beta_end', 'prediction_type', 'timestep_spacing',
            'steps_offset', 'rescale_betas_zero_snr', 'clip_sample')
    overrides = {k: d[k] for k in keys if k in d}
    if pretrained_path is not None and osp.isdir(osp.join(pretrained_path, 'scheduler')):
        sched = DDPMScheduler.from_pretrained(osp.join(pretrained_path, 'scheduler'), **overrides)
    else:
        # latents are not images in [-1, 1]: no x0 clipping (diffusers' DDPMScheduler defaults to
        # clip_sample=True, which DDIM sampling inherits; Stable Diffusion's scheduler sets it false)
        overrides.setdefault('clip_sample', False)
        sched = DDPMScheduler(**overrides)
    if sched.config.prediction_type not in ('epsilon', 'v_prediction'):
        raise OptionError('diffusion:prediction_type', sched.config.prediction_type, 'expected epsilon or v_prediction')
    return sched


def sampling_options(diffusion_opt=None):
    """The sampling defaults of an option file's ``diffusion`` block, as ``SSRPipeline`` keyword arguments."""
    d = diffusion_opt or {}
    return {k: d[k] for k in SAMPLING_KEYS if k in d}


def adopt_svkr_kernel_pca(unet, svkr):
    """An SSRUNet conditioned on kernels without a basis of its own takes the SVKR's (its NBSR's)."""
    if unet is None or 'kernel' not in unet.modalities or unet.has_pca:
        return
    svkr_pca = getattr(getattr(svkr, 'sr_net', None), 'pca', None)
    if svkr_pca is not None and bool(svkr_pca.components.abs().sum() > 0):
        if svkr_pca.components.shape != unet.pca.components.shape:
            raise OptionError('network_g:kernel_code_channels', unet.config['kernel_code_channels'],
                              f'the SVKR kernel basis is {tuple(svkr_pca.components.shape)}')
        with torch.no_grad():
            unet.pca.components.copy_(svkr_pca.components)
            unet.pca.mean.copy_(svkr_pca.mean)
        get_root_logger().info('SSR: kernel PCA basis taken from the SVKR')
        return
    raise OptionError('network_g:pca_path', None, 'the kernel modality needs a KernelPCA file '
                      '(or a network_svkr / pretrain_network_g that holds one)')


def svkr_has_weights(net_opt, path_opt, path_key='pretrain_network_svkr'):
    """Whether an SVKR of an option file gets trained weights: its own checkpoint (``path:<path_key>``) or
    the checkpoints of both its sub-networks (``pretrain_network_kernel`` and ``pretrain_network_sr``)."""
    if (path_opt or {}).get(path_key):
        return True
    return bool(net_opt.get('pretrain_network_kernel')) and bool(net_opt.get('pretrain_network_sr'))


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


def build_svkr_from_options(net_opt, path_opt, path_key='pretrain_network_svkr', param_key='param_key_svkr'):
    """The frozen SVKR of an option file's ``net_opt`` with its checkpoint ``path:<path_key>`` (``<param_key>``,
    default ``params_ema``; ``strict_load_*``), in eval mode. With a whole-SVKR checkpoint its sub-network
    checkpoints are not read (the checkpoint replaces them)."""
    net_opt = deepcopy(net_opt)
    ckpt = (path_opt or {}).get(path_key)
    if ckpt:
        for sub in ('pretrain_network_kernel', 'pretrain_network_sr'):
            net_opt.pop(sub, None)
    net = build_network(net_opt)
    if ckpt:
        state, key = read_state_dict(ckpt, path_opt.get(param_key, 'params_ema'), f'path:{path_key}')
        try:
            net.load_state_dict(state, strict=path_opt.get(param_key.replace('param_key', 'strict_load'), True))
        except RuntimeError as err:
            raise RuntimeError(f'{ckpt} [{key}] does not fit {net_opt.get("type")}: {err}') from None
        get_root_logger().info(f'SVKR weights from {ckpt} [{key}]')
    return net.requires_grad_(False).eval()


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

    @torch.no_grad()
    def denoise(self, latent_shape, predict, num_inference_steps=None, seed=None, strength=None, init_latent=None,
                sampler=None, progress=False):
        """The sampling loop: ``predict(model_input, t)`` is the network's prediction (the noise, or v with
        ``prediction_type: v_prediction``; whole latent or tiled); returns the final latent (float32).

        ``strength`` 1 starts from seeded pure noise. ``strength`` < 1 is diffusers' img2img start: only the
        last ``int(steps * strength)`` steps of the schedule run, from ``init_latent`` (the VAE latent of the
        upsampled LR image) noised with the same seeded noise to the first of them."""
        steps = int(num_inference_steps or self.num_inference_steps)
        strength = check_strength(self.strength if strength is None else strength, 'strength')
        seed = self.seed if seed is None else seed
        device = self.device
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed))
        scheduler = self.sampling_scheduler(sampler)
        scheduler.set_timesteps(steps, device=device)
        z = torch.randn(latent_shape, generator=gen, device=device, dtype=torch.float32)
        timesteps = scheduler.timesteps
        if strength < 1:
            if init_latent is None:
                raise ValueError(f'SSRPipeline.denoise: strength {strength} < 1 needs init_latent (the LR latent)')
            if tuple(init_latent.shape) != tuple(latent_shape):
                raise ValueError(f'SSRPipeline.denoise: init_latent {tuple(init_latent.shape)} does not match the '
                                 f'latent shape {tuple(latent_shape)}')
            start, _ = strength_steps(steps, strength)
            start *= scheduler.order
            timesteps = timesteps[start:]
            if hasattr(scheduler, 'set_begin_index'):
                scheduler.set_begin_index(start)
            t0 = timesteps[:1].repeat(latent_shape[0])
            z = scheduler.add_noise(init_latent.to(device, torch.float32), z, t0)
        else:
            z = z * scheduler.init_noise_sigma
        for t in tqdm(timesteps, desc='SSR sampling', disable=not progress, leave=False):
            pred = predict(scheduler.scale_model_input(z, t), t)
            z = scheduler.step(pred.float(), t, z).prev_sample
        return z

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
        ``vae_tiling``: how ``tile`` cuts the VAE encoder and decoder: ``windows`` (default) runs each window
        through the whole VAE and blends the overlaps, so every GroupNorm normalises with its own window's
        statistics; ``layerwise`` runs ``ssr_utils.tiled_vae`` (one layer at a time over the whole image in
        tiles, every GroupNorm on whole-image statistics: the untiled VAE up to summation order, no tone
        seams). Its image-size activations live in ``vae_store``: ``memory`` (host memory, so the GPU holds
        one tile) or ``disk`` (a temporary file, so host memory stays flat too). Without ``tile`` both are the
        untiled VAE. Other arguments default to the pipeline's."""
        if self.unet is None:
            raise RuntimeError('SSRPipeline: this pipeline has no SSR network (an SVKR-only model); use svkr_only()')
        lr, back, in_device = _as_batch(image)
        steps = int(num_inference_steps or self.num_inference_steps)
        if steps < 1:
            raise OptionError('num_inference_steps', num_inference_steps, 'expected an integer >= 1')
        vae_tiling = check_vae_tiling(vae_tiling, vae_store)
        res = self._sample(lr, tile, tile_overlap, steps, seed, strength, sampler,
                           check_color_fix(self.color_fix if color_fix is None else color_fix, 'color_fix'),
                           self.dtype if dtype is None else amp_dtype(dtype, 'dtype'), depth, kernel, return_maps,
                           progress, out, torch.device(out_device) if out_device is not None else in_device, cond_cache,
                           vae_tiling)
        return SSRPipelineOutput(images=back(res['sr']), depth=res.get('depth'), kernel_variance=res.get('kvar'))

    def _condition_maps(self, lr, depth, kernel, tile, overlap, dtype, return_maps, progress):
        """LR-size depth, kernel code and (with ``return_maps``) kernel variance: the given maps, the rest from the
        tiled SVKR; with ``network_g: lr_input: svkr`` also the SVKR's Iᵀ (``sr``, HR size), what the LR encoder
        reads."""
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
            maps.update(svkr_tiled(self.svkr, lr, tile, overlap, want=want, kernel_code=net.kernel_code, dtype=dtype,
                                   progress=progress, out_device=dev))
            if need_depth and 'depth' not in maps:
                raise OptionError('network_svkr:use_depth', False, 'the depth modality needs an SVKR with depth')
        return maps

    def _sample(self, lr, tile, overlap, steps, seed, strength, sampler, color_fix, dtype, depth, kernel, return_maps,
                progress, out, out_device, cond_cache, vae_tiling=('windows', 'memory')):
        net, dev, s = self.unet, self.device, self.scale
        layerwise = bool(tile) and vae_tiling[0] == 'layerwise'
        f, m = net.vae_scale_factor, net.size_multiple
        lm = max(1, m // f)
        tile = int(tile) if tile else 0
        overlap = int(overlap)
        if tile and not 0 <= overlap < tile:
            raise OptionError('tile_overlap', overlap, f'expected 0 <= overlap < tile ({tile})')
        b, _, h, w = lr.shape
        lr = lr.to(dev)
        with eval_mode(net, self.svkr):
            maps = self._condition_maps(lr, depth, kernel, tile, overlap, dtype, return_maps, progress)
            lq, _ = pad_lr(lr, s, m)
            hp, wp = lq.shape[-2:]

            def pad_map(x):
                if x is None or tuple(x.shape[-2:]) == (hp, wp):
                    return x
                return F.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2]), mode='replicate')

            depth_p = pad_map(maps.get('depth')) if 'depth' in net.modalities else None
            code_p = pad_map(maps.get('code')) if 'kernel' in net.modalities else None
            # what the LR encoder reads and strength < 1 starts from: the upsampled LR image (paper), or the
            # SVKR's Iᵀ (network_g: lr_input: svkr), padded as the LR image is
            guide = maps.get('sr')
            if guide is not None:
                guide = guide.to(dev).clamp(0, 1)
                gh, gw = hp * s - guide.shape[-2], wp * s - guide.shape[-1]
                if gh or gw:
                    mode = 'reflect' if gh < guide.shape[-2] and gw < guide.shape[-1] else 'replicate'
                    guide = F.pad(guide, (0, gw, 0, gh), mode=mode)
            # LR windows of the VAE encoder: whole latent pixels at every start, the network's size multiple
            lr_mult = m // math.gcd(m, s)
            lr_step = f // math.gcd(f, s)
            if tile:
                tile_lr = _round_up(max(tile, 1), lr_mult)
                overlap_lr = max(0, min(_round_up(overlap, lr_step), tile_lr - lr_step))
                context_lr = max(overlap_lr, _round_up(2, lr_step))  # at least bicubic's reach
                lt, lo = tile_lr * s // f, overlap_lr * s // f
            else:  # the whole image is one window
                tile_lr, overlap_lr, context_lr, lt, lo = None, 0, 0, None, 0
            if out is None:
                out = torch.empty((b, 3, h * s, w * s), dtype=torch.float32, device=out_device)

            def encode_window(t):
                return net.encode_image(upsample_lr(t, (t.shape[-2] * s, t.shape[-1] * s))).float()

            with autocast(dev, dtype):
                if layerwise:
                    image = (upsample_lr(lq, (hp * s, wp * s)) if guide is None else guide) * 2 - 1
                    z_lr = tiled_encode(net.vae, image, tile_size=tile_lr * s, out_device=dev, store=vae_tiling[1],
                                        progress=progress).mode() * net.vae.config.scaling_factor
                    del image
                elif guide is None:
                    z_lr = tiled_apply(encode_window, lq, tile_lr, overlap_lr, context=context_lr, multiple=lr_mult,
                                       out_device=dev, progress=progress, desc='VAE encode')
                else:  # the same windows at HR size
                    z_lr = tiled_apply(lambda t: net.encode_image(t).float(), guide, tile_lr and tile_lr * s,
                                       overlap_lr * s, context=context_lr * s, multiple=lr_mult * s, out_device=dev,
                                       progress=progress, desc='VAE encode')
                zh, zw = z_lr.shape[-2:]

                def to_latent(x):
                    if x is None or tuple(x.shape[-2:]) == (zh, zw):
                        return x
                    return F.interpolate(x, size=(zh, zw), mode='bilinear', align_corners=False, antialias=True)

                depth_l, code_l = to_latent(depth_p), to_latent(code_p)
                runner = TiledRunner(lt, lo, context=0, multiple=lm, out_device=dev, with_window=True)
                if cond_cache not in ('auto', 'device', 'cpu', 'none'):
                    raise OptionError('cond_cache', cond_cache, 'expected auto, device, cpu or none')
                cache = cond_cache
                if cache == 'auto':  # one window (a whole image): its features are computed once
                    one = len(runner.windows(zh, zw)[0]) == 1
                    cache = 'device' if one else ('cpu' if dev.type == 'cuda' else 'none')
                conds = {}

                def window_conds(win):
                    if win in conds:
                        c = conds[win]
                        return _map_conds(c, lambda x: x.to(dev, non_blocking=True)) if cache == 'cpu' else c
                    y0, y1, x0, x1 = win
                    crop = (lambda x: None if x is None else x[..., y0:y1, x0:x1])
                    z_win = z_lr[..., y0:y1, x0:x1]
                    code_win = crop(code_l)
                    code_win = None if code_win is None else code_win.to(z_win.dtype)
                    c = net.encode_conditions(z_win, crop(depth_l), code_win, size=(y1 - y0, x1 - x0))
                    if cache == 'device':
                        conds[win] = c
                    elif cache == 'cpu':
                        conds[win] = _map_conds(c, lambda x: x.to('cpu'))
                    return c

                def predict(inp, t):

                    def window_prediction(zt, win):
                        if tuple(zt.shape[-2:]) != (win[1] - win[0], win[3] - win[2]):
                            raise RuntimeError('SSRPipeline: latent window was padded; size multiple mismatch')
                        return net(zt, t, conditions=window_conds(win)).float()

                    return runner(window_prediction, inp)

                z = self.denoise(z_lr.shape, predict, steps, seed, strength, init_latent=z_lr, sampler=sampler,
                                 progress=progress)
                fixer = StreamingColorFix(color_fix,
                                          lambda a, b_: upsample_lr_rows(lq, s, a, b_).to(out_device).float(),
                                          hp * s, out)
                if layerwise:  # rows in [-1, 1] -> decode_latent's [0, 1], streamed into the colour fix
                    tiled_decode(net.vae, z / net.vae.config.scaling_factor, tile_size=lt, out_device=out_device,
                                 store=vae_tiling[1], progress=progress,
                                 out=lambda r0, r1, rows: fixer.push(r0, r1, ((rows + 1) / 2).clamp(0, 1)))
                else:
                    tiled_apply(lambda t: net.decode_latent(t).float(), z, lt, lo, context=lo, multiple=lm,
                                out_device=out_device, progress=progress, desc='VAE decode', into={'out': fixer.push})
                fixer.finish()
        res = {'sr': out}
        if maps.get('depth') is not None:
            res['depth'] = maps['depth']
        if return_maps:
            res['kvar'] = maps.get('kvar')
        return res

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
        """Write the model folder (see the module doc); ``model_index.json`` last, so a folder that has it is
        complete."""
        os.makedirs(save_directory, exist_ok=True)
        components = {}
        if self.unet is not None:
            self.unet.save_pretrained(osp.join(save_directory, UNET_FOLDER))
            compat.save_scheduler(self.scheduler, osp.join(save_directory, SCHEDULER_FOLDER))
            components.update(ssr_unet=['ssr_arch', 'SSRUNet'], scheduler=['diffusers', type(self.scheduler).__name__])
        pca = self.kernel_pca()
        if pca is not None:
            pca.save(osp.join(save_directory, KERNEL_PCA_FILE))
        if self.svkr is not None:
            self._save_svkr(osp.join(save_directory, SVKR_FOLDER), pca)
            components['svkr'] = ['ssr_arch', type(self.svkr).__name__]
        config = dict(_class_name=type(self).__name__, components=components, **self.config)
        with atomic_write(osp.join(save_directory, self.config_name), 'w') as f:
            json.dump(config, f, indent=2, sort_keys=True)

    def _save_svkr(self, folder, pca):
        from safetensors.torch import save as safetensors_bytes
        os.makedirs(folder, exist_ok=True)
        config = deepcopy(self.svkr.config)
        depth_opt = config.get('depth_opt') or {}
        if depth_opt.get('model_path'):
            depth_opt['model_path'] = osp.abspath(depth_opt['model_path'])
        sr_opt = dict(config.get('sr_opt') or {'type': 'NBSR'})
        nbsr_pca = getattr(self.svkr.sr_net, 'pca', None)
        same = pca is not None and nbsr_pca is not None and pca.components.shape == nbsr_pca.components.shape and \
            torch.equal(pca.components.cpu(), nbsr_pca.components.cpu()) and \
            torch.equal(pca.mean.cpu(), nbsr_pca.mean.cpu())
        # the folder's kernel_pca.pth builds the NBSR's basis (the weights hold it too)
        sr_opt['pca_path'] = KERNEL_PCA_FILE if same else None
        if nbsr_pca is not None:
            sr_opt['pca_dim'] = int(nbsr_pca.dim)
        config['sr_opt'] = sr_opt
        with atomic_write(osp.join(folder, 'config.json'), 'w') as f:
            json.dump(dict(type=type(self.svkr).__name__, **config), f, indent=2, sort_keys=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.svkr.state_dict().items()
                   if not k.startswith(_SVKR_REFERENCED)}
        with atomic_write(osp.join(folder, SVKR_WEIGHTS)) as f:
            f.write(safetensors_bytes(tensors, metadata={'format': 'pt'}))

    @staticmethod
    def _load_svkr(folder, model_folder):
        from safetensors.torch import load_file
        with open(osp.join(folder, 'config.json')) as f:
            config = json.load(f)
        sr_opt = config.get('sr_opt') or {}
        if sr_opt.get('pca_path') == KERNEL_PCA_FILE:
            sr_opt['pca_path'] = osp.join(model_folder, KERNEL_PCA_FILE)
        net = build_network(config)
        weights = osp.join(folder, SVKR_WEIGHTS)
        missing, unexpected = net.load_state_dict(load_file(weights), strict=False)
        missing = [k for k in missing if not k.startswith(_SVKR_REFERENCED)]
        if missing or unexpected:
            raise KeyError(f'{weights} does not fit {config.get("type")}: missing {missing[:5]}, '
                           f'unexpected {unexpected[:5]}')
        return net.requires_grad_(False).eval()

    @classmethod
    def check_folder(cls, folder):
        """Stop with a ``FileNotFoundError`` naming the first file a model folder lacks."""
        if not osp.isdir(folder):
            raise FileNotFoundError(f'{folder}: model folder does not exist (make one with scripts/export_model.py)')
        index = osp.join(folder, cls.config_name)
        if not osp.isfile(index):
            raise FileNotFoundError(f'{folder}: not a complete SSR model folder (no {cls.config_name}; make one with '
                                    'scripts/export_model.py)')
        with open(index) as f:
            components = json.load(f).get('components') or {}
        needed = {'ssr_unet': (osp.join(UNET_FOLDER, SSRUNet.config_name), osp.join(UNET_FOLDER, UNET_WEIGHTS)),
                  'scheduler': (osp.join(SCHEDULER_FOLDER, 'scheduler_config.json'), ),
                  'svkr': (osp.join(SVKR_FOLDER, 'config.json'), osp.join(SVKR_FOLDER, SVKR_WEIGHTS))}
        for name in components:
            for rel in needed.get(name, ()):
                if not osp.isfile(osp.join(folder, rel)):
                    raise FileNotFoundError(f'{folder}: incomplete model folder, no {rel}')

    @classmethod
    def from_pretrained(cls, folder, device=None, dtype=None):
        """Load a folder written by ``save_pretrained`` (local paths only) onto ``device`` (default: CPU).
        ``dtype``: the default autocast precision of the loaded pipeline."""
        from diffusers import DDPMScheduler
        cls.check_folder(folder)
        with open(osp.join(folder, cls.config_name)) as f:
            config = json.load(f)
        components = config.pop('components', {}) or {}
        config = {k: v for k, v in config.items() if not k.startswith('_')}
        unet = scheduler = svkr = None
        if 'ssr_unet' in components:
            with _referenced_path(osp.join(folder, UNET_FOLDER, 'config.json'), 'the Stable Diffusion base'):
                unet = SSRUNet.from_pretrained(osp.join(folder, UNET_FOLDER)).requires_grad_(False).eval()
            scheduler = DDPMScheduler.from_pretrained(osp.join(folder, SCHEDULER_FOLDER))
        if 'svkr' in components:
            with _referenced_path(osp.join(folder, SVKR_FOLDER, 'config.json'), 'the depth network', 'depth_opt:'):
                svkr = cls._load_svkr(osp.join(folder, SVKR_FOLDER), folder)
        pipe = cls(unet, scheduler, svkr, dtype=dtype, **config)
        return pipe.to(device if device is not None else 'cpu')

    @classmethod
    def from_options(cls, opt, device=None, dtype=None):
        """Build from a parsed BasicSR option dict with resolved paths: an SSR one (``network_g: SSRUNet`` with
        ``path:pretrain_network_g``; ``network_svkr`` with ``path:pretrain_network_svkr``; the ``diffusion``
        block) or an SVKR one (``network_g: SVKR`` with ``path:pretrain_network_g``). Weights are the EMA ones
        where the checkpoint has them (``param_key_*``, default ``params_ema``). No weights: an OptionError."""
        path_opt = opt.get('path') or {}
        net_opt = opt.get('network_g') or {}
        svkr = unet = scheduler = None
        if net_opt.get('type') == 'SVKR':
            if not svkr_has_weights(net_opt, path_opt, 'pretrain_network_g'):
                raise OptionError('path:pretrain_network_g', None, 'the SVKR has no trained weights (e.g. '
                                  'experiments/<name>/models/net_g_latest.pth of options/train_svkr.yml)')
            svkr = build_svkr_from_options(net_opt, path_opt, 'pretrain_network_g', 'param_key_g')
            return cls(None, None, svkr, scale=opt.get('scale'), dtype=dtype).to(device or 'cpu')
        if net_opt.get('type') != 'SSRUNet':
            raise OptionError('network_g:type', net_opt.get('type'), 'expected SSRUNet (an SSR option file) or SVKR')
        if opt.get('network_svkr') is not None:
            if not svkr_has_weights(opt['network_svkr'], path_opt):
                raise OptionError('path:pretrain_network_svkr', None, SVKR_WEIGHTS_HINT)
            svkr = build_svkr_from_options(opt['network_svkr'], path_opt, 'pretrain_network_svkr', 'param_key_svkr')
        net_opt = deepcopy(net_opt)
        net_opt.pop('type')
        unet = SSRUNet(**net_opt)
        ckpt = path_opt.get('pretrain_network_g')
        if not ckpt:
            raise OptionError('path:pretrain_network_g', None, 'the trained SSR weights are needed (e.g. '
                              'experiments/<name>/models/net_g_latest.pth)')
        state, key = read_state_dict(ckpt, path_opt.get('param_key_g', 'params_ema'))
        unet.load_saved_state_dict(state, source=f'{ckpt} [{key}]')
        unet.requires_grad_(False).eval()
        adopt_svkr_kernel_pca(unet, svkr)
        scheduler = scheduler_from_options(opt.get('diffusion'), unet.config['pretrained_path'])
        pipe = cls(unet, scheduler, svkr, scale=opt.get('scale'), dtype=dtype,
                   **sampling_options(opt.get('diffusion')))
        return pipe.to(device or 'cpu')
