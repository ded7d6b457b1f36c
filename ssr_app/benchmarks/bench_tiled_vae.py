"""Tiled VAE decoding with whole-image GroupNorm statistics vs the untiled decode and vs naive tiles.

    python scripts/benchmarks/bench_tiled_vae.py                      # SD-size VAE, CPU: accuracy at 1024², memory
    python scripts/benchmarks/bench_tiled_vae.py --device cuda        # the same on a GPU (max_memory_allocated)
    python scripts/benchmarks/bench_tiled_vae.py --config tiny --size 256 --mem-sizes 128 256 512   # a quick run
    python scripts/benchmarks/bench_tiled_vae.py --cli-check --model_path models/ssr_demo_x4   # the CLI, 512² input

The VAE is diffusers' ``AutoencoderKL`` at Stable Diffusion's size (block_out_channels 128, 256, 512, 512,
four down and up blocks, 2 layers per block, 32 norm groups, 4 latent channels; ``--config tiny``: a small
one), random weights from a fixed seed. The latent is built from real photographs (scikit-image's
astronaut, coffee, chelsea and rocket as a 2×2 mosaic, area-downsampled to the latent size, channels
R, G, B and luma standardised): regions of different tone, which is what makes per-tile statistics drift.

Accuracy (one process, output ``--size``²): the untiled ``vae.decode``; ``ssr_utils.tiled_vae.tiled_decode``
(tiles of ``--tile`` latent pixels); and the naive way this project decoded tiles until now
(``ssr_utils.tiling.tiled_apply`` over the VAE decoder: windows of ``--tile`` latent pixels overlapping by
``--overlap`` with as much context, each with its own GroupNorm statistics, blended). Reported against the
untiled decode: PSNR (images mapped to [0, 1]), max abs difference, and the tone shift: the largest
difference of a tile's mean colour (per channel, in 8-bit levels) over the tiles' cores; and the time as
a ratio to the untiled decode.

Memory (one fresh child process per row, ``--mem-sizes``): working memory of one decode besides its
input latent and the output image (allocated and touched before the baseline is read): on CPU the peak
RSS minus the RSS before the call (peak reset through /proc/self/clear_refs), on CUDA
``max_memory_allocated`` minus the allocation before the call. Rows: the tiled decode with the activation
store on disk (CPU) or in host memory (CUDA), optionally with ``--stores memory`` too, and the untiled
decode at the sizes in ``--untiled-sizes``; ratios against the first tiled row.

CLI check (``--cli-check --model_path <exported model folder>``): issue 23's acceptance through the real command
line (``scripts/inference_ssr.py``, what ``ssr-infer`` runs), each run a fresh process on one photograph
(``--image``, default McMaster ``1.tif`` of ``../shared/data/train_hr``, resized to ``--cli-size``² with bicubic
interpolation when it has another size): untiled, ``--tile T`` (the default VAE tiling, which the CLI's first
line names) and ``--tile T --vae-tiling windows``. Printed: each run's first line and seconds, and each tiled
output's PSNR against the untiled output (8-bit PNGs, whole image), max abs difference and tone shift (as
above, over tiles of ``T`` × scale output pixels); the acceptance is PSNR >= 40 dB for the default tiling,
which must be ``layerwise``. Exit status 1 when it is not met.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

from ssr_app.benchmarks.process_memory import child_env, peak_rss_kb, reset_peak_rss, rss_kb
from ssr_utils.errors import exit_on_option_error
from ssr_utils.install import project_root

ROOT = project_root()

SD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=('DownEncoderBlock2D', ) * 4,
              up_block_types=('UpDecoderBlock2D', ) * 4, layers_per_block=2, norm_num_groups=32, latent_channels=4)
TINY_VAE = dict(block_out_channels=(32, 64, 64), down_block_types=('DownEncoderBlock2D', ) * 3,
                up_block_types=('UpDecoderBlock2D', ) * 3, layers_per_block=1, norm_num_groups=8, latent_channels=4)




def build_vae(config, device, dtype):
    import torch
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(**(SD_VAE if config == 'sd' else TINY_VAE)).eval()
    return vae.to(device=device, dtype=dtype)


def photo_latent(size, factor, device, dtype):
    """1×4×(size/factor)² latent from a 2×2 mosaic of scikit-image photographs (see the module doc)."""
    import numpy as np
    import torch
    from skimage import data
    from torch.nn import functional as F
    half = size // 2
    tiles = []
    for name in ('astronaut', 'coffee', 'chelsea', 'rocket'):
        img = torch.from_numpy(np.ascontiguousarray(getattr(data, name)()[..., :3])).permute(2, 0, 1)[None].float() / 255
        tiles.append(F.interpolate(img, size=(half, half), mode='bilinear', antialias=True, align_corners=False))
    mosaic = torch.cat([torch.cat(tiles[:2], dim=3), torch.cat(tiles[2:], dim=3)], dim=2)
    small = F.adaptive_avg_pool2d(mosaic, (size // factor, size // factor))
    luma = (0.299 * small[:, :1] + 0.587 * small[:, 1:2] + 0.114 * small[:, 2:])
    z = torch.cat([small, luma], dim=1)
    z = (z - z.mean(dim=(2, 3), keepdim=True)) / z.std(dim=(2, 3), keepdim=True)
    return z.to(device=device, dtype=dtype)


def decode_factor(vae):
    return 2 ** sum(1 for blk in vae.decoder.up_blocks if getattr(blk, 'upsamplers', None))


def _sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize()


def compare(out, ref, tile_px):
    """PSNR (dB, [0, 1] range), max abs diff, and the largest per-tile mean-colour shift in 8-bit levels."""
    a, b = ((out.float() + 1) / 2).clamp(0, 1), ((ref.float() + 1) / 2).clamp(0, 1)
    mse = float(((a - b)**2).mean())
    psnr = float('inf') if mse == 0 else 10 * math.log10(1.0 / mse)
    diff = a - b
    h, w = diff.shape[-2:]
    shift = 0.0
    for y in range(0, h, tile_px):
        for x in range(0, w, tile_px):
            shift = max(shift, float(diff[..., y:y + tile_px, x:x + tile_px].mean(dim=(2, 3)).abs().max()) * 255)
    return psnr, float(diff.abs().max()), shift


def accuracy(args):
    import torch
    from ssr_utils.tiled_vae import tiled_decode
    from ssr_utils.tiling import tiled_apply
    device = torch.device(args.device)
    dtype = torch.float32
    vae = build_vae(args.config, device, dtype)
    f = decode_factor(vae)
    z = photo_latent(args.size, f, device, dtype)
    print(f'\nAccuracy: {args.config} VAE, {args.size}² output ({z.shape[-2]}² latent), tiles of {args.tile} latent '
          f'pixels ({args.tile * f} output pixels), device {device}', flush=True)
    rows = []
    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        ref = vae.decode(z).sample
        _sync(device)
        t_ref = time.perf_counter() - t0
        rows.append(('untiled vae.decode', t_ref, None))

        t0 = time.perf_counter()
        ours = tiled_decode(vae, z, tile_size=args.tile, store='memory')
        _sync(device)
        rows.append(('tiled, whole-image GroupNorm (tiled_decode)', time.perf_counter() - t0, ours))

        t0 = time.perf_counter()
        naive = tiled_apply(lambda t: vae.decode(t).sample.float(), z, args.tile, args.overlap, context=args.overlap)
        _sync(device)
        rows.append((f'naive: per-tile GroupNorm, overlap {args.overlap} + blend', time.perf_counter() - t0, naive))
    print(f'{"method":48} {"PSNR dB":>8} {"max abs":>8} {"tone shift":>10} {"seconds":>8} {"x untiled":>9}')
    results = {}
    for name, sec, out in rows:
        if out is None:
            print(f'{name:48} {"":>8} {"":>8} {"":>10} {sec:8.1f} {1.0:9.2f}', flush=True)
            continue
        psnr, mx, shift = compare(out, ref, args.tile * f)
        results[name] = psnr
        print(f'{name:48} {psnr:8.2f} {mx:8.2e} {shift:10.2f} {sec:8.1f} {sec / t_ref:9.2f}', flush=True)
    print('(tone shift: largest |mean difference| of one tile-sized block, per channel, in 8-bit levels)')
    return results


def child(args):
    import torch
    from ssr_utils.tiled_vae import tiled_decode
    device = torch.device(args.device)
    vae = build_vae(args.config, device, torch.float32)
    f = decode_factor(vae)
    with torch.no_grad():
        warm = photo_latent(64, f, device, torch.float32)[..., :4, :4]
        if args.store == 'untiled':
            vae.decode(warm)
        else:
            tiled_decode(vae, warm, tile_size=2, store=args.store)
        z = photo_latent(args.size, f, device, torch.float32)
        out = torch.empty((1, 3, args.size, args.size), dtype=torch.float32, device=device)
        out.fill_(0.5)  # touched: resident before the baseline is read
        _sync(device)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
            base_gpu = torch.cuda.memory_allocated()
        reset_peak_rss()
        base = rss_kb()
        t0 = time.perf_counter()
        if args.store == 'untiled':
            out.copy_(vae.decode(z).sample)
        else:
            tiled_decode(vae, z, tile_size=args.tile, out=out, store=args.store)
        _sync(device)
        sec = time.perf_counter() - t0
    res = dict(store=args.store, size=args.size, seconds=sec, work_mb=max(0, peak_rss_kb() - base) / 1024,
               output_mb=out.numel() * 4 / 2**20)
    if device.type == 'cuda':
        res['gpu_mb'] = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    print('RESULT ' + json.dumps(res), flush=True)


def measure(args, store, size):
    cmd = [sys.executable, '-m', 'ssr_app.benchmarks.bench_tiled_vae', '--child', '--store', store, '--size', str(size),
           '--tile', str(args.tile), '--device', args.device, '--config', args.config]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=child_env(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith('RESULT '):
            return json.loads(line[7:])
    raise RuntimeError(f'benchmark child failed ({" ".join(cmd)}):\n{proc.stdout[-3000:]}')


def memory(args):
    key = 'gpu_mb' if args.device.startswith('cuda') else 'work_mb'
    what = 'GPU max_memory_allocated' if key == 'gpu_mb' else 'peak RSS'
    print(f'\nMemory: {args.config} VAE, tiles of {args.tile} latent pixels, working memory = {what} minus '
          'the baseline (input latent and output image excluded), one child process per row', flush=True)
    print(f'{"decode":22} {"output":>8} {"MB":>10} {"x first":>8} {"seconds":>8} {"output MB":>10}')
    stores = args.stores or (['memory'] if key == 'gpu_mb' else ['disk'])
    base = None
    for store in stores:
        for size in args.mem_sizes:
            r = measure(args, store, size)
            base = base or r[key]
            label = f'tiled, store={store}'
            print(f'{label:22} {str(size) + "²":>8} {r[key]:10.1f} {r[key] / max(base, 1e-9):8.2f} {r["seconds"]:8.1f} '
                  f'{r["output_mb"]:10.1f}', flush=True)
    for size in args.untiled_sizes:
        r = measure(args, 'untiled', size)
        print(f'{"untiled vae.decode":22} {str(size) + "²":>8} {r[key]:10.1f} {r[key] / max(base, 1e-9):8.2f} '
              f'{r["seconds"]:8.1f} {r["output_mb"]:10.1f}', flush=True)


def cli_input(args, folder):
    """The check's LR input: ``--image`` (or McMaster 1.tif) as an ``--cli-size``² PNG in ``folder``."""
    import cv2
    from ssr_utils.errors import OptionError
    image = args.image or osp.join(ROOT, os.pardir, 'shared', 'data', 'train_hr', '1.tif')
    img = cv2.imread(image, cv2.IMREAD_COLOR)
    if img is None:
        raise OptionError('--image', image, 'not a readable image (the default needs ../shared/data)')
    size = args.cli_size
    note = f'{osp.basename(image)} {img.shape[1]}x{img.shape[0]}'
    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
        note += f' resized to {size}² (bicubic)'
    path = osp.join(folder, 'in', f'check_{size}.png')
    os.makedirs(osp.dirname(path))
    cv2.imwrite(path, img)
    return path, note


