"""SSR sampling overhead: the SSR UNet (condition encoders + AMF at every level) vs the bare UNet.

    python scripts/benchmarks/bench_ssr_sampling.py                     # tiny config on CPU
    python scripts/benchmarks/bench_ssr_sampling.py --config sd21 --size 256 --steps 3 --repeats 1  # SD size, CPU
    python scripts/benchmarks/bench_ssr_sampling.py --config sd21 --device cuda --dtype bf16 --size 768

Both loops run the same scheduler (DPM-Solver++) for the same steps on the same latent size, in the
same process, interleaved (each round starts with the next loop), median of ``--repeats``:
* bare: the same ``UNet2DConditionModel`` with no conditions (its AMF hooks return at once; no
  weight copy, so SD-size models fit) and the null text embedding;
* SSR: VAE encoding of the upsampled LR image + condition encoders + AMF modulations (once per
  image) + the same UNet with AMF at every down / mid / up level, each point's AMF layers folded into
  one affine map (``SSRUNet.fold_modulations``, the default at inference); a third loop applies them one
  by one (``fold=False``) for comparison.
The VAE decoding is the same for both and is left out. ``--with-svkr`` adds the frozen SVKR
(default options, T = 3) to the SSR side, i.e. the full SSR inference of a LR image, under autocast at
``--dtype`` as ``SSRPipeline`` runs it.
Budget (SPEC): SSR / bare <= 1.15.

DKENet depth branch (``--part dkenet``; ``all``, the default, runs both parts): the paper-width DKENet
(``type: DKENet`` defaults: num_feat (128, 256), num_depth_feat (32, 64)) with its depth branch vs the
same network built with ``use_depth: false``, on the same LR batch, interleaved in one process, median of
``--repeats``. Budget (issue 13): with depth / without <= 1.5. For information also the depth estimator
in front (``MonocularDepth``, prior backend), as SVKR runs it:

    python scripts/benchmarks/bench_ssr_sampling.py --part dkenet --dkenet-sizes 64 128 --dkenet-batches 1 4
"""
import argparse
import statistics
import time

from ssr_utils import compat  # noqa: E402

compat.apply()

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import ssr_arch  # noqa: E402,F401
from ssr_arch.ssr_unet_arch import SSRUNet, tiny_config  # noqa: E402
from ssr_utils.amp import autocast  # noqa: E402
from ssr_utils.errors import exit_on_option_error  # noqa: E402


def sd21_config():
    """Stable Diffusion 2.1-base sizes (random weights): UNet 865M, VAE 84M; SSR encoders as train_ssr.yml."""
    unet = dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=[320, 640, 1280, 1280],
        layers_per_block=2,
        down_block_types=['CrossAttnDownBlock2D'] * 3 + ['DownBlock2D'],
        up_block_types=['UpBlock2D'] + ['CrossAttnUpBlock2D'] * 3,
        cross_attention_dim=1024,
        attention_head_dim=[5, 10, 20, 20],
        use_linear_projection=True,
        norm_num_groups=32)
    vae = dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=[128, 256, 512, 512],
        down_block_types=['DownEncoderBlock2D'] * 4,
        up_block_types=['UpDecoderBlock2D'] * 4,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=768)
    return dict(
        unet=unet,
        vae=vae,
        null_text_length=77,
        lr_encoder=dict(block_out_channels=[160, 320, 640, 640], layers_per_block=2),
        map_encoder=dict(block_out_channels=[32, 64, 128, 128]),
        amf=dict(hidden=128))


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', choices=['tiny', 'sd21'], default='tiny')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=['fp32', 'fp16', 'bf16'], default='fp32')
    parser.add_argument('--size', type=int, default=None, help='HR output size (default: tiny 64, sd21 768)')
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--warmup-steps', type=int, default=None,
                        help='steps of the warm-up loops (default: --steps; 1 is enough on a CPU, halving the cost)')
    parser.add_argument('--with-svkr', action='store_true', help='include the frozen SVKR (default options)')
    parser.add_argument('--part', choices=['all', 'ssr', 'dkenet'], default='all',
                        help='ssr: SSR vs bare UNet sampling; dkenet: DKENet with vs without its depth branch')
    parser.add_argument('--dkenet-sizes', type=int, nargs='+', default=[64, 128], help='LR sizes (square)')
    parser.add_argument('--dkenet-batches', type=int, nargs='+', default=[1, 4])
    args = parser.parse_args(argv)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        print('CUDA is not available; skipping the GPU benchmark')
        return
    device = torch.device(args.device)
    dtype = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[args.dtype]
    if args.part in ('all', 'ssr'):
        ssr_sampling(args, device, dtype)
    if args.part in ('all', 'dkenet'):
        dkenet_depth_cost(args, device, dtype)


def timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def rotated(runs, round_index):
    """The runs of one round, each round starting one further along: every loop is timed first, second, ...
    as often as the others (a one-round run, e.g. at 768² on a CPU, still times them in the listed order)."""
    shift = round_index % len(runs)
    return runs[shift:] + runs[:shift]


