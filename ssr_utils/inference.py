"""The engine behind ``scripts/inference_ssr.py``: load a model from an option file (or an experiment
folder), super-resolve images one by one with tiling, write ``<out>/<stem>.png``, report a summary.

Two paths:
* ``svkr_only``: the SVKR's non-blind SR result Iᵀ (fast, deterministic). The SVKR is fully
  convolutional apart from the depth estimate (min-max normalised per window), so it is tiled in LR
  space with a context margin and stitched at HR size.
* SSR diffusion: ``SSRModel.sr`` when the image fits in one tile; otherwise ``tiled_ssr_sample``, which
  follows ``SSRModel.sample`` step by step with every image-sized stage tiled: the SVKR (LR space), the
  VAE encoder (HR space), the UNet at every denoising step (latent space; the AMF condition features are
  computed once per latent window, noise predictions are blended over overlaps before the scheduler
  step, as in MultiDiffusion / StableSR's tiled sampling) and the VAE decoder (latent space).
"""
import math
import os
import os.path as osp
import time
from collections import OrderedDict
from contextlib import nullcontext
from copy import deepcopy

import numpy as np
import torch
import yaml
from torch.nn import functional as F
from tqdm import tqdm

from ssr_utils import compat

compat.apply()

from basicsr.utils import get_root_logger  # noqa: E402
from basicsr.utils.options import ordered_yaml  # noqa: E402

from ssr_utils.color_fix import StreamingColorFix  # noqa: E402
from ssr_utils.errors import OptionError  # noqa: E402
from ssr_utils.image_io import (list_images, read_image, tensor_to_image, image_to_tensor,  # noqa: E402
                                upscale_alpha, write_image)
from ssr_utils.tiling import TiledRunner, tiled_apply  # noqa: E402

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
# LR pixels of context around each SVKR window: more than the receptive field of the demo-size networks
# (about 6 LR pixels, measured); even, so that DKENet's stride-2 stages keep their phase in every window
SVKR_CONTEXT = 16
SVKR_MIN_SIZE = 8
SVKR_MULTIPLE = 2


def _round_up(n, m):
    return int(math.ceil(n / m) * m)


# ------------------------------------------------------------------------------------------ options
def load_options(source):
    """``source``: a YAML option file, or an experiment folder (``experiments/<name>``) that holds the
    copy BasicSR saved of its option file and ``models/net_g_latest.pth``. Returns the option dict."""
    if osp.isdir(source):
        ymls = sorted(f for f in os.listdir(source) if f.endswith(('.yml', '.yaml')))
        if not ymls:
            raise FileNotFoundError(f'{source}: an experiment folder must hold its option file (*.yml)')
        opt = load_options(osp.join(source, ymls[-1]))
        ckpt = osp.join(source, 'models', 'net_g_latest.pth')
        if not osp.isfile(ckpt):
            raise FileNotFoundError(f'{source}: no models/net_g_latest.pth in the experiment folder')
        opt.setdefault('path', {})
        opt['path']['pretrain_network_g'] = ckpt
        opt['path']['param_key_g'] = 'params_ema'  # the EMA weights when saved (else 'params' is used)
        opt['path'].pop('resume_state', None)
        return opt
    if not osp.isfile(source):
        raise FileNotFoundError(f'{source}: option file does not exist')
    with open(source, 'r') as f:
        try:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
        except yaml.YAMLError as err:
            raise ValueError(f'{source}: not a valid YAML option file ({err})') from None
    if not isinstance(opt, dict):
        raise ValueError(f'{source}: not a YAML option file (top level is not a mapping)')
    return opt


