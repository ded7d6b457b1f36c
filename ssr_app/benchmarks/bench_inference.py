"""Inference cost per image vs input size and tile size (random weights; timing and memory only).

    python scripts/benchmarks/bench_inference.py                       # CPU: SVKR-only and SSR, tiny models
    python scripts/benchmarks/bench_inference.py --mode svkr --sizes 128 256 512 --tiles 0 128
    python scripts/benchmarks/bench_inference.py --gpu                 # + the GPU section when CUDA is there

Each measurement runs in a fresh child process (CPU peak memory is the process's peak RSS, reset through
/proc/self/clear_refs on Linux before the measured run): it builds the model, warms up on a tiny input,
then super-resolves one random LR image of the given size with the given tile (0 = untiled) through ``SSRPipeline`` (the code behind
scripts/inference_ssr.py), writing into an H×W×3 float32 output image as the CLI does. Reported:
seconds, working memory (peak RSS minus the RSS after warm-up with the output image already allocated
and touched, i.e. everything but the result itself; on GPU ``max_memory_allocated``), and both as ratios
to the first row of the same run. The baseline is one window run untiled, so the ratios read "memory of
an N² input vs one tile": for the SVKR an input of the first tile size plus the context margin on each
side (``SVKR_CONTEXT``), the size at which an inner tile of a large image runs; for SSR an input of the
tile size (its UNet and VAE-decoder windows, which dominate, are exactly the tile). The output image's
size is printed beside.

GPU section (``--gpu``, only when ``torch.cuda.is_available()``): SSR with Stable Diffusion 2.1-base
sizes (random weights, config of scripts/benchmarks/bench_ssr_sampling.py) for a 768×768 output at 50
DDIM steps in fp16 and bf16 (the paper's anchor is 32 s), the few-step mode (DPM-Solver++, 4 steps), and
the bare UNet loop at the same steps for the SSR/bare ratio; plus tiled SVKR peak memory vs input size.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from ssr_app.benchmarks.process_memory import child_env, peak_rss_kb, reset_peak_rss, rss_kb
from ssr_utils.errors import exit_on_option_error
from ssr_utils.install import project_root

ROOT = project_root()




def _malloc_mb():
    """glibc heap statistics in MB: ``in_use`` (malloc'ed and not freed, all arenas and mmapped blocks) and
    ``kept_free`` (freed into the arenas and kept by glibc, resident where it was touched); None off glibc."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                                      'fsmblks', 'uordblks', 'fordblks', 'keepcost')]

    try:
        fn = ctypes.CDLL('libc.so.6').mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2
    m = fn()
    return dict(in_use=(m.uordblks + m.hblkhd) / 2**20, kept_free=m.fordblks / 2**20)


class SVKRTrace:
    """``--trace``: where the working memory of tiled SVKR goes. Hooks on the SVKR and its depth, kernel and
    SR networks sample the RSS, the peak RSS since the previous sample (VmHWM, reset at every sample) and
    glibc's heap statistics, so every peak is attributed to the step that made it: depth estimation,
    kernel estimation (DKENet), the γ mixing of kernel maps, NBSR, and blending (from the end of one
    window to the start of the next: adding the SR window to the output, handing rows on). glibc keeps
    freed heap memory resident until it is trimmed, so the RSS rarely falls within a window: each step's
    growth (its peak minus the RSS at its start) says what the step itself needs. "held by the glibc heap"
    counts freed heap memory whether or not it is still resident (trimmed pages are not)."""

    # the step an interval between two samples belongs to, by the sample that ends it
    STEPS = {'depth<': 'depth estimation', 'depth>': 'depth estimation', 'kernel<': 'kernel estimation',
             'kernel>': 'kernel estimation', 'sr<': 'kernel mixing', 'sr>': 'NBSR', 'svkr>': 'NBSR',
             'svkr<': 'blending', 'end': 'blending'}

    def __init__(self, svkr):
        self.samples = []
        self.base = None
        for name, mod in (('svkr', svkr), ('depth', svkr.depth_net), ('kernel', svkr.kernel_net), ('sr', svkr.sr_net)):
            if mod is not None:
                mod.register_forward_pre_hook(lambda m, i, name=name: self.sample(name + '<'))
                mod.register_forward_hook(lambda m, i, o, name=name: self.sample(name + '>'))

    def start(self, base_kb):
        self.samples.clear()
        self.base = dict(rss=base_kb / 1024, **(_malloc_mb() or {}))

    def sample(self, point):
        if self.base is None:
            return
        peak, rss = peak_rss_kb() / 1024, rss_kb() / 1024
        reset_peak_rss()
        self.samples.append(dict(point=point, rss=rss - self.base['rss'], peak=peak - self.base['rss'],
                                 **{k: v - self.base.get(k, 0) for k, v in (_malloc_mb() or {}).items()}))

    def report(self):
        import statistics
        windows = []  # per window: the sample at its start and (step, RSS at the step's start, peak during it)
        prev = None
        for smp in self.samples:
            step = self.STEPS.get(smp['point'])
            if windows and prev is not None and step:  # the interval prev -> smp; one ending at a window's
                windows[-1]['steps'].append((step, prev['rss'], smp['peak']))  # start belongs to the one before
            if smp['point'] == 'svkr<':
                windows.append(dict(start=smp, steps=[]))
            prev = smp
        inner = windows[1:] or windows  # the first window starts from the warm-up's heap

        def stat(values):
            return f'{statistics.median(values):7.1f} / {max(values):7.1f}' if values else '      - /       -'

        lines = [f'trace: {len(windows)} windows; MB above the RSS before the call (output image allocated and '
                 'touched); median / max over windows']
        lines.append(f'  RSS at a window start            {stat([w["start"]["rss"] for w in inner])}')
        if 'in_use' in inner[0]['start']:
            lines.append(f'    malloc in use (live tensors)   {stat([w["start"]["in_use"] for w in inner])}')
            lines.append(f'    freed, held by the glibc heap  {stat([w["start"]["kept_free"] for w in inner])}')
        lines.append(f'  {"step":31}{"peak RSS in it":>17}   {"its growth (peak - RSS at its start)":>36}')
        for step in dict.fromkeys(self.STEPS.values()):
            peaks = [max(p for s, _, p in w['steps'] if s == step) for w in windows if any(s == step for s, _, _ in w['steps'])]
            growth = [max(p - r for s, r, p in w['steps'] if s == step) for w in windows
                      if any(s == step for s, _, _ in w['steps'])]
            lines.append(f'  {step:31}{stat(peaks)}   {stat(growth):>36}')
        lines.append(f'  window peak - RSS at its start   '
                     f'{stat([max(p for _, _, p in w["steps"]) - w["start"]["rss"] for w in inner if w["steps"]])}')
        return lines


def _svkr_opt(size='demo'):
    if size == 'full':  # the architecture of options/train_svkr.yml
        return dict(type='SVKR', num_iter=3, gamma=0.9, use_depth=True, scale=4, kernel_size=21,
                    sr_opt=dict(type='NBSR', num_feat=64, num_block=6, num_grow_ch=32, num_cond=64))
    return dict(type='SVKR', num_iter=3, gamma=0.9, use_depth=True, scale=4, kernel_size=21,
                depth_opt=dict(type='MonocularDepth', backend='prior'),
                kernel_opt=dict(type='DKENet', num_feat=[32, 64], num_depth_feat=[16, 32], reduction=2),
                sr_opt=dict(type='NBSR', num_feat=32, num_block=3, num_grow_ch=16, num_cond=32))


def build(mode, device, config='tiny', precision='fp32', sampler='ddim'):
    from ssr_utils import compat
    compat.apply()
    import torch
    import ssr_arch  # noqa: F401
    from basicsr.archs import build_network
    torch.manual_seed(0)
    if mode == 'svkr':
        return build_network(_svkr_opt('full' if config == 'sd21' else 'demo')).to(device).eval()
    from ssr_arch.ssr_unet_arch import tiny_config
    if config == 'sd21':
        from ssr_app.benchmarks.bench_ssr_sampling import sd21_config
        net_cfg = sd21_config()
    else:
        net_cfg = tiny_config()
    from ssr_pipelines import SSRPipeline
    from ssr_pipelines.builder import scheduler_from_options
    unet = build_network(dict(type='SSRUNet', **net_cfg))
    svkr = build_network(_svkr_opt('full' if config == 'sd21' else 'demo'))
    pipe = SSRPipeline(unet, scheduler_from_options(), svkr, scale=4, sampler=sampler, num_inference_steps=4, seed=0,
                       color_fix='wavelet', dtype=precision).to(device)
    with torch.no_grad():  # random, non-zero AMF outputs: a trained model's cost
        for amf in pipe.unet.amf.values():
            for mlp in (amf.mlp_alpha, amf.mlp_beta):
                mlp[-1].weight.normal_(0, 0.01)
    return pipe


def apply_switch(pipe, switch):
    """One of SSRPipeline's memory switches (``--switch``)."""
    import torch
    if switch == 'vae_tiling':
        pipe.enable_vae_tiling(tile_size=128)
    elif switch == 'attention_slicing':
        pipe.enable_attention_slicing()
    elif switch == 'bf16_weights':
        pipe.to(torch.bfloat16)
    elif switch == 'fp16_weights':
        pipe.to(torch.float16)
    elif switch == 'offload':
        pipe.enable_model_cpu_offload(device=pipe.device)
    elif switch != 'none':
        raise ValueError(f'unknown switch {switch}')
    return pipe


def child(args):
    import torch
    device = torch.device(args.device)
    obj = build(args.mode, device, args.config, args.precision, args.sampler)
    if args.mode == 'ssr':
        apply_switch(obj, args.switch)
    from ssr_pipelines.pipeline_ssr import svkr_tiled
    trace = SVKRTrace(obj) if args.trace and args.mode == 'svkr' and device.type == 'cpu' else None

    import numpy as np

    def output_view(lr):  # the CLI's output image (ssr_app.inference.Inferencer.process)
        s = 4
        arr = np.zeros((lr.shape[-2] * s, lr.shape[-1] * s, 3), dtype=np.float32)
        arr.fill(0.5)  # touched: resident before the baseline RSS is read
        return arr, torch.from_numpy(arr).permute(2, 0, 1)[None]

    def run(lr, out):
        if args.mode == 'svkr':
            return svkr_tiled(obj, lr.to(device), args.tile, args.overlap, out_device='cpu', into={'sr': out})['sr']
        return obj(lr, num_inference_steps=args.steps, seed=0, tile=args.tile or None, tile_overlap=args.overlap,
                   cond_cache=args.cond_cache, vae_tiling=args.vae_tiling, out=out).images

    with torch.no_grad():
        small = torch.rand(1, 3, 16, 16)
        run(small, output_view(small)[1])  # warm-up
        lr = torch.rand(1, 3, args.size, args.size)
        arr, view = output_view(lr)
        if device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reset_peak_rss()
        base = rss_kb()
        if trace is not None:
            trace.start(base)
        start = time.perf_counter()
        out = run(lr, view)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        sec = time.perf_counter() - start
        if trace is not None:
            trace.sample('end')
    if out.data_ptr() != view.data_ptr():
        raise RuntimeError('the result was not written into the output image')
    peak_kb = peak_rss_kb()
    if trace is not None:  # the trace resets the peak at every sample
        peak_kb = max(peak_kb, base + 1024 * max(smp['peak'] for smp in trace.samples))
        for line in trace.report():
            print('TRACE ' + line, flush=True)
    res = dict(mode=args.mode, size=args.size, tile=args.tile, seconds=sec, work_mb=max(0, peak_kb - base) / 1024,
               canvas_mb=arr.nbytes / 2**20)
    if device.type == 'cuda':
        res['gpu_peak_mb'] = torch.cuda.max_memory_allocated() / 2**20
    print('RESULT ' + json.dumps(res), flush=True)


def measure(args, mode, size, tile, **extra):
    cmd = [sys.executable, '-m', 'ssr_app.benchmarks.bench_inference', '--child', '--mode', mode, '--size', str(size),
           '--tile', str(tile), '--overlap', str(args.overlap), '--steps', str(extra.get('steps', args.steps)),
           '--device', args.device,
           '--config', extra.get('config', getattr(args, 'config', 'tiny')),
           '--precision', extra.get('precision', getattr(args, 'precision', 'fp32')),
           '--sampler', extra.get('sampler', getattr(args, 'sampler', 'ddim')), '--cond-cache', args.cond_cache,
           '--vae-tiling', extra.get('vae_tiling', getattr(args, 'vae_tiling', 'windows')),
           '--switch', extra.get('switch', 'none')] + (['--trace'] if args.trace else [])
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=child_env(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith('TRACE '):
            print(line[6:], flush=True)
        if line.startswith('RESULT '):
            return json.loads(line[7:])
    raise RuntimeError(f'benchmark child failed ({" ".join(cmd)}):\n{proc.stdout[-2000:]}')


def header(mem_key):
    print(f'{"mode":5} {"LR size":>8} {"tile":>5} {"s/image":>9} {"x base":>7} {mem_key + " MB":>14} {"x base":>7} '
          f'{"output MB":>10}', flush=True)


def row(r, base, mem_key):
    print(f'{r["mode"]:5} {r["size"]:>8} {r["tile"]:>5} {r["seconds"]:9.2f} {r["seconds"] / base["seconds"]:7.2f} '
          f'{r[mem_key]:14.1f} {r[mem_key] / max(base[mem_key], 1e-9):7.2f} {r["canvas_mb"]:10.1f}', flush=True)


SWITCHES = ('none', 'vae_tiling', 'attention_slicing', 'bf16_weights', 'fp16_weights', 'offload')


def cli_refusal(flags):
    """What ``inference_ssr`` answers to ``flags`` on this machine when it refuses them (its one line), else None:
    the argument checks run before any model is loaded, so a dummy model path and a 4x4 image are enough."""
    import contextlib
    import io
    import tempfile
    import numpy as np
    from ssr_app.cli import build_inference_parser
    from ssr_app.inference import run
    from ssr_utils.image_io import write_image
    with tempfile.TemporaryDirectory() as folder:
        src = osp.join(folder, 'x.png')
        write_image(src, np.zeros((4, 4, 3), np.uint8))
        args = build_inference_parser().parse_args(['--model_path', folder, '-i', src, '-o', osp.join(folder, 'o'),
                                                    '--device', 'cpu'] + flags)
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            status = run(args)
    return text.getvalue().strip().splitlines()[-1] if status == 2 else None


def offload_refusal():
    """``SSRPipeline.enable_model_cpu_offload()``'s answer on a machine without CUDA, else None."""
    import torch
    pipe = build('ssr', torch.device('cpu'))
    try:
        pipe.enable_model_cpu_offload()
    except RuntimeError as err:
        return str(err)
    return None


def switches(args):
    """``--switches``: one SSR image (tiny config) with each memory switch, every row in a fresh child process,
    ratios to the first row (all switches off: the untiled call). Rows: untiled; tiled with the window-by-window
    VAE (the old default); with the layer-wise VAE (the default now); + attention slicing; + bfloat16 weights;
    + float16 weights and + model offload where the device runs them (CUDA): on the CPU these two rows quote
    what users get instead (``--fp16`` and ``--offload`` are refused there, and so is
    ``enable_model_cpu_offload()`` without a CUDA device)."""
    size, tile = args.sizes[0], args.tiles[0]
    cuda = args.device.startswith('cuda')
    print(f'== SSR switches: device {args.device}, tiny config, LR {size}² (output {4 * size}²), tile {tile} LR, '
          f'overlap {args.overlap}, {args.steps} {args.sampler} steps; baseline = first row', flush=True)
    layerwise = dict(tile=tile, vae_tiling='layerwise')
    rows = [('all switches off (untiled)', dict(tile=0)),
            ('tile, VAE windows (the old default)', dict(tile=tile, vae_tiling='windows')),
            ('tile, VAE layerwise (the default with a tile)', layerwise),
            ('+ attention slicing', dict(layerwise, switch='attention_slicing')),
            ('+ bfloat16 weights', dict(layerwise, switch='bf16_weights')),
            ('+ float16 weights', dict(layerwise, switch='fp16_weights')),
            ('+ model offload', dict(layerwise, switch='offload'))]
    refused = {} if cuda else {
        '+ float16 weights': f'not run on the CPU; `--fp16` answers: {cli_refusal(["--fp16"])}',
        '+ model offload': f'CUDA only; `enable_model_cpu_offload()` raises: {offload_refusal()}; `--offload` '
                           f'answers: {cli_refusal(["--offload"])}'}
    mem_key = 'gpu_peak_mb' if cuda else 'work_mb'
    print(f'| switch | s / image | x base | {mem_key} | x base |\n| --- | --- | --- | --- | --- |', flush=True)
    base = None
    for name, extra in rows:
        if name in refused:
            print(f'| {name} | {refused[name]} | | | |', flush=True)
            continue
        r = measure(args, 'ssr', size, extra.pop('tile'), **extra)
        base = base or r
        print(f'| {name} | {r["seconds"]:.1f} | {r["seconds"] / base["seconds"]:.2f} | {r[mem_key]:.1f} | '
              f'{r[mem_key] / max(base[mem_key], 1e-9):.2f} |', flush=True)


def throughput(args):
    """``--throughput``: in this process, the tiny-config pipeline on ``--batch`` random LR images of
    ``--sizes[0]``² (untiled): one call per image vs one call for all; then ``--samples`` samples of one image:
    one call per sample (the CLI before: the SVKR reruns every time) vs one call with
    ``num_images_per_image`` (the SVKR once). SVKR time from hooks on its forward."""
    import torch
    device = torch.device(args.device)
    pipe = build('ssr', device, args.config, args.precision, args.sampler)
    svkr_seconds = []
    pipe.svkr.register_forward_pre_hook(lambda *_: svkr_seconds.append(-time.perf_counter()))
    pipe.svkr.register_forward_hook(lambda *_: svkr_seconds.append(time.perf_counter()))
    size, n = args.sizes[0], args.batch
    lr = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    def timed(fn):
        svkr_seconds.clear()
        start = time.perf_counter()
        with torch.no_grad():
            fn()
        return time.perf_counter() - start, sum(svkr_seconds)

    timed(lambda: pipe(lr[:1, :, :16, :16], num_inference_steps=1))  # warm-up
    print(f'== SSR throughput: device {args.device}, tiny config, LR {size}² (output {4 * size}²), untiled, '
          f'{args.steps} {args.sampler} steps, torch threads {torch.get_num_threads()}', flush=True)
    one, _ = timed(lambda: [pipe(lr[i:i + 1], num_inference_steps=args.steps, seed=i) for i in range(n)])
    batch, _ = timed(lambda: pipe(lr, num_inference_steps=args.steps))
    print(f'| images | calls | s | images/s | x batch 1 |\n| --- | --- | --- | --- | --- |\n'
          f'| {n} | {n} (batch 1) | {one:.1f} | {n / one:.3f} | 1.00 |\n'
          f'| {n} | 1 (batch {n}) | {batch:.1f} | {n / batch:.3f} | {one / batch:.2f} |', flush=True)
    k = args.samples
    before, svkr_before = timed(lambda: [pipe(lr[:1], num_inference_steps=args.steps, seed=j) for j in range(k)])
    after, svkr_after = timed(lambda: pipe(lr[:1], num_inference_steps=args.steps, seed=0, num_images_per_image=k))
    print(f'\n| {k} samples of one image | s | SVKR s | SVKR runs |\n| --- | --- | --- | --- |\n'
          f'| one call per sample (before) | {before:.1f} | {svkr_before:.2f} | {k} |\n'
          f'| one call, num_images_per_image={k} (now) | {after:.1f} | {svkr_after:.2f} | 1 |\n'
          f'ratios: total {before / after:.2f}x, SVKR {svkr_before / max(svkr_after, 1e-9):.2f}x', flush=True)


def whole_vae_call(pipe, lr, tile, overlap, steps, seed=0):
    """``pipe(lr, tile=tile, ...)`` with the UNet on the same latent windows but the whole, untiled VAE for the
    encode and the decode: the stages run one by one (what ``--vae-psnr`` compares the tiled VAEs against)."""
    import torch
    from ssr_pipelines.pipeline_ssr import SamplingWindows, WindowVAETiling, pad_lr
    net = pipe.unet
    run = pipe.check_inputs(steps, tile=tile, tile_overlap=overlap, vae_tiling='windows', seed=seed)
    whole = SamplingWindows.plan(None, overlap, pipe.scale, net.vae_scale_factor, net.size_multiple)
    lr = lr.to(pipe.device)
    maps = pipe.prepare_conditions(lr, tile=tile, tile_overlap=overlap)
    lq, _ = pad_lr(lr, pipe.scale, net.size_multiple)
    lr_latent = pipe.encode_lr(lq, whole, WindowVAETiling(), svkr_sr=maps.get('sr'))
    conditions = pipe.condition_windows(lr_latent, maps, run.windows, run.cond_cache)
    scheduler, timesteps = pipe.prepare_timesteps(run.num_inference_steps, run.strength, run.sampler)
    latents = pipe.prepare_latents(lr_latent.shape, scheduler, timesteps, pipe.prepare_generators(1, 1, None, seed))
    latents = pipe.denoise(latents, scheduler, timesteps, conditions.predict)
    out = torch.empty((1, 3, lr.shape[-2] * pipe.scale, lr.shape[-1] * pipe.scale))
    return pipe.decode(latents, lq, whole, run.color_fix, out, WindowVAETiling())


def vae_psnr(args):
    """``--vae-psnr``: in this process, a tiled SSR call (``--tiles[0]``) of one random LR image of
    ``--sizes[0]``² with the layer-wise VAE (the default) and with the window-by-window VAE, each against the
    same call with the whole VAE (``whole_vae_call``: the UNet on the same windows), as PSNR."""
    import math
    import torch
    pipe = build('ssr', torch.device(args.device), args.config, args.precision, args.sampler)
    size, tile = args.sizes[0], args.tiles[0]
    lr = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    lr = torch.nn.functional.interpolate(lr[:, :, ::8, ::8], size=(size, size), mode='bicubic').clamp(0, 1)
    with torch.no_grad():
        ref = whole_vae_call(pipe, lr, tile, args.overlap, args.steps)
        rows = [(name, pipe(lr, num_inference_steps=args.steps, seed=0, tile=tile, tile_overlap=args.overlap,
                            vae_tiling=name).images) for name in ('layerwise', 'windows')]
    print(f'== SSR tiled VAE vs the whole VAE: tiny config, LR {size}² (output {4 * size}²), tile {tile} LR, '
          f'overlap {args.overlap}, {args.steps} {args.sampler} steps; the UNet on the same windows in every row',
          flush=True)
    print('| VAE of the tiled call | PSNR vs the whole VAE (dB) | max abs diff |\n| --- | --- | --- |')
    for name, img in rows:
        mse = (img - ref).pow(2).mean().item()
        psnr = float('inf') if mse == 0 else 10 * math.log10(1 / mse)
        print(f'| {name} | {psnr:.1f} | {(img - ref).abs().max().item():.2e} |', flush=True)


@exit_on_option_error()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--mode', choices=['svkr', 'ssr', 'both'], default='both')
    p.add_argument('--sizes', type=int, nargs='+', default=[32, 64, 128], help='LR input sizes (square)')
    p.add_argument('--tiles', type=int, nargs='+', default=[32], help='tile sizes in LR pixels; 0 = untiled')
    p.add_argument('--overlap', type=int, default=8)
    p.add_argument('--steps', type=int, default=4)
    p.add_argument('--device', default='cpu')
    p.add_argument('--gpu', action='store_true', help='run the GPU section (when CUDA is available)')
    p.add_argument('--no-window-baseline', dest='window_baseline', action='store_false',
                   help='do not start with the baseline row: one window (first tile + 2 × context) run untiled')
    p.add_argument('--trace', action='store_true',
                   help='SVKR on CPU: where the working memory goes, step by step (bench_inference.SVKRTrace)')
    p.add_argument('--cond-cache', default='auto', choices=['auto', 'device', 'cpu', 'none'],
                   help='where tiled SSR keeps per-window condition features (SSRPipeline, cond_cache=)')
    # child-process arguments
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--size', type=int, help=argparse.SUPPRESS)
    p.add_argument('--tile', type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument('--config', default='tiny', choices=['tiny', 'sd21'],
                   help='tiny: tiny_config() UNet/VAE + demo-size SVKR; sd21: Stable Diffusion 2.1-base sizes '
                   '(bench_ssr_sampling.sd21_config) + train_svkr.yml-size SVKR')
    p.add_argument('--precision', default='fp32', choices=['fp32', 'fp16', 'bf16'])
    p.add_argument('--sampler', default='ddim', choices=['ddim', 'dpmsolver++'])
    p.add_argument('--vae-tiling', default='windows', choices=['windows', 'layerwise'],
                   help='SSR: how tiles cut the VAE (SSRPipeline, vae_tiling=)')
    p.add_argument('--switch', default='none', choices=SWITCHES, help=argparse.SUPPRESS)
    p.add_argument('--switches', action='store_true',
                   help='SSR: working memory and time with each of SSRPipeline\'s memory switches at --sizes[0] and '
                   '--tiles[0] (one child process per row; ratios to the first row)')
    p.add_argument('--throughput', action='store_true',
                   help='SSR in one process: images/s at batch 1 vs --batch, and the SVKR time per image for '
                   '--samples samples (one call per sample, as the CLI did, vs one call)')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--samples', type=int, default=4)
    p.add_argument('--vae-psnr', dest='vae_psnr', action='store_true',
                   help='SSR: a tiled call with the layer-wise and with the window VAE against the whole VAE (PSNR)')
    args = p.parse_args(argv)
    if args.vae_psnr:
        return vae_psnr(args)
    if args.child:
        return child(args)
    if args.switches:
        return switches(args)
    if args.throughput:
        return throughput(args)
    import torch
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs visible, OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS")}')
    modes = ['svkr', 'ssr'] if args.mode == 'both' else [args.mode]
    mem_key = 'gpu_peak_mb' if args.device.startswith('cuda') else 'work_mb'
    for mode in modes:
        print(f'\n== {mode}: device {args.device}, {args.steps if mode == "ssr" else "-"} steps, overlap {args.overlap}; '
              f'baseline = first row')
        header(mem_key)
        rows = []
        if args.window_baseline and args.tiles[0] > 0:
            # one tile as it runs inside a large image. SVKR: the tile plus its context margin on every
            # side. SSR: the tile itself (the UNet and decoder windows, which dominate, are exactly the tile;
            # a larger untiled input would pay the UNet's self-attention on a larger latent)
            from ssr_pipelines.pipeline_ssr import SVKR_CONTEXT
            size = args.tiles[0] + 2 * SVKR_CONTEXT if mode == 'svkr' else args.tiles[0]
            rows.append(measure(args, mode, size, 0))
            row(rows[-1], rows[0], mem_key)
        for tile in args.tiles:
            for size in args.sizes:
                rows.append(measure(args, mode, size, tile))
                row(rows[-1], rows[0], mem_key)

    if args.gpu:
        if not torch.cuda.is_available():
            print('\nGPU section skipped: CUDA is not available')
            return
        args.device = 'cuda'
        name = torch.cuda.get_device_name(0)
        print(f'\n== GPU: {name}, SD 2.1-base sizes (random weights), 768x768 output (LR 192), untiled')
        for precision in ('fp16', 'bf16'):
            r = measure(args, 'ssr', 192, 0, config='sd21', precision=precision, steps=50, sampler='ddim')
            print(f'SSR {precision} 50 DDIM steps: {r["seconds"]:.2f} s/image (paper: 32 s), peak {r["gpu_peak_mb"]:.0f} MB')
        r = measure(args, 'ssr', 192, 0, config='sd21', precision='bf16', steps=4, sampler='dpmsolver++')
        print(f'SSR bf16 few-step (DPM-Solver++ 4 steps): {r["seconds"]:.2f} s/image')
        print('SSR vs bare UNet at equal steps: scripts/benchmarks/bench_ssr_sampling.py --config sd21 --device cuda '
              '--dtype bf16 --size 768 --with-svkr')
        print('\nTiled SVKR (train_svkr.yml size), tile 256: peak GPU memory vs input size (output canvas on the host)')
        header('gpu_peak_mb')
        rows = []
        from ssr_pipelines.pipeline_ssr import SVKR_CONTEXT
        for size, tile in ((256 + 2 * SVKR_CONTEXT, 0), (512, 256), (1024, 256), (2048, 256)):
            rows.append(measure(args, 'svkr', size, tile, config='sd21'))
            row(rows[-1], rows[0], 'gpu_peak_mb')
        print('\nTiled SSR (SD 2.1-base sizes, bf16, 4 DPM-Solver++ steps), tile 96 LR: peak GPU memory vs input size')
        header('gpu_peak_mb')
        rows = []
        for size, tile in ((96, 0), (512, 96), (2048, 96)):
            rows.append(measure(args, 'ssr', size, tile, config='sd21', precision='bf16', steps=4,
                                sampler='dpmsolver++'))
            row(rows[-1], rows[0], 'gpu_peak_mb')


if __name__ == '__main__':
    main()