@torch.no_grad()
def dkenet_depth_cost(args, device, dtype):
    """DKENet with its depth branch (depth features + one SFT per DABlock) vs without, same input. Returns a
    row per (size, batch): median seconds ``no_depth`` / ``depth``, their ``ratio`` and the ``flop_ratio``."""
    from ssr_arch.depth_arch import MonocularDepth
    from ssr_arch.dkenet_arch import DKENet
    torch.manual_seed(0)
    with_depth = DKENet().to(device, dtype).eval()
    no_depth = DKENet(use_depth=False).to(device, dtype).eval()
    estimator = MonocularDepth(backend='prior').to(device).eval()
    n_with = sum(p.numel() for p in with_depth.parameters())
    n_without = sum(p.numel() for p in no_depth.parameters())
    dev_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'\nDKENet (paper widths, k = 21) with vs without the depth branch: device={dev_name} dtype={args.dtype} '
          f'repeats={args.repeats} (median; interleaved); params {n_with / 1e6:.2f}M vs {n_without / 1e6:.2f}M')
    from torch.utils.flop_counter import FlopCounterMode
    print(f'{"LR":>9} {"batch":>5} {"no depth s":>11} {"depth s":>9} {"ratio":>6} {"DE+depth s":>11} {"ratio":>6} '
          f'{"GFLOP ratio":>12}')
    rows = []
    for size in args.dkenet_sizes:
        for batch in args.dkenet_batches:
            lr = torch.rand(batch, 3, size, size, device=device).to(dtype)
            depth = estimator(lr)
            runs = {
                'no depth': lambda: no_depth(lr),
                'depth': lambda: with_depth(lr, depth),
                'DE + depth': lambda: with_depth(lr, estimator(lr)),  # as SVKR's first pass runs it
            }
            flops = {}
            for k in ('no depth', 'depth'):  # convolutions and matmuls; independent of the machine's load
                with FlopCounterMode(display=False) as counter:
                    runs[k]()
                flops[k] = counter.get_total_flops()
            for fn in runs.values():  # warm-up (kernel selection, allocator)
                fn()
            times = {k: [] for k in runs}
            for r in range(args.repeats):  # interleaved, so that load on a shared machine hits all alike
                for k, fn in rotated(list(runs.items()), r):
                    times[k].append(timed(fn, device))
            t = {k: statistics.median(v) for k, v in times.items()}
            print(f'{size:>4}x{size:<4} {batch:>5} {t["no depth"]:11.4f} {t["depth"]:9.4f} '
                  f'{t["depth"] / t["no depth"]:6.3f} {t["DE + depth"]:11.4f} {t["DE + depth"] / t["no depth"]:6.3f} '
                  f'{flops["depth"] / flops["no depth"]:12.3f}', flush=True)
            rows.append(dict(size=size, batch=batch, no_depth=t['no depth'], depth=t['depth'],
                             ratio=t['depth'] / t['no depth'], flop_ratio=flops['depth'] / flops['no depth']))
    print('ratio = with depth / without (budget <= 1.5); DE = MonocularDepth(prior) on the LR input; GFLOP ratio: '
          'convolutions and matmuls counted by torch.utils.flop_counter (elementwise work not included)')
    return rows