def resolve_device(name):
    """``auto`` -> cuda when available else cpu; ``cuda:N`` selects GPU N."""
    if name in (None, 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError('--device', name, 'expected auto, cpu, cuda or cuda:N') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise OptionError('--device', name, 'CUDA is not available on this machine')
        if device.index is not None:
            torch.cuda.set_device(device.index)
    elif device.type != 'cpu':
        raise OptionError('--device', name, 'expected auto, cpu, cuda or cuda:N')
    return device


def prepare_options(opt, device, precision='fp32'):
    """Fill the keys a model built outside BasicSR's launcher needs, and check types and paths."""
    from ssr_utils.option_check import check_options
    import ssr_arch  # noqa: F401  (registration)
    import ssr_models  # noqa: F401
    opt = deepcopy(opt)
    opt.pop('datasets', None)  # inference reads its own images; test sets need not exist
    opt['is_train'] = False
    opt['dist'] = False
    opt['rank'], opt['world_size'] = 0, 1
    opt['num_gpu'] = 1 if device.type == 'cuda' else 0
    opt.setdefault('path', {})
    opt.setdefault('model_type', 'SRModel')
    if precision in ('fp16', 'bf16'):
        opt.setdefault('diffusion', {})['amp'] = precision
        if isinstance(opt.get('train'), dict):
            opt['train']['amp'] = precision
    check_options(opt, ROOT)
    return opt


# ------------------------------------------------------------------------------------------ models
def build_svkr(opt, device):
    """The SVKR of an option file: ``network_svkr`` (an SSR option file) or ``network_g`` of type SVKR
    (an SVKR option file), with its checkpoint."""
    from basicsr.archs import build_network
    from ssr_arch.svkr_arch import load_subnetwork
    if opt.get('network_svkr') is not None:
        net_opt, path_key, key_key = opt['network_svkr'], 'pretrain_network_svkr', 'param_key_svkr'
    elif (opt.get('network_g') or {}).get('type') == 'SVKR':
        net_opt, path_key, key_key = opt['network_g'], 'pretrain_network_g', 'param_key_g'
    else:
        raise OptionError('network_svkr', None, '--svkr-only needs an option file with network_svkr, or '
                          'network_g of type SVKR')
    net = build_network(deepcopy(net_opt))
    ckpt = opt['path'].get(path_key)
    if ckpt:
        load_subnetwork(net, ckpt, opt['path'].get(key_key, 'params_ema'), label='SVKR')
    else:
        get_root_logger().warning(f'inference: path:{path_key} is not set; the SVKR has random weights')
    return net.to(device).eval().requires_grad_(False)


def build_ssr(opt):
    from basicsr.models import build_model
    if (opt.get('network_g') or {}).get('type') != 'SSRUNet':
        raise OptionError('network_g:type', (opt.get('network_g') or {}).get('type'),
                          'the diffusion path needs an SSRModel option file (network_g: SSRUNet); '
                          'use --svkr-only for an SVKR option file')
    if not opt['path'].get('pretrain_network_g'):
        get_root_logger().warning('inference: path:pretrain_network_g is not set; the SSR model has random weights')
    model = build_model(opt)
    model.net_g.eval()
    return model


def _autocast(device, precision):
    if device.type != 'cuda' or precision not in ('fp16', 'bf16'):
        return nullcontext()
    return torch.autocast('cuda', dtype=torch.float16 if precision == 'fp16' else torch.bfloat16)


# ------------------------------------------------------------------------------------------ SVKR
@torch.no_grad()
def svkr_tiled(svkr, lr, tile=0, overlap=16, context=SVKR_CONTEXT, want=('sr', ), kernel_code=None,
               precision='fp32', progress=False, out_device=None, into=None):
    """SVKR over LR windows. ``want`` from ``sr`` (HR image), ``depth`` (LR), ``kvar`` (kernel variance,
    LR), ``code`` (PCA code of the kernel map via ``kernel_code``, LR) -> dict of blended maps.
    ``into``: name -> tensor the rows are written into (e.g. ``{'sr': view of the output image}``).

    The full k²-channel kernel map is never stitched (441 channels at LR size would dominate memory);
    blended codes equal the code of blended kernels because the PCA encoding is affine per pixel."""
    from ssr_utils.visualize import kernel_variance
    device = next(svkr.parameters()).device

    def fn(t):
        with _autocast(device, precision):
            out = svkr(t.to(device))
        res = {}
        if 'sr' in want:
            res['sr'] = out['sr'].float()
        if 'depth' in want and out.get('depth') is not None:
            res['depth'] = out['depth'].float()
        if 'kvar' in want:
            res['kvar'] = kernel_variance(out['kernel'].float())
        if 'code' in want:
            res['code'] = kernel_code(out['kernel'].float()).float()
        return res

    return tiled_apply(fn, lr, tile if tile and tile > 0 else None, overlap, context, multiple=SVKR_MULTIPLE,
                       min_size=SVKR_MIN_SIZE, out_device=out_device, progress=progress, desc='SVKR tiles',
                       into=into)


# ------------------------------------------------------------------------------------------ SSR
def _map_conds(conds, fn):
    """Apply ``fn`` to every tensor of SSRUNet.encode_conditions' output (name -> [(modality, a, b)])."""
    return {k: [(m, fn(a), fn(b)) for m, a, b in v] for k, v in conds.items()}


def lr_up_rows(model, lq, row0, row1):
    """Rows ``[row0, row1)`` of ``model._lr_up(lq, (H·s, W·s))`` computed from the LR rows they depend on
    (bicubic reaches two LR rows each way), so the whole upsampled image is never made."""
    s = model.scale
    h, w = lq.shape[-2:]
    la, lb = max(0, row0 // s - 2), min(h, -(-row1 // s) + 2)
    up = model._lr_up(lq[..., la:lb, :], ((lb - la) * s, w * s))
    return up[..., row0 - la * s:row1 - la * s, :]


@torch.no_grad()
def tiled_ssr_sample(model, lr, tile, overlap=16, num_steps=None, seed=None, save_maps=False, progress=False,
                     out_device='cpu', cond_cache='auto', out=None):
    """Tiled version of ``SSRModel.sr`` (see the module doc). ``tile`` / ``overlap`` are in LR pixels.
    With one window it computes what ``SSRModel.sr`` computes. Returns dict(sr, depth, kvar).

    Nothing of HR size is held but the result: the VAE encoder's windows upsample their own LR window
    (with context), and decoded rows stream through the colour correction (``StreamingColorFix``) into
    ``out`` (1×3×(h·s)×(w·s) float32 on ``out_device``, e.g. a view of the output image; made when None).

    ``cond_cache``: where the AMF condition features of every latent window are kept between denoising
    steps: ``device`` (fastest; memory grows with the number of windows), ``cpu`` (the accelerator holds
    one window's features at a time; copied in per step), ``none`` (recomputed at every step: flat
    memory, about the cost of the condition encoders per step), ``auto`` = ``cpu`` on CUDA, else ``none``
    (measured on CPU with the tiny config, bench_inference.py: same time, 147 MB instead of 499 MB for a
    128² LR input in 32² tiles)."""
    net = model.bare_g
    dev = model.device
    s = model.scale
    f, m = net.vae_scale_factor, net.size_multiple
    lm = max(1, m // f)
    mods = net.modalities
    need_depth, need_kernel = 'depth' in mods, 'kernel' in mods
    h, w = lr.shape[-2:]
    lr = lr.to(dev)
    maps = {}
    want = (['depth'] if need_depth or save_maps else []) + (['code'] if need_kernel else []) + \
        (['kvar'] if save_maps else [])
    if want:
        if model.net_svkr is None:
            raise OptionError('network_svkr', None, 'SSR inference needs an SVKR for the depth / kernel maps')
        precision = {torch.float16: 'fp16', torch.bfloat16: 'bf16'}.get(model.amp_dtype, 'fp32')
        maps = svkr_tiled(model.net_svkr, lr, tile, overlap, want=want, kernel_code=net.kernel_code,
                          precision=precision, progress=progress, out_device=dev)
        if need_depth and 'depth' not in maps:
            raise OptionError('network_svkr:use_depth', False, 'the depth modality needs an SVKR with depth')
    lq, _ = model._pad_lr(lr)
    hp, wp = lq.shape[-2:]

    def pad_map(x):
        if x is None or tuple(x.shape[-2:]) == (hp, wp):
            return x
        return F.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2]), mode='replicate')

    depth = pad_map(maps.get('depth')) if need_depth else None
    code = pad_map(maps.get('code')) if need_kernel else None
    # LR windows of the VAE encoder: whole latent pixels at every start, the network's size multiple
    lr_mult = m // math.gcd(m, s)
    lr_step = f // math.gcd(f, s)
    tile_lr = _round_up(max(tile, 1), lr_mult)
    overlap_lr = max(0, min(_round_up(overlap, lr_step), tile_lr - lr_step))
    context_lr = max(overlap_lr, _round_up(2, lr_step))  # at least bicubic's reach
    lt = tile_lr * s // f
    lo = overlap_lr * s // f
    if out is None:
        out = torch.empty((lr.shape[0], 3, h * s, w * s), dtype=torch.float32, device=out_device)

    def encode_window(t):
        return net.encode_image(model._lr_up(t, (t.shape[-2] * s, t.shape[-1] * s))).float()

    was_training = model.net_g.training
    model.net_g.eval()
    try:
        with model.ema_weights(), model._autocast():
            z_lr = tiled_apply(encode_window, lq, tile_lr, overlap_lr, context=context_lr, multiple=lr_mult,
                               out_device=dev, progress=progress, desc='VAE encode')
            zh, zw = z_lr.shape[-2:]

            def to_latent(x):
                if x is None or tuple(x.shape[-2:]) == (zh, zw):
                    return x
                return F.interpolate(x, size=(zh, zw), mode='bilinear', align_corners=False, antialias=True)

            depth_l, code_l = to_latent(depth), to_latent(code)
            conds = {}
            cache = cond_cache if cond_cache != 'auto' else ('cpu' if dev.type == 'cuda' else 'none')
            if cache not in ('device', 'cpu', 'none'):
                raise OptionError('cond_cache', cond_cache, 'expected auto, device, cpu or none')

            def window_conds(win):
                if win in conds:
                    c = conds[win]
                    return _map_conds(c, lambda x: x.to(dev, non_blocking=True)) if cache == 'cpu' else c
                y0, y1, x0, x1 = win
                crop = (lambda x: None if x is None else x[..., y0:y1, x0:x1])
                z_win = z_lr[..., y0:y1, x0:x1]
                code_win = crop(code_l)
                c = net.encode_conditions(z_win, crop(depth_l), None if code_win is None else code_win.to(z_win.dtype),
                                          size=(y1 - y0, x1 - x0))
                if cache == 'device':
                    conds[win] = c
                elif cache == 'cpu':
                    conds[win] = _map_conds(c, lambda x: x.to('cpu'))
                return c

            runner = TiledRunner(lt, lo, context=0, multiple=lm, out_device=dev, with_window=True)

            def tiled_eps(inp, t):

                def window_eps(zt, win):
                    if tuple(zt.shape[-2:]) != (win[1] - win[0], win[3] - win[2]):
                        raise RuntimeError('tiled_ssr_sample: latent window was padded; size multiple mismatch')
                    return net(zt, t, conditions=window_conds(win)).float()

                return runner(window_eps, inp)

            z = model.denoise(z_lr.shape, tiled_eps, num_steps, seed, show_progress=progress, init_latent=z_lr)
            fixer = StreamingColorFix(model.diff_opt.get('color_fix', 'wavelet'),
                                      lambda a, b: lr_up_rows(model, lq, a, b).to(out_device).float(), hp * s, out)
            tiled_apply(lambda t: net.decode_latent(t).float(), z, lt, lo, context=lo, multiple=lm,
                        out_device=out_device, progress=progress, desc='VAE decode', into={'out': fixer.push})
            fixer.finish()
    finally:
        model.net_g.train(was_training)
    res = {'sr': out}
    if save_maps:
        res['depth'] = maps.get('depth')
        res['kvar'] = maps.get('kvar')
    return res


