"""Every GPU measurement the project promises, in one run, as one table (issue 13).

    bash scripts/benchmarks/gpu_suite.sh                          # CUDA device 0, full sizes, table -> docs/
    bash scripts/benchmarks/gpu_suite.sh --device cuda:1 --out docs/gpu_suite_h100.md
    bash scripts/benchmarks/gpu_suite.sh --device cpu --tiny      # the same code paths on tiny configs (a test)

Rows (random weights everywhere: timing and memory only, no quality):

* sampling: SSR (``SSRPipeline``: SVKR, VAE encode, condition encoders + AMF, UNet, VAE decode, colour fix)
  at Stable Diffusion 2.1-base size for a 768×768 output (LR 192), 50 DPM-Solver++ steps in fp16 and bf16,
  and the few-step mode (4 DPM-Solver++ steps, bf16). Targets: ≤ 4 s and ≤ 1 s (the paper: 32 s).
* overhead: full SSR sampling (with the SVKR) / the bare UNet at the same steps and size
  (``bench_ssr_sampling.ssr_sampling``, 20 steps, bf16); the DKENet depth branch / no depth
  (``bench_ssr_sampling.dkenet_depth_cost``). Targets ≤ 1.10 and ≤ 1.5.
* tiled memory: peak memory (``torch.cuda.max_memory_allocated``; on CPU the working RSS) of the tiled
  SVKR (options/train_svkr.yml size) at a 2048² input against one window, and of tiled SSR (SD 2.1-base
  size, bf16, 2 steps, latent state included) at a 1024² input against one tile, each measured in a fresh
  process by ``bench_inference.measure``. Target ≤ 1.2×.
* training: a few iterations of each stage (DKENet, NBSR, SVKR, SSR) under AMP (bf16 and fp16), the
  networks of options/train_*.yml (SSR: SD 2.1-base size, random base, conditions from the batch), on
  synthetic batches of the option file's crop and batch size: seconds per iteration and a finite loss.
* degradation: ``bench_batch_degradation.py`` on the device (192 px crop): ``degrade_on: model`` against
  ``PairedImageDataset``, the synthesis share of a DKENet training step (goal < 10 %) and the same
  batch's synthesis stopped after each stage (host-to-device copy, kernels + blur, noise, rounding).

``--tiny`` swaps every size for a tiny one (tiny UNet / VAE, demo-size SVKR, a few pixels, 1-2 steps) so
the whole suite runs on a CPU in about a minute; its numbers mean nothing but that every path runs.
The table (markdown, with the card's name from ``torch.cuda.get_device_name``) is printed and written to
``--out`` (default ``docs/gpu_suite.md``; with ``--tiny`` nothing is written unless ``--out`` is given).
The exit status is 1 when any row failed (its error is in the table).
"""
import argparse
import datetime
import os
import os.path as osp
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from copy import deepcopy
from types import SimpleNamespace

from ssr_utils.install import project_root

ROOT = project_root()

from ssr_app.benchmarks.process_memory import child_env  # noqa: E402
from ssr_utils import compat  # noqa: E402
from ssr_utils.errors import exit_on_option_error  # noqa: E402

compat.apply()

import torch  # noqa: E402
import yaml  # noqa: E402

DEFAULT_OUT = osp.join('docs', 'gpu_suite.md')


class Suite:
    """Collects rows ``(section, measurement, setting, value, target)``; a failing measurement becomes a row
    with its error."""

    def __init__(self, device, tiny):
        self.device, self.tiny = device, tiny
        self.rows, self.failed = [], 0

    def add(self, section, measurement, setting, value, target=''):
        self.rows.append((section, measurement, setting, value, target))
        print(f'  {section:12} {measurement:52} {setting:48} {value:>18} {target}', flush=True)

    def run(self, section, fn):
        print(f'\n== {section}', flush=True)
        start = time.perf_counter()
        try:
            fn()
        except Exception as err:  # one broken measurement must not hide the others
            traceback.print_exc()
            self.failed += 1
            self.add(section, 'FAILED', type(err).__name__, str(err).splitlines()[0][:120] if str(err) else '-')
        print(f'   ({section}: {time.perf_counter() - start:.0f} s)', flush=True)

    def sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def reset_peak(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self):
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == 'cuda' else None


def _fmt_mem(mb):
    return f'{mb:.0f} MB' if mb is not None else '-'