def ssr_sampling(args, device, dtype):
    """SSR vs bare UNet sampling (module doc). Returns median seconds ``bare`` / ``ssr`` / ``once`` (the
    once-per-image part), ``ratio`` = ssr / bare and the per-step ratio."""
    size = args.size or (64 if args.config == 'tiny' else 768)
    torch.manual_seed(0)
    cfg = tiny_config() if args.config == 'tiny' else sd21_config()
    net = SSRUNet(**cfg).to(device, dtype).eval()
    # random (non-zero) AMF output layers: a trained model's cost, not the zero-init shortcut
    with torch.no_grad():
        for amf in net.amf.values():
            for mlp in (amf.mlp_alpha, amf.mlp_beta):
                mlp[-1].weight.normal_(0, 0.01)
    svkr = None
    if args.with_svkr:
        from basicsr.archs import build_network
        svkr = build_network({'type': 'SVKR', 'num_iter': 3, 'gamma': 0.9, 'scale': args.scale}).to(device).eval()
    from diffusers import DPMSolverMultistepScheduler
    sched_cfg = DPMSolverMultistepScheduler(algorithm_type='dpmsolver++').config

    lr = torch.rand(1, 3, size // args.scale, size // args.scale, device=device)
    lat = size // net.vae_scale_factor
    emb = net.null_embedding(1, dtype)

    def loop(step_fn, steps=None):
        sched = DPMSolverMultistepScheduler.from_config(sched_cfg)
        sched.set_timesteps(steps or args.steps, device=device)
        g = torch.Generator(device=device).manual_seed(0)
        z = torch.randn(1, 4, lat, lat, generator=g, device=device) * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = step_fn(sched.scale_model_input(z, t).to(dtype), t)
            z = sched.step(eps.float(), t, z).prev_sample
        return z

    @torch.no_grad()
    def run_bare(steps=None):
        return loop(lambda z, t: net.unet(z, t, encoder_hidden_states=emb).sample, steps)

    @torch.no_grad()
    def conditions(fold=True, parts=None):
        """Once per image: (SVKR), VAE encoding of the upsampled LR, encoders, AMF modulations. ``parts``: a
        dict that collects the seconds of each part (a synchronisation between parts on a GPU)."""
        clock = [time.perf_counter()]

        def lap(name):
            if parts is not None:
                _sync(device)
                now = time.perf_counter()
                parts.setdefault(name, []).append(now - clock[0])
                clock[0] = now

        if svkr is not None:
            # as SSRPipeline runs it: the maps only (no last NBSR pass), under autocast at the sampling dtype
            with autocast(device, None if dtype == torch.float32 else dtype):
                maps = svkr(lr, need_sr=False)
            depth, kernel = maps['depth'], maps['kernel']
            lap('SVKR')
        else:
            depth, kernel = torch.rand(1, 1, *lr.shape[-2:], device=device), None
        lr_up = F.interpolate(lr, size=(size, size), mode='bicubic', align_corners=False).clamp(0, 1)
        z_lr = net.encode_image(lr_up.to(dtype))
        lap('VAE encode')
        code = net.kernel_code(kernel.to(dtype)) if kernel is not None else \
            torch.randn(1, net.pca.dim, *lr.shape[-2:], device=device, dtype=dtype)
        conds = net.encode_conditions(z_lr.to(dtype), depth.to(dtype), code.to(dtype), fold=fold)
        lap('encoders + modulations')
        return conds

    @torch.no_grad()
    def run_ssr(steps=None, fold=True):
        conds = conditions(fold)
        return loop(lambda z, t: net(z, t, conditions=conds), steps)

    warm = getattr(args, 'warmup_steps', None)
    run_bare(warm), run_ssr(warm), run_ssr(warm, fold=False)  # warm-up (kernel selection, allocator)
    bare_t, ssr_t, cond_t, apart_t, parts = [], [], [], [], {}
    timings = [(bare_t, run_bare), (ssr_t, run_ssr), (cond_t, lambda: conditions(parts=parts)),
               (apart_t, lambda: run_ssr(fold=False))]
    for r in range(args.repeats):  # interleaved, so that load on a shared machine hits all alike
        for out, fn in rotated(timings, r):
            out.append(timed(fn, device))
    b, s, c = statistics.median(bare_t), statistics.median(ssr_t), statistics.median(cond_t)
    a = statistics.median(apart_t)
    dev_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    n_unet = sum(p.numel() for p in net.unet.parameters())
    n_ssr = sum(p.numel() for k, p in net.named_parameters() if not k.startswith(('unet.', 'vae.')))
    print(f'config={args.config} device={dev_name} dtype={args.dtype} output={size}x{size} latent={lat}x{lat} '
          f'steps={args.steps} repeats={args.repeats} svkr={"yes" if svkr is not None else "no"}')
    print(f'UNet params {n_unet / 1e6:.2f}M, SSR encoders+AMF params {n_ssr / 1e6:.2f}M, AMF points {len(net.injection_points())}')
    print(f'bare UNet sampling: {b:.3f} s   SSR sampling: {s:.3f} s   ratio SSR/bare = {s / b:.3f} (target <= 1.10, issue 13; SPEC budget <= 1.15)')
    step_b, step_s = b / args.steps, max(s - c, 0.0) / args.steps
    print(f'breakdown: once per image (VAE encode + encoders + AMF modulations{" + SVKR" if svkr is not None else ""}) '
          f'{c:.3f} s; per step bare {step_b:.4f} s, SSR {step_s:.4f} s (per-step ratio {step_s / step_b:.3f})')
    print('once per image, by part: ' + ', '.join(f'{k} {statistics.median(v):.3f} s' for k, v in parts.items()) +
          f' (a bare UNet step: {step_b:.3f} s)')
    print(f'AMF layers applied one by one (fold=False: a norm and three elementwise passes per modality and point): '
          f'{a:.3f} s, ratio {a / b:.3f}; folded into one affine map per point (the default at inference): ratio '
          f'{s / b:.3f}')
    if args.steps < 50:
        print(
            f'projection from these parts, not a measurement: 50 steps -> ratio {(c + 50 * step_s) / (50 * step_b):.3f}'
        )
    return dict(bare=b, ssr=s, once=c, ratio=s / b, step_ratio=step_s / step_b, unfolded=a, unfolded_ratio=a / b,
                once_parts={k: statistics.median(v) for k, v in parts.items()})


if __name__ == '__main__':
    main()