# ------------------------------------------------------------------------------------------ engine
class Inferencer:
    """One loaded model; ``process(path, out_dir)`` super-resolves one file and writes the outputs."""

    def __init__(self, opt_source, device='auto', svkr_only=False, precision='fp32', tile=0, tile_overlap=16,
                 steps=None, seed=None, color_fix_method=None, scale=None, save_maps=False, progress=True):
        self.device = resolve_device(device)
        if precision in ('fp16', 'bf16') and self.device.type != 'cuda':
            raise OptionError(f'--{precision}', True, f'half precision needs a CUDA device (device is {self.device})')
        if tile and tile_overlap >= tile:
            raise OptionError('--tile-overlap', tile_overlap, f'must be smaller than --tile {tile}')
        if tile_overlap < 0:
            raise OptionError('--tile-overlap', tile_overlap, 'must be >= 0')
        if steps is not None and steps < 1:
            raise OptionError('--steps', steps, 'must be >= 1')
        if scale is not None and scale <= 0:
            raise OptionError('--scale', scale, 'must be > 0')
        self.svkr_only, self.precision = svkr_only, precision
        self.tile, self.tile_overlap = int(tile or 0), int(tile_overlap)
        self.steps, self.seed, self.save_maps, self.progress = steps, seed, save_maps, progress
        opt = prepare_options(load_options(opt_source), self.device, precision)
        self.opt = opt
        if svkr_only:
            self.svkr = build_svkr(opt, self.device)
            self.model = None
            self.net_scale = int(getattr(self.svkr, 'scale', None) or opt.get('scale', 4))
        else:
            self.model = build_ssr(opt)
            if self.model.net_svkr is None and any(m != 'lr' for m in self.model.bare_g.modalities):
                raise OptionError('network_svkr', None, 'blind inference needs an SVKR for the depth / kernel maps; '
                                  'this option file has none (e.g. a training file with conditions: source: gt)')
            self.net_scale = self.model.scale
            if color_fix_method is not None:
                self.model.diff_opt['color_fix'] = color_fix_method
        self.out_scale = float(scale) if scale is not None else float(self.net_scale)
        if self.out_scale != self.net_scale:
            get_root_logger().info(f'inference: the network is ×{self.net_scale}; outputs are resized to '
                                   f'×{self.out_scale:g} (--scale)')

    def _fits(self, h, w):
        return not self.tile or (h <= self.tile and w <= self.tile)

    @torch.no_grad()
    def super_resolve(self, lr, out=None):
        """1×3×h×w RGB [0, 1] -> dict(sr (CPU), depth, kvar). ``out``: optional CPU float32 tensor
        1×3×(h·s)×(w·s) (e.g. a view of the output image) that tiled runs write into."""
        if self.svkr_only:
            want = ('sr', 'depth', 'kvar') if self.save_maps else ('sr', )
            return svkr_tiled(self.svkr, lr, self.tile, self.tile_overlap, want=want, precision=self.precision,
                              progress=self.progress, out_device='cpu', into=None if out is None else {'sr': out})
        h, w = lr.shape[-2:]
        if self._fits(h, w):
            out = self.model.sr(lr.to(self.device), num_steps=self.steps, seed=self.seed, show_progress=self.progress)
            res = {'sr': out['sr'].float().cpu(), 'depth': out.get('depth')}
            if self.save_maps and out.get('kernel') is not None:
                from ssr_utils.visualize import kernel_variance
                res['kvar'] = kernel_variance(out['kernel'].float())
            elif self.save_maps and self.model.net_svkr is not None:
                maps = svkr_tiled(self.model.net_svkr, lr.to(self.device), 0, want=('depth', 'kvar'))
                res.update(maps)
            return res
        return tiled_ssr_sample(self.model, lr, self.tile, self.tile_overlap, self.steps, self.seed,
                                save_maps=self.save_maps, progress=self.progress, out=out)

    def process(self, path, out_dir):
        """Returns the list of written files; raises on any problem (the caller reports and goes on)."""
        import cv2
        from ssr_utils.visualize import colorize, depth_image
        img = read_image(path)
        lr = image_to_tensor(img.rgb)
        h, w = img.shape
        # tiled runs write their rows straight into the output image (H×W×3), so no second HR-size copy
        sr = np.empty((h * self.net_scale, w * self.net_scale, 3), dtype=np.float32)
        sr_view = torch.from_numpy(sr).permute(2, 0, 1)[None]
        out = self.super_resolve(lr, out=sr_view)
        if out['sr'] is None or out['sr'].data_ptr() != sr_view.data_ptr():
            sr = tensor_to_image(out['sr'])
        del out['sr'], sr_view
        for r in range(0, sr.shape[0], 512):
            rows = sr[r:r + 512]
            if not np.isfinite(rows).all():
                raise RuntimeError('the network produced non-finite values')
            np.clip(rows, 0, 1, out=rows)
        size = (int(round(h * self.out_scale)), int(round(w * self.out_scale)))
        if tuple(sr.shape[:2]) != size:
            interp = cv2.INTER_AREA if size[0] < sr.shape[0] else cv2.INTER_CUBIC
            sr = np.clip(cv2.resize(sr, (size[1], size[0]), interpolation=interp), 0, 1)
        alpha = upscale_alpha(img.alpha, size) if img.alpha is not None else None
        stem = osp.splitext(osp.basename(path))[0]
        written = [write_image(osp.join(out_dir, f'{stem}.png'), sr, alpha, img.bit_depth, img.gray)]
        if self.save_maps:
            if out.get('depth') is not None:
                dimg = depth_image(out['depth'].cpu(), size=size)
                written.append(write_image(osp.join(out_dir, f'{stem}_depth.png'), dimg[..., ::-1] / 255.0))
            if out.get('kvar') is not None:
                kv = F.interpolate(out['kvar'].float().cpu(), size=size, mode='nearest')[0, 0]
                kimg = colorize(kv)
                written.append(write_image(osp.join(out_dir, f'{stem}_kernel_var.png'), kimg[..., ::-1] / 255.0))
        return written


