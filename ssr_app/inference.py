"""The engine behind ``scripts/inference_ssr.py``: load an ``SSRPipeline`` from a model folder
(``--model_path``), an option file or an experiment folder (``-opt``) through ``ssr_pipelines.builder``,
super-resolve images one by one (tiled when asked), write ``<out>/<stem>.png``, report a summary.

Two paths, both ``SSRPipeline`` calls: ``svkr_only`` (the SVKR's non-blind result Iᵀ, fast and
deterministic) and SSR diffusion (``pipe(image, ...)``, tiled with ``--tile``; a whole image is its
one-window case).
"""
import os
import os.path as osp
import time
from collections import OrderedDict

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from ssr_utils import compat

compat.apply()

from basicsr.utils import get_root_logger  # noqa: E402

from ssr_app.cli import MIN_TILE  # noqa: E402
from ssr_pipelines.builder import load_pipeline  # noqa: E402
from ssr_pipelines.pipeline_ssr import check_sampler, check_strength  # noqa: E402
from ssr_utils.errors import OptionError  # noqa: E402
from ssr_utils.image_io import (image_to_tensor, list_images, read_image, tensor_to_image,  # noqa: E402
                                upscale_alpha, write_image)

OUTPUT_EXTS = ('auto', 'png', 'jpg')


# ------------------------------------------------------------------------------------------ options
def _mps_available():
    mps = getattr(torch.backends, 'mps', None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name, flag='--device'):
    """``auto`` -> cuda, else mps, else cpu; ``cuda:N`` selects GPU N; ``mps`` where Apple's Metal is absent
    falls back to the CPU with a warning (as Real-ESRGAN and diffusers scripts do); an explicit ``cuda``
    without CUDA stops (a user who names a GPU wants to know it is not used)."""
    if name in (None, 'auto'):
        if torch.cuda.is_available():
            return torch.device('cuda')
        return torch.device('mps') if _mps_available() else torch.device('cpu')
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise OptionError(flag, name, 'expected auto, cpu, cuda, cuda:N or mps') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise OptionError(flag, name, 'CUDA is not available on this machine (use --device auto or cpu)')
        if device.index is not None:
            if device.index >= torch.cuda.device_count():
                raise OptionError(flag, name, f'this machine has {torch.cuda.device_count()} CUDA device(s)')
            torch.cuda.set_device(device.index)
    elif device.type == 'mps':
        if not _mps_available():
            get_root_logger().warning(f'{flag} {name}: MPS is not available on this machine; running on the CPU')
            return torch.device('cpu')
    elif device.type != 'cpu':
        raise OptionError(flag, name, 'expected auto, cpu, cuda, cuda:N or mps')
    return device


def default_precision(device, fp32=False, fp16=False, bf16=False):
    """The CLI's precision: fp16 autocast on CUDA unless ``--fp32`` (Real-ESRGAN's default), float32 elsewhere;
    ``--fp16`` / ``--bf16`` asked for on a non-CUDA device stop with the flag named."""
    asked = 'fp16' if fp16 else 'bf16' if bf16 else None
    if asked is not None and device.type != 'cuda':
        raise OptionError(f'--{asked}', True, f'half precision needs a CUDA device (device is {device}; '
                          'leave the flag out there)')
    if fp32:
        return 'fp32'
    return asked or ('fp16' if device.type == 'cuda' else 'fp32')


def output_extension(ext, input_path, has_alpha):
    """``--ext``: ``png`` / ``jpg`` as asked (png for an input with alpha, which JPEG cannot hold, as
    Real-ESRGAN does); ``auto``: jpg for a JPEG input, png otherwise."""
    if ext not in OUTPUT_EXTS:
        raise OptionError('--ext', ext, f'expected one of {", ".join(OUTPUT_EXTS)}')
    if has_alpha:
        return 'png'
    if ext == 'auto':
        return 'jpg' if osp.splitext(input_path)[1].lower() in ('.jpg', '.jpeg') else 'png'
    return ext