# ------------------------------------------------------------------------------------------ sampling
def sampling(suite):
    from ssr_app.benchmarks.bench_inference import build
    tiny = suite.tiny
    config = 'tiny' if tiny else 'sd21'
    lr_size = 16 if tiny else 192
    steps = 2 if tiny else 50
    lr = torch.rand(1, 3, lr_size, lr_size, generator=torch.Generator().manual_seed(0))
    size = f'{lr_size * 4}² output, {"tiny UNet/VAE" if tiny else "SD 2.1-base"}'
    pipe = build('ssr', suite.device, config, 'fp32', 'dpmsolver++')  # weights float32; autocast per call
    for precision, n, target, label in (('fp16', steps, '≤ 4 s (paper 32 s)', f'{steps} DPM-Solver++ steps'),
                                        ('bf16', steps, '≤ 4 s (paper 32 s)', f'{steps} DPM-Solver++ steps'),
                                        ('bf16', 4, '≤ 1 s', 'few-step: 4 DPM-Solver++ steps')):
        pipe(lr, num_inference_steps=1, seed=0, dtype=precision)  # warm-up: kernel selection, allocator
        suite.reset_peak()
        start = time.perf_counter()
        out = pipe(lr, num_inference_steps=n, seed=0, dtype=precision).images
        suite.sync()
        sec = time.perf_counter() - start
        if not torch.isfinite(out).all():
            raise RuntimeError(f'SSR {precision}: non-finite output')
        suite.add('sampling', f'SSR {label}, {precision}', f'{size}, untiled', f'{sec:.2f} s/image',
                  target + (f'; peak {_fmt_mem(suite.peak_mb())}' if suite.device.type == 'cuda' else ''))
    del pipe


# ------------------------------------------------------------------------------------------ overhead
def overhead(suite):
    from ssr_app.benchmarks.bench_ssr_sampling import dkenet_depth_cost, ssr_sampling
    tiny = suite.tiny
    dtype = torch.float32 if suite.device.type == 'cpu' else torch.bfloat16
    dname = 'fp32' if dtype == torch.float32 else 'bf16'
    args = SimpleNamespace(config='tiny' if tiny else 'sd21', size=64 if tiny else 768, scale=4,
                           steps=2 if tiny else 20, repeats=1 if tiny else 3, with_svkr=True, dtype=dname)
    r = ssr_sampling(args, suite.device, dtype)
    suite.add('overhead', 'SSR sampling (with SVKR) / bare UNet',
              f'{args.size}² output, {args.steps} DPM-Solver++ steps, {dname}', f'{r["ratio"]:.3f}×', '≤ 1.10')
    suite.add('overhead', 'same, AMF layers one by one (fold=False) / bare UNet',
              f'{args.size}² output, {args.steps} DPM-Solver++ steps, {dname}', f'{r["unfolded_ratio"]:.3f}×',
              'before the fold (for comparison)')
    parts = r['once_parts']
    suite.add('overhead', 'SSR once per image: ' + ' / '.join(parts),
              f'{args.size}² output, {dname}; a bare UNet step {r["bare"] / args.steps:.3f} s',
              ' / '.join(f'{v:.3f}' for v in parts.values()) + ' s', 'where the rest goes')
    dargs = SimpleNamespace(dkenet_sizes=[16] if tiny else [128], dkenet_batches=[1] if tiny else [4],
                            repeats=1 if tiny else 5, dtype=dname)
    for row in dkenet_depth_cost(dargs, suite.device, dtype):
        suite.add('overhead', 'DKENet with depth branch / without',
                  f'LR {row["size"]}², batch {row["batch"]}, {dname} (GFLOP ratio {row["flop_ratio"]:.2f})',
                  f'{row["ratio"]:.3f}×', '≤ 1.5')