def cli_check(args):
    import shutil
    import tempfile
    import cv2
    import numpy as np
    import torch
    from ssr_utils.errors import OptionError
    if not args.model_path or not osp.isdir(args.model_path):
        raise OptionError('--model_path', args.model_path, 'give an exported model folder (models/ssr_demo_x4 after '
                          'the demo)')
    folder = tempfile.mkdtemp(prefix='ssr_cli_check_')
    try:
        src, note = cli_input(args, folder)
        tile = args.cli_tile
        runs = [('untiled', []), (f'--tile {tile}', ['--tile', str(tile)]),
                (f'--tile {tile} --vae-tiling windows', ['--tile', str(tile), '--vae-tiling', 'windows'])]
        print(f'== CLI check: {args.model_path}, {note}, {args.cli_size}² LR input, tile {tile}; extra flags: '
              f'{" ".join(args.cli_args) or "none"}; torch threads {torch.get_num_threads()}', flush=True)
        outputs = {}
        for i, (name, flags) in enumerate(runs):
            out_dir = osp.join(folder, f'out{i}')
            cmd = [sys.executable, osp.join(ROOT, 'scripts', 'inference_ssr.py'), '--model_path', args.model_path,
                   '-i', src, '-o', out_dir, '-q'] + flags + list(args.cli_args)
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=child_env(ROOT))
            sec = time.perf_counter() - start
            first = next((line for line in proc.stdout.splitlines() if line.startswith('inference_ssr: device')), '')
            written = sorted(os.listdir(out_dir)) if osp.isdir(out_dir) else []
            if proc.returncode != 0 or len(written) != 1:
                raise RuntimeError(f'{" ".join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}')
            outputs[name] = cv2.imread(osp.join(out_dir, written[0]), cv2.IMREAD_COLOR)
            print(f'{name}: {sec:.1f} s; {first}', flush=True)
            runs[i] = (name, flags, first)
        ref = outputs['untiled']
        scale = ref.shape[0] // args.cli_size
        to_tensor = (lambda a: torch.from_numpy(a.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None])
        print('| run (vs the untiled output) | VAE tiling | PSNR dB | max abs (8-bit) | tone shift (8-bit) |\n'
              '| --- | --- | --- | --- | --- |')
        default_psnr, default_vae = None, None
        for name, flags, first in runs[1:]:
            psnr, mx, shift = compare(to_tensor(outputs[name]), to_tensor(ref), tile * scale)
            vae = 'layerwise' if 'VAE layerwise' in first else 'windows' if 'VAE windows' in first else '?'
            if '--vae-tiling' not in flags:
                default_psnr, default_vae = psnr, vae
            print(f'| {name} | {vae}{" (default)" if "--vae-tiling" not in flags else ""} | {psnr:.2f} | '
                  f'{mx * 127.5:.0f} | {shift:.2f} |', flush=True)
        met = default_vae == 'layerwise' and default_psnr >= 40
        print(f'acceptance (the default with --tile is layerwise, PSNR >= 40 dB vs untiled): '
              f'{"met" if met else "NOT met"} (default {default_vae}, {default_psnr:.2f} dB)', flush=True)
        return 0 if met else 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@exit_on_option_error()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', choices=['sd', 'tiny'], default='sd')
    p.add_argument('--device', default='cpu')
    p.add_argument('--size', type=int, default=1024, help='output size of the accuracy run (0: skip it)')
    p.add_argument('--tile', type=int, default=64, help='tile size in latent pixels')
    p.add_argument('--overlap', type=int, default=8, help='overlap and context of the naive tiles, latent pixels')
    p.add_argument('--mem-sizes', type=int, nargs='*', default=[512, 1024, 1536], help='output sizes of the memory rows')
    p.add_argument('--stores', nargs='*', choices=['memory', 'disk'], default=None,
                   help='activation stores of the memory rows (default: disk on CPU, memory on CUDA)')
    p.add_argument('--untiled-sizes', type=int, nargs='*', default=[512, 1024],
                   help='output sizes of untiled reference rows in the memory table')
    p.add_argument('--cli-check', dest='cli_check', action='store_true',
                   help='issue 23\'s acceptance through scripts/inference_ssr.py: untiled vs --tile (default VAE '
                   'tiling) vs --tile --vae-tiling windows, PSNR against the untiled output')
    p.add_argument('--model_path', '--model-path', dest='model_path', help='--cli-check: an exported model folder')
    p.add_argument('--image', help='--cli-check: the photograph (default: ../shared/data/train_hr/1.tif)')
    p.add_argument('--cli-size', dest='cli_size', type=int, default=512, help='--cli-check: LR input size (square)')
    p.add_argument('--cli-tile', dest='cli_tile', type=int, default=128, help='--cli-check: --tile in LR pixels')
    p.add_argument('--cli-args', dest='cli_args', nargs=argparse.REMAINDER, default=[],
                   help='--cli-check: further flags for every run (last on the line), e.g. --steps 4 --seed 1')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--store', default='disk', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.cli_check:
        return cli_check(args)
    import torch
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs visible, OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS")}',
          flush=True)
    if args.size:
        accuracy(args)
    if args.mem_sizes:
        memory(args)


if __name__ == '__main__':
    sys.exit(main())