# ------------------------------------------------------------------------------------------ engine
def check_tiling(tile, tile_overlap):
    """``(tile, overlap)`` of the CLI: ``tile`` None = no tiling (0, 0); otherwise at least ``MIN_TILE`` LR
    pixels, and the overlap (default ``min(16, tile // 4)``) in ``[0, tile)``."""
    if tile is None:
        return 0, int(tile_overlap or 0)
    if tile <= 0:
        raise OptionError('--tile', tile, 'must be a positive tile size in LR pixels (leave --tile out for no tiling)')
    if tile < MIN_TILE:
        raise OptionError('--tile', tile, f'too small to run: at least {MIN_TILE} LR pixels (every window also '
                          'carries its overlap and context; use the largest tile that fits the memory)')
    if tile_overlap is None:
        tile_overlap = min(16, tile // 4)
    if tile_overlap < 0:
        raise OptionError('--tile-overlap', tile_overlap, 'must be >= 0')
    if tile_overlap >= tile:
        raise OptionError('--tile-overlap', tile_overlap, f'must be smaller than --tile {tile}')
    return int(tile), int(tile_overlap)


class Inferencer:
    """One loaded pipeline; ``process(path, out_dir)`` super-resolves one file and writes the outputs."""

    def __init__(self, pipeline, svkr_only=False, precision='fp32', tile=None, tile_overlap=None, steps=None, seed=None,
                 color_fix_method=None, scale=None, save_maps=False, progress=True, sampler=None, strength=None,
                 num_samples=1, ext='png', suffix=''):
        tile, tile_overlap = check_tiling(tile, tile_overlap)
        if steps is not None and steps < 1:
            raise OptionError('--steps', steps, 'must be >= 1')
        if scale is not None and scale <= 0:
            raise OptionError('--outscale', scale, 'must be > 0')
        if num_samples < 1:
            raise OptionError('--num_samples', num_samples, 'must be >= 1')
        if svkr_only and num_samples > 1:
            raise OptionError('--num_samples', num_samples, 'the SVKR result (--svkr-only) is deterministic: one '
                              'sample')
        if svkr_only and (sampler is not None or strength is not None):
            raise OptionError('--sampler' if sampler is not None else '--strength',
                              sampler if sampler is not None else strength, 'has no effect with --svkr-only')
        if sampler is not None:
            check_sampler(sampler, '--sampler')
        if strength is not None:
            strength = check_strength(strength, '--strength')
        if ext not in OUTPUT_EXTS:
            raise OptionError('--ext', ext, f'expected one of {", ".join(OUTPUT_EXTS)}')
        if suffix and (os.sep in suffix or (os.altsep and os.altsep in suffix)):
            raise OptionError('--suffix', suffix, 'must not contain a path separator')
        self.sampler, self.strength, self.num_samples, self.ext, self.suffix = \
            sampler, strength, int(num_samples), ext, suffix
        self.pipeline = pipeline
        self.svkr_only, self.dtype = svkr_only, None if precision == 'fp32' else precision
        self.tile, self.tile_overlap = tile, tile_overlap
        self.steps, self.seed, self.color_fix, self.save_maps, self.progress = \
            steps, seed, color_fix_method, save_maps, progress
        if svkr_only and pipeline.svkr is None:
            raise OptionError('network_svkr', None, '--svkr-only needs a model with an SVKR (an SSR option file with '
                              'network_svkr, an SVKR option file, or a model folder with svkr/)')
        if not svkr_only:
            if pipeline.unet is None:
                raise OptionError('network_g:type', 'SVKR', 'the diffusion path needs an SSR model (network_g: '
                                  'SSRUNet); use --svkr-only for an SVKR model')
            if pipeline.svkr is None and pipeline.needs_maps():
                raise OptionError('network_svkr', None, 'blind inference needs an SVKR for the depth / kernel maps; '
                                  'this model has none (e.g. a training file with conditions: source: gt; add one '
                                  'with scripts/export_model.py --svkr)')
        self.net_scale = pipeline.scale
        self.out_scale = float(scale) if scale is not None else float(self.net_scale)
        if self.out_scale != self.net_scale:
            get_root_logger().info(f'inference: the network is ×{self.net_scale}; outputs are resized to '
                                   f'×{self.out_scale:g} (--scale)')

    def seeds(self):
        """The seed of each sample: ``--seed`` (else the model's), then +1, +2, ... for ``--num_samples``."""
        base = self.seed if self.seed is not None else self.pipeline.seed
        return [int(base) + k for k in range(self.num_samples)]

    def output_stem(self, path):
        """``<input stem>`` or ``<input stem>_<suffix>``: the name every output of ``path`` starts with."""
        stem = osp.splitext(osp.basename(path))[0]
        return f'{stem}_{self.suffix}' if self.suffix else stem

    @torch.no_grad()
    def super_resolve(self, lr, out=None, seed=None):
        """1×3×h×w RGB [0, 1] (CPU) -> ``SSRPipelineOutput`` with the result on the CPU. ``out``: optional CPU
        float32 tensor 1×3×(h·s)×(w·s) (e.g. a view of the output image) the result is written into."""
        if self.svkr_only:
            return self.pipeline.svkr_only(lr, tile=self.tile, tile_overlap=self.tile_overlap, dtype=self.dtype,
                                           return_maps=self.save_maps, progress=self.progress, out=out,
                                           out_device='cpu')
        return self.pipeline(lr, num_inference_steps=self.steps, seed=self.seed if seed is None else seed,
                             strength=self.strength, sampler=self.sampler, tile=self.tile,
                             tile_overlap=self.tile_overlap, color_fix=self.color_fix, dtype=self.dtype,
                             return_maps=self.save_maps, progress=self.progress, out=out, out_device='cpu')

    def process(self, path, out_dir):
        """Returns the list of written files; raises on any problem (the caller reports and goes on)."""
        import cv2
        from ssr_utils.visualize import colorize, depth_image
        img = read_image(path)
        lr = image_to_tensor(img.rgb)
        h, w = img.shape
        size = (int(round(h * self.out_scale)), int(round(w * self.out_scale)))
        alpha = upscale_alpha(img.alpha, size) if img.alpha is not None else None
        ext = output_extension(self.ext, path, alpha is not None)
        name = self.output_stem(path)
        written = []
        for k, seed in enumerate(self.seeds()):
            # tiled runs write their rows straight into the output image (H×W×3), so no second HR-size copy
            sr = np.empty((h * self.net_scale, w * self.net_scale, 3), dtype=np.float32)
            sr_view = torch.from_numpy(sr).permute(2, 0, 1)[None]
            out = self.super_resolve(lr, out=sr_view, seed=seed)
            if out.images.data_ptr() != sr_view.data_ptr():
                sr = tensor_to_image(out.images)
            depth, kvar = out.depth, out.kernel_variance
            del out, sr_view
            for r in range(0, sr.shape[0], 512):
                rows = sr[r:r + 512]
                if not np.isfinite(rows).all():
                    raise RuntimeError('the network produced non-finite values')
                np.clip(rows, 0, 1, out=rows)
            if tuple(sr.shape[:2]) != size:
                interp = cv2.INTER_AREA if size[0] < sr.shape[0] else cv2.INTER_CUBIC
                sr = np.clip(cv2.resize(sr, (size[1], size[0]), interpolation=interp), 0, 1)
            target = f'{name}_seed{seed}.{ext}' if self.num_samples > 1 else f'{name}.{ext}'
            written.append(write_image(osp.join(out_dir, target), sr, alpha, img.bit_depth, img.gray))
            del sr
            if self.save_maps and k == 0:  # the maps come from the SVKR: the same for every seed
                if depth is not None:
                    dimg = depth_image(depth.cpu(), size=size)
                    written.append(write_image(osp.join(out_dir, f'{name}_depth.png'), dimg[..., ::-1] / 255.0))
                if kvar is not None:
                    kv = F.interpolate(kvar.float().cpu(), size=size, mode='nearest')[0, 0]
                    kimg = colorize(kv)
                    written.append(write_image(osp.join(out_dir, f'{name}_kernel_var.png'),
                                               kimg[..., ::-1] / 255.0))
        return written


def run(args):
    """Run the CLI; returns the exit status (0: all done, 1: something skipped, 2: bad arguments or nothing to
    do)."""
    logger = get_root_logger()
    try:
        files = list_images(args.input)
        if not files:
            raise OptionError('--input', args.input, 'the folder holds no files to super-resolve')
        device = resolve_device(args.device)
        precision = default_precision(device, getattr(args, 'fp32', False), args.fp16, args.bf16)
        check_tiling(args.tile, args.tile_overlap)  # before the (slow) model load
        pipeline = load_pipeline(args.opt, args.model_path, device)
        engine = Inferencer(pipeline, args.svkr_only, precision, args.tile, args.tile_overlap, args.steps, args.seed,
                            args.color_fix, args.scale, args.save_maps, progress=not args.quiet,
                            sampler=args.sampler, strength=args.strength, num_samples=args.num_samples,
                            ext=args.ext, suffix=args.suffix)
    except (OptionError, FileNotFoundError, ValueError, KeyError, RuntimeError) as err:
        msg = str(err) if isinstance(err, OptionError) else f'{type(err).__name__}: {err}'
        print(f'inference_ssr: {msg}', flush=True)
        return 2
    if device.type == 'cuda' or precision != 'fp32':
        logger.info(f'inference: {device}, precision {precision}' + (' (--fp32 for float32)' if precision == 'fp16'
                                                                     else ''))
    os.makedirs(args.output, exist_ok=True)
    done, skipped, seen = OrderedDict(), OrderedDict(), {}
    interrupted = False
    for path in tqdm(files, desc='images', unit='img', disable=args.quiet):
        name = engine.output_stem(path)
        if name in seen:
            skipped[path] = f'output name {name} is already taken by {seen[name]}'
            continue
        inputs_overwritten = [t for t in (osp.join(args.output, f'{name}.{e}') for e in ('png', 'jpg'))
                              if osp.exists(t) and osp.samefile(t, path)]
        if inputs_overwritten:
            skipped[path] = f'output {osp.abspath(inputs_overwritten[0])} would overwrite the input; choose another ' \
                '-o folder or a --suffix'
            continue
        seen[name] = path
        start = time.perf_counter()
        try:
            engine.process(path, args.output)
            done[path] = time.perf_counter() - start
        except KeyboardInterrupt:
            interrupted = True
            skipped[path] = 'interrupted'
            break
        except OptionError:
            raise  # a bad option stops the run (the command's one line), it is no problem of this file
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