# ------------------------------------------------------------------------------------------ tiled memory
def tiled_memory(suite):
    from ssr_app.benchmarks.bench_inference import measure
    from ssr_pipelines.pipeline_ssr import SVKR_CONTEXT
    tiny, dev = suite.tiny, str(suite.device)
    mem = 'gpu_peak_mb' if suite.device.type == 'cuda' else 'work_mb'
    what = 'max_memory_allocated' if suite.device.type == 'cuda' else 'working RSS'
    args = SimpleNamespace(overlap=8, steps=2, device=dev, cond_cache='auto', trace=False)
    # SVKR: one window (tile + context on each side) untiled, then the large input tiled
    tile, big = (16, 40) if tiny else (256, 2048)
    cfg = 'tiny' if tiny else 'sd21'  # sd21 = options/train_svkr.yml widths for the SVKR
    base = measure(args, 'svkr', tile + 2 * SVKR_CONTEXT, 0, config=cfg)
    r = measure(args, 'svkr', big, tile, config=cfg)
    suite.add('tiled memory', f'SVKR {big}² LR input / one window ({what})',
              f'tile {tile}, {"demo" if tiny else "train_svkr.yml"} size; {r[mem]:.0f} vs {base[mem]:.0f} MB',
              f'{r[mem] / max(base[mem], 1e-9):.2f}×', '≤ 1.2')
    # SSR: one tile untiled vs a large input tiled; the sampler's latent-size state is part of it
    tile, big = (16, 32) if tiny else (128, 1024)
    prec = 'fp32' if suite.device.type == 'cpu' else 'bf16'
    base = measure(args, 'ssr', tile, 0, config=cfg, precision=prec, steps=2, sampler='dpmsolver++')
    r = measure(args, 'ssr', big, tile, config=cfg, precision=prec, steps=2, sampler='dpmsolver++')
    suite.add('tiled memory', f'SSR {big}² LR input / one tile ({what})',
              f'tile {tile}, {"tiny" if tiny else "SD 2.1-base"}, {prec}, 2 steps; {r[mem]:.0f} vs {base[mem]:.0f} MB',
              f'{r[mem] / max(base[mem], 1e-9):.2f}×', '≤ 1.2')


# ------------------------------------------------------------------------------------------ training
STAGES = ('dkenet', 'nbsr', 'svkr', 'ssr')


def _stage_options(stage, tiny, pca_path, device, amp, exp):
    name = f'train_{stage}_demo.yml' if tiny else f'train_{stage}.yml'
    if tiny and stage == 'ssr':  # the demo's SSR file loads the prior an earlier demo stage trains: its
        name = 'train_ssr_scratch_demo.yml'  # from-scratch twin has the same encoders / AMF, the UNet / VAE from configs
    with open(osp.join(ROOT, 'options', name)) as f:
        yml = yaml.safe_load(f)
    net = deepcopy(yml['network_g'])
    for key in ('pretrain_network_kernel', 'pretrain_network_sr'):  # random weights: no earlier stage needed
        net.pop(key, None)
    depth_note = ''
    depth = net.get('depth_opt')
    if isinstance(depth, dict) and depth.get('model_path'):
        folder = depth['model_path'] if osp.isabs(depth['model_path']) else osp.join(ROOT, depth['model_path'])
        if not osp.isdir(folder):  # the option file's depth network is not there (nothing is downloaded)
            net['depth_opt'] = {k: v for k, v in depth.items() if k != 'model_path'}
            net['depth_opt']['backend'] = 'prior'
            depth_note = f', depth PRIOR (no {depth["model_path"]})'
    if net.get('pca_path') is not None or stage == 'ssr':
        net['pca_path'] = pca_path
    for sub in ('sr_opt', ):
        if isinstance(net.get(sub), dict) and 'pca_path' in net[sub]:
            net[sub]['pca_path'] = pca_path
    if stage == 'ssr' and net.get('pretrained_path'):  # no weights can be downloaded: the base's sizes, random
        from ssr_app.benchmarks.bench_ssr_sampling import sd21_config
        cfg = sd21_config()
        net.pop('pretrained_path')
        net.update(unet=cfg['unet'], vae=cfg['vae'], freeze_unet=True, freeze_vae=True)
    train = deepcopy(yml['train'])
    train['amp'] = amp
    paths = {k: osp.join(exp, k) for k in ('models', 'training_states', 'visualization', 'log')}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    paths.update(pretrain_network_g=None, strict_load_g=True, resume_state=None, experiments_root=exp)
    opt = {k: deepcopy(v) for k, v in yml.items() if k not in ('datasets', 'path', 'logger', 'dist_params', 'val')}
    opt.update(name=f'gpu_suite_{stage}', is_train=True, dist=False, rank=0, world_size=1, manual_seed=0,
               num_gpu=1 if device.type == 'cuda' else 0, network_g=net, path=paths, train=train,
               val={'metrics': {}})
    if stage == 'ssr':  # the frozen SVKR needs trained weights; the batch carries the maps (source: gt)
        opt.pop('network_svkr', None)
        opt['conditions'] = dict(opt.get('conditions') or {}, source='gt', val_source='gt')
    ds = yml['datasets']['train']
    return opt, int(ds['gt_size']), int(ds['batch_size_per_gpu']), int(yml['scale']), depth_note


