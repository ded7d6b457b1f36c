"""The engine behind ``scripts/inference_ssr.py``: load an ``SSRPipeline`` from a model folder
(``--model_path``), an option file or an experiment folder (``-opt``) through ``ssr_pipelines.builder``,
super-resolve images (tiled when asked; ``--batch_size`` images of one size per pipeline call), write
``<out>/<stem>.png``, report a summary.

Two paths, both ``SSRPipeline`` calls: ``svkr_only`` (the SVKR's non-blind result Iᵀ, fast and
deterministic) and SSR diffusion (``pipe(images, ...)``, tiled with ``--tile``; a whole image is its
one-window case; ``--num_samples`` samples of an image share its conditions, one SVKR run per image).
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
from ssr_pipelines.pipeline_ssr import VAE_TILINGS, check_sampler, check_strength, check_vae_residual  # noqa: E402
from ssr_utils.amp import amp_dtype  # noqa: E402
from ssr_utils.errors import OptionError  # noqa: E402
from ssr_utils.image_io import image_to_tensor, list_images, read_image, upscale_alpha, write_image  # noqa: E402

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
    """The CLI's precision, that of the weights: ``--fp16`` / ``--bf16`` cast the networks (``float32_modules``
    stay float32), the default on CUDA is fp16 unless ``--fp32`` (Real-ESRGAN's default), float32 elsewhere.
    ``--fp16`` on the CPU stops with the flag named: CPUs without float16 arithmetic emulate it (measured here:
    a convolution 200× slower than in float32); ``--bf16`` is the CPU's half precision."""
    if fp16 and device.type == 'cpu':
        raise OptionError('--fp16', True, 'float16 runs about 200 times slower than float32 on a CPU without float16 '
                          'arithmetic; use --bf16 for half-precision weights on the CPU (or leave it out)')
    if fp32:
        return 'fp32'
    return 'fp16' if fp16 else 'bf16' if bf16 else ('fp16' if device.type == 'cuda' else 'fp32')


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


def image_size_hint(path):
    """``(height, width)`` of an image file as it will be read (EXIF orientation applied), from its header
    (Pillow, no decoding), or None where Pillow cannot tell: used to group equal sizes into batches."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # unreadable here: read_image reports it when the file's turn comes
        return None
    return (w, h) if turned else (h, w)


def batches_by_size(paths, batch_size):
    """``paths`` in groups of at most ``batch_size`` whose images (probably) have one size: sorted by the size of
    the header (stable, files without one last, one per group), then cut; the groups are checked again after
    reading. ``batch_size`` 1 keeps the order of ``paths``."""
    if batch_size <= 1:
        return [[p] for p in paths]
    sizes = {p: image_size_hint(p) for p in paths}
    known = sorted((p for p in paths if sizes[p] is not None), key=lambda p: sizes[p])
    groups, current = [], []
    for path in known:
        if current and (sizes[current[0]] != sizes[path] or len(current) == batch_size):
            groups.append(current)
            current = []
        current.append(path)
    if current:
        groups.append(current)
    return groups + [[p] for p in paths if sizes[p] is None]


class Inferencer:
    """One loaded pipeline; ``process_batch(paths, out_dir)`` super-resolves images of one size in one pipeline
    call and writes the outputs (``process(path, out_dir)``: one image)."""

    def __init__(self, pipeline, svkr_only=False, precision='fp32', tile=None, tile_overlap=None, steps=None, seed=None,
                 color_fix_method=None, scale=None, save_maps=False, progress=True, sampler=None, strength=None,
                 num_samples=1, ext='png', suffix='', batch_size=1, vae_tiling=None, vae_residual=None):
        tile, tile_overlap = check_tiling(tile, tile_overlap)
        if steps is not None and steps < 1:
            raise OptionError('--steps', steps, 'must be >= 1')
        if scale is not None and scale <= 0:
            raise OptionError('--outscale', scale, 'must be > 0')
        if num_samples < 1:
            raise OptionError('--num_samples', num_samples, 'must be >= 1')
        if batch_size < 1:
            raise OptionError('--batch_size', batch_size, 'must be >= 1')
        if svkr_only and num_samples > 1:
            raise OptionError('--num_samples', num_samples, 'the SVKR result (--svkr-only) is deterministic: one '
                              'sample')
        if svkr_only:
            for flag, value in (('--sampler', sampler), ('--strength', strength), ('--vae-tiling', vae_tiling),
                                ('--vae-residual', vae_residual)):
                if value is not None:
                    raise OptionError(flag, value, 'has no effect with --svkr-only')
        if vae_tiling is not None and vae_tiling not in VAE_TILINGS:
            raise OptionError('--vae-tiling', vae_tiling, f'expected one of {", ".join(VAE_TILINGS)}')
        if vae_tiling == 'windows' and not tile:
            raise OptionError('--vae-tiling', vae_tiling, 'cuts the VAE along the windows of --tile; give --tile '
                              '(or --vae-tiling layerwise, which tiles the VAE alone)')
        if sampler is not None:
            check_sampler(sampler, '--sampler')
        if strength is not None:
            strength = check_strength(strength, '--strength')
        if vae_residual is not None:
            check_vae_residual(vae_residual, '--vae-residual')
        self.vae_residual = vae_residual
        if ext not in OUTPUT_EXTS:
            raise OptionError('--ext', ext, f'expected one of {", ".join(OUTPUT_EXTS)}')
        if suffix and (os.sep in suffix or (os.altsep and os.altsep in suffix)):
            raise OptionError('--suffix', suffix, 'must not contain a path separator')
        self.sampler, self.strength, self.num_samples, self.ext, self.suffix = \
            sampler, strength, int(num_samples), ext, suffix
        self.batch_size = int(batch_size)
        self.pipeline = pipeline
        self.svkr_only, self.precision = svkr_only, precision
        self.tile, self.tile_overlap = tile, tile_overlap
        # with --tile the seam-free VAE unless asked otherwise; without, --vae-tiling layerwise tiles the VAE alone
        self.vae_tiling = (vae_tiling or 'layerwise') if tile else None
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
            if vae_tiling == 'layerwise' and not tile:
                pipeline.enable_vae_tiling()
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
    def super_resolve(self, lr, out=None):
        """B×3×h×w RGB [0, 1] (CPU) -> ``SSRPipelineOutput`` with the results on the CPU: ``--num_samples`` per image
        (sample k of every image from seed + k), the samples of each image one after another. ``out``: optional CPU
        float32 tensor (B·n)×3×(h·s)×(w·s) (e.g. a view of the output images) the results are written into."""
        if self.svkr_only:
            return self.pipeline.svkr_only(lr, tile=self.tile, tile_overlap=self.tile_overlap,
                                           return_maps=self.save_maps, progress=self.progress, out=out,
                                           out_device='cpu', output_type='pt')
        return self.pipeline(lr, num_inference_steps=self.steps, seed=self.seeds()[0],
                             num_images_per_image=self.num_samples, strength=self.strength, sampler=self.sampler,
                             tile=self.tile, tile_overlap=self.tile_overlap, vae_tiling=self.vae_tiling,
                             color_fix=self.color_fix, return_maps=self.save_maps, progress=self.progress, out=out,
                             out_device='cpu', output_type='pt', vae_residual=self.vae_residual)

    def process(self, path, out_dir):
        """Super-resolve one file; returns the list of written files; raises on any problem."""
        return self.process_batch([(path, read_image(path))], out_dir)[path]

    def process_batch(self, items, out_dir):
        """``items``: ``[(path, LoadedImage)]`` of one size, super-resolved in one pipeline call. Returns
        ``{path: [written files]}``; raises on any problem (the caller retries the images one by one)."""
        import cv2
        from ssr_utils.visualize import colorize, depth_image
        h, w = items[0][1].shape
        if any(img.shape != (h, w) for _, img in items):
            raise ValueError('process_batch: the images of a batch must have one size')
        lr = torch.cat([image_to_tensor(img.rgb) for _, img in items])
        n = 1 if self.svkr_only else self.num_samples
        s = self.net_scale
        # the results are written straight into the output images (N×H×W×3), so no second HR-size copy
        results = np.empty((len(items) * n, h * s, w * s, 3), dtype=np.float32)
        view = torch.from_numpy(results).permute(0, 3, 1, 2)
        out = self.super_resolve(lr, out=view)
        if out.images.data_ptr() != view.data_ptr():
            view.copy_(out.images)
        depth, kvar = out.depth, out.kernel_variance
        del out
        size = (int(round(h * self.out_scale)), int(round(w * self.out_scale)))
        written = {}
        for i, (path, img) in enumerate(items):
            alpha = upscale_alpha(img.alpha, size) if img.alpha is not None else None
            ext = output_extension(self.ext, path, alpha is not None)
            name = self.output_stem(path)
            files = written[path] = []
            for k, seed in enumerate(self.seeds() if n > 1 else [None]):
                sr = results[i * n + k]
                for r in range(0, sr.shape[0], 512):
                    rows = sr[r:r + 512]
                    if not np.isfinite(rows).all():
                        raise RuntimeError(f'{path}: the network produced non-finite values')
                    np.clip(rows, 0, 1, out=rows)
                if tuple(sr.shape[:2]) != size:
                    interp = cv2.INTER_AREA if size[0] < sr.shape[0] else cv2.INTER_CUBIC
                    sr = np.clip(cv2.resize(sr, (size[1], size[0]), interpolation=interp), 0, 1)
                target = f'{name}_seed{seed}.{ext}' if n > 1 else f'{name}.{ext}'
                files.append(write_image(osp.join(out_dir, target), sr, alpha, img.bit_depth, img.gray))
            if self.save_maps:  # the maps come from the SVKR: one per image, whatever the samples
                if depth is not None:
                    dimg = depth_image(depth[i:i + 1].cpu(), size=size)
                    files.append(write_image(osp.join(out_dir, f'{name}_depth.png'), dimg[..., ::-1] / 255.0))
                if kvar is not None:
                    kv = F.interpolate(kvar[i:i + 1].float().cpu(), size=size, mode='nearest')[0, 0]
                    files.append(write_image(osp.join(out_dir, f'{name}_kernel_var.png'),
                                             colorize(kv)[..., ::-1] / 255.0))
        return written


def quiet_library_bars():
    """``-q``: also no progress bars from transformers and diffusers (transformers' "Loading weights" bar when a
    depth network loads), through their own switches."""
    import importlib
    for name in ('transformers', 'diffusers'):
        try:
            importlib.import_module(f'{name}.utils.logging').disable_progress_bar()
        except (ImportError, AttributeError):
            pass


def device_line(device, precision, engine, count):
    """The first line of a run: the device the networks run on, the precision of their weights, the switches."""
    name = ''
    if device.type == 'cuda':
        name = f' ({torch.cuda.get_device_name(device)})'
    weights = {'fp32': 'float32', 'fp16': 'float16', 'bf16': 'bfloat16'}[precision]
    switches = []
    pipe = engine.pipeline
    if engine.tile:
        switches.append(f'tile {engine.tile} (overlap {engine.tile_overlap}'
                        + (f', VAE {engine.vae_tiling})' if not engine.svkr_only else ')'))
    elif getattr(pipe, '_vae_tiling', None):
        switches.append('VAE tiled (layerwise)')
    if getattr(pipe, '_offload', None) is not None:
        switches.append('model offload')
    if engine.batch_size > 1:
        switches.append(f'batch {engine.batch_size}')
    return (f'inference_ssr: device {device}{name}, {weights} weights'
            + (f', {", ".join(switches)}' if switches else '') + f'; {count} file(s)')


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
        offload = getattr(args, 'offload', False)
        if offload and device.type == 'cpu':
            raise OptionError('--offload', True, 'moves each network to the GPU for its stage only; the device is the '
                              'CPU, where the networks already are')
        if (offload or getattr(args, 'attention_slicing', False)) and args.svkr_only:
            raise OptionError('--offload' if offload else '--attention-slicing', True, 'has no effect with '
                              '--svkr-only')
        if args.quiet:
            quiet_library_bars()
        torch_dtype = None if precision == 'fp32' else amp_dtype(precision, f'--{precision}')
        # with --offload the networks load into host memory: the GPU never holds them all
        pipeline = load_pipeline(args.opt, args.model_path, 'cpu' if offload else device, torch_dtype=torch_dtype)
        engine = Inferencer(pipeline, args.svkr_only, precision, args.tile, args.tile_overlap, args.steps, args.seed,
                            args.color_fix, args.scale, args.save_maps, progress=not args.quiet,
                            sampler=args.sampler, strength=args.strength, num_samples=args.num_samples,
                            ext=args.ext, suffix=args.suffix, batch_size=getattr(args, 'batch_size', 1),
                            vae_tiling=getattr(args, 'vae_tiling', None),
                            vae_residual=getattr(args, 'vae_residual', None))
        if offload:
            pipeline.enable_model_cpu_offload(device=device)
        if getattr(args, 'attention_slicing', False):
            pipeline.enable_attention_slicing()
    except (OptionError, FileNotFoundError, ValueError, KeyError, RuntimeError) as err:
        msg = str(err) if isinstance(err, OptionError) else f'{type(err).__name__}: {err}'
        print(f'inference_ssr: {msg}', flush=True)
        return 2
    print(device_line(device, precision, engine, len(files)), flush=True)
    os.makedirs(args.output, exist_ok=True)
    done, skipped, seen = {}, {}, {}
    accepted = []
    for path in files:
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
        accepted.append(path)
    interrupted = False
    bar = tqdm(total=len(accepted), desc='images', unit='img', disable=args.quiet)
    group = []
    try:
        for group in batches_by_size(accepted, engine.batch_size):
            items = []
            for path in group:
                try:
                    items.append((path, read_image(path)))
                except Exception as err:  # one bad file never stops the run
                    skipped[path] = _reason(path, err)
                    bar.update(1)
            while items:  # the sizes the headers promised, checked: one batch per size
                batch = [it for it in items if it[1].shape == items[0][1].shape]
                items = [it for it in items if it[1].shape != items[0][1].shape]
                _run_batch(engine, batch, args.output, done, skipped, logger)
                bar.update(len(batch))
    except KeyboardInterrupt:
        interrupted = True
        for path in group:  # the batch in flight; later files are not reached
            if path not in done and path not in skipped:
                skipped[path] = 'interrupted'
    bar.close()
    print_summary(OrderedDict((p, done[p]) for p in files if p in done),
                  OrderedDict((p, skipped[p]) for p in files if p in skipped), args.output)
    if interrupted:
        return 130
    return 1 if skipped else 0


def _reason(path, err):
    if isinstance(err, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return 'out of GPU memory (try a smaller --tile, --batch_size 1, --offload or --fp16)'
    return str(err) if str(err).startswith(path) else f'{type(err).__name__}: {err}'


def _run_batch(engine, batch, out_dir, done, skipped, logger):
    """One pipeline call for ``batch``; where it fails with several images, each is retried alone, so one bad image
    never takes its batch with it. The time of a batch is shared out over its images."""
    start = time.perf_counter()
    try:
        engine.process_batch(batch, out_dir)
    except (KeyboardInterrupt, OptionError):
        raise  # a bad option stops the run (the command's one line), it is no problem of these files
    except Exception as err:
        if len(batch) > 1:
            logger.debug('inference: a batch of %d failed (%s); one by one', len(batch), err)
            for item in batch:
                _run_batch(engine, [item], out_dir, done, skipped, logger)
            return
        path = batch[0][0]
        skipped[path] = _reason(path, err)
        logger.debug('inference: %s failed', path, exc_info=True)
        return
    seconds = (time.perf_counter() - start) / len(batch)
    for path, _ in batch:
        done[path] = seconds


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