def run(args):
    """Run the CLI; returns the exit status (0: all done, 1: something skipped, 2: bad arguments)."""
    logger = get_root_logger()
    precision = 'fp16' if args.fp16 else 'bf16' if args.bf16 else 'fp32'
    try:
        files = list_images(args.input)
        engine = Inferencer(args.opt, args.device, args.svkr_only, precision, args.tile, args.tile_overlap,
                            args.steps, args.seed, args.color_fix, args.scale, args.save_maps, progress=not args.quiet)
    except (OptionError, FileNotFoundError, ValueError, KeyError) as err:
        msg = err.code if isinstance(err, OptionError) else f'{type(err).__name__}: {err}'
        print(f'inference_ssr: {msg}', flush=True)
        return 2
    os.makedirs(args.output, exist_ok=True)
    done, skipped, seen = OrderedDict(), OrderedDict(), {}
    interrupted = False
    for path in tqdm(files, desc='images', unit='img', disable=args.quiet):
        stem = osp.splitext(osp.basename(path))[0]
        target = osp.abspath(osp.join(args.output, f'{stem}.png'))
        if stem in seen:
            skipped[path] = f'output name {stem}.png is already taken by {seen[stem]}'
            continue
        if osp.exists(target) and osp.samefile(target, path):
            skipped[path] = f'output {target} would overwrite the input; choose another -o folder'
            continue
        seen[stem] = path
        start = time.perf_counter()
        try:
            engine.process(path, args.output)
            done[path] = time.perf_counter() - start
        except KeyboardInterrupt:
            interrupted = True
            skipped[path] = 'interrupted'
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            skipped[path] = 'out of GPU memory (try a smaller --tile)'
        except Exception as err:  # one bad file never stops the run
            reason = str(err) if str(err).startswith(path) else f'{type(err).__name__}: {err}'
            skipped[path] = reason
            logger.debug('inference: %s failed', path, exc_info=True)
    print_summary(done, skipped, args.output)
    if interrupted:
        return 130
    return 1 if skipped else 0


def print_summary(done, skipped, out_dir):
    lines = [f'Done: {len(done)} image(s) -> {out_dir}']
    for path, sec in done.items():
        lines.append(f'  ok       {osp.basename(path)}  {sec:.2f} s')
    if done:
        lines.append(f'  mean time per image: {sum(done.values()) / len(done):.2f} s')
    if skipped:
        lines.append(f'Skipped: {len(skipped)} file(s)')
        for path, reason in skipped.items():
            reason = reason[len(path) + 2:] if reason.startswith(path + ': ') else reason
            lines.append(f'  skipped  {path}: {reason}')
    print('\n'.join(lines), flush=True)