def _synthetic_batch(batch, gt_size, scale, kernel_size=21, seed=0):
    from torch.nn import functional as F
    from ssr_data.kernels import random_kernels
    g = torch.Generator().manual_seed(seed)
    h = gt_size // scale
    gt = F.interpolate(torch.rand(batch, 3, gt_size // 4, gt_size // 4, generator=g), size=(gt_size, gt_size),
                       mode='bilinear', align_corners=False)
    kernels = torch.as_tensor(random_kernels(batch * h * h, kernel_size=kernel_size, seed=seed)).float()
    kernel = kernels.reshape(batch, h, h, -1).permute(0, 3, 1, 2).contiguous()
    return dict(gt=gt, lq=F.avg_pool2d(gt, scale), depth=torch.rand(batch, 1, gt_size, gt_size, generator=g),
                depth_lq=torch.rand(batch, 1, h, h, generator=g), kernel=kernel,
                lq_path=[f'img{i}.png' for i in range(batch)], gt_path=[f'img{i}.png' for i in range(batch)])


def training(suite):
    import ssr_arch  # noqa: F401
    import ssr_models  # noqa: F401
    from basicsr.models import build_model
    from ssr_data.kernels import KernelPCA, random_kernels
    tiny = suite.tiny
    if suite.device.type == 'cuda':
        torch.cuda.set_device(suite.device)
    with tempfile.TemporaryDirectory(prefix='ssr_gpu_suite_') as exp:
        pca_path = osp.join(exp, 'kernel_pca.pth')
        KernelPCA.fit(random_kernels(300, kernel_size=21, seed=0).reshape(300, -1), 10).save(pca_path)
        for stage in STAGES:
            for amp in ('bf16', 'fp16'):
                opt, gt_size, batch, scale, depth_note = _stage_options(stage, tiny, pca_path, suite.device, amp,
                                                            osp.join(exp, f'{stage}_{amp}'))
                if tiny:
                    batch, gt_size = 1, min(gt_size, 48 if stage == 'ssr' else 32)
                data = _synthetic_batch(batch, gt_size, scale)
                torch.manual_seed(0)
                model = build_model(opt)
                iters = 1 if tiny else 5
                times = []
                for it in range(1, iters + 2):  # the first iteration allocates and selects kernels
                    suite.sync()
                    start = time.perf_counter()
                    model.feed_data(data)
                    model.optimize_parameters(it)
                    suite.sync()
                    if it > 1:
                        times.append(time.perf_counter() - start)
                loss = float(model.last_loss) if getattr(model, 'last_loss', None) is not None else float('nan')
                skipped = int(getattr(model, 'nonfinite_total', 0))
                if not (loss == loss and abs(loss) != float('inf')) and skipped == 0:
                    raise RuntimeError(f'{stage} {amp}: non-finite loss {loss}')
                suite.add('training', f'{opt["model_type"]} iteration, amp {amp}',
                          f'crop {gt_size}, batch {batch}, {iters} timed iterations{depth_note}',
                          f'{statistics.median(times):.3f} s/iter', f'loss {loss:.4g}, non-finite steps {skipped}')
                del model
                if suite.device.type == 'cuda':
                    torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ degradation
def degradation(suite):
    dev = str(suite.device)
    cmd = [sys.executable, '-m', 'ssr_app.benchmarks.bench_batch_degradation', '--device', dev, '--skip-breakdown',
           '--skip-jpeg', '--rounds', '1']
    if suite.tiny:
        cmd += ['--sizes', '32', '--num-images', '2', '--image-size', '48', '--batch', '2', '--num-batches', '2',
                '--workers', '0', '--step-batch', '1', '--step-repeats', '1', '--step-gt-size', '32']
    else:
        cmd += ['--sizes', '192', '--num-batches', '12']
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=child_env(ROOT))
    if proc.returncode:
        raise RuntimeError(f'bench_batch_degradation.py failed:\n{proc.stdout[-1500:]}')
    found = False
    for line in proc.stdout.splitlines():
        m = re.match(r'\[throughput\] gt_size (\d+): (.*)', line)
        if m:
            ratios = dict(re.findall(r'(\S+) [\d.]+ b/s \(([\d.]+)x', m.group(2)))
            for name in ('model', 'model+kernel'):
                suite.add('degradation', f'degrade_on: {name.replace("model", "model (batched)")} / '
                          'PairedImageDataset', f'{m.group(1)} px crop, batches/s on {dev}', f'{ratios[name]}×',
                          '≥ 0.8 (CPU goal)')
            found = True
        m = re.search(r'synthesis \(.*\) ([\d.]+) ms; training step .* ([\d.]+) ms -> synthesis = ([\d.]+) %', line)
        if m:
            suite.add('degradation', 'batch synthesis / DKENet training step', f'{m.group(1)} ms vs {m.group(2)} ms',
                      f'{m.group(3)} %', '< 10 % on a GPU')
            found = True
        m = re.match(r'\[step\] synthesis by stage \(cumulative, ms\): (.*)', line)
        if m:
            stages = dict(part.rsplit(' ', 1) for part in m.group(1).split(', '))
            suite.add('degradation', 'batch synthesis alone, by stage (cumulative)',
                      'the step\'s batch: ' + ', '.join(f'{k} {v} ms' for k, v in stages.items() if k != 'all'),
                      f'{stages["all"]} ms', 'where the synthesis time goes')
    if not found:
        raise RuntimeError(f'no result in the output of bench_batch_degradation.py:\n{proc.stdout[-1500:]}')
    from ssr_app.benchmarks.bench_batch_degradation import count_accelerator_ops
    counts = count_accelerator_ops(16, 192, 4)
    suite.add('degradation', 'kernel maps + SV blur: operator calls per batch', '16 crops of 192 px, k = 21, counted '
              f'on meta tensors; blur {counts["blur"]} (per-tap loop: {counts["blur loop"]})', f'{counts["synthesis"]}',
              'launch overhead')


SECTIONS = dict(sampling=sampling, overhead=overhead, tiled_memory=tiled_memory, training=training,
                degradation=degradation)


def table(suite, device_name, seconds, argv, pending=()):
    lines = [f'# GPU suite: {device_name}', '',
             f'`bash scripts/benchmarks/gpu_suite.sh {" ".join(argv)}`'.replace(' `', '`'), '',
             f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, '
             f'{platform.platform()}, {"TINY configs (code paths only, not measurements)" if suite.tiny else "full sizes"}'
             f', random weights, {seconds:.0f} s in all.', '',
             '| section | measurement | setting | value | target / note |', '| --- | --- | --- | --- | --- |']
    if pending:
        lines[5:5] = [f'PARTIAL: the run stopped before the sections {", ".join(pending)}.', '']
    for row in suite.rows:
        lines.append('| ' + ' | '.join(str(c).replace('|', '/') for c in row) + ' |')
    return '\n'.join(lines) + '\n'


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda', help='cuda | cuda:N | cpu')
    parser.add_argument('--tiny', action='store_true', help='tiny configs: every code path, in about a minute')
    parser.add_argument('--out', default=None, help=f'markdown table file (default {DEFAULT_OUT}; --tiny: none)')
    parser.add_argument('--only', nargs='+', choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            sys.exit('gpu_suite: CUDA is not available (run with --device cpu --tiny to check the code paths)')
        if device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
        name = torch.cuda.get_device_name(device)
    else:
        name = f'CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)'
    suite = Suite(device, args.tiny)
    print(f'gpu_suite: {name}, torch {torch.__version__}, {"tiny" if args.tiny else "full"} sizes', flush=True)
    out = args.out if args.out is not None else (None if args.tiny else osp.join(ROOT, DEFAULT_OUT))
    shown_argv = sys.argv[1:] if argv is None else list(argv)
    start = time.perf_counter()
    for done, key in enumerate(args.only, 1):
        suite.run(key, lambda: SECTIONS[key](suite))
        if out:  # after every section, so that a run stopped at a time limit keeps what it measured
            pending = args.only[done:]
            write_table(out, table(suite, name, time.perf_counter() - start, shown_argv, pending))
    text = table(suite, name, time.perf_counter() - start, shown_argv)
    print('\n' + text)
    if out:
        print(f'table written to {out}')
    return 1 if suite.failed else 0


def write_table(out, text):
    from ssr_utils.atomic_file import atomic_write
    with atomic_write(out, 'w') as f:
        f.write(text)


if __name__ == '__main__':
    sys.exit(main())
