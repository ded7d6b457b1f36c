"""Training-ready batches/s of the SSR degradation paths against BasicSR's PairedImageDataset (issue 13).

"Training-ready" is what a model holds after ``feed_data``: the DataLoader's batch (4 workers by default)
moved to the device, plus, for ``degrade_on: model``, the batch synthesised there by
``ssr_data.batch_degradation.maybe_degrade_batch`` (kernel maps, SV blur + ×4 subsampling, noise, JPEG).
On CUDA every timed batch ends with a synchronisation. Variants, all on the same HR crops of the same
480×480 LMDB images, measured in interleaved rounds in one process (medians):

- ``paired``: BasicSR's ``PairedImageDataset`` on pre-degraded LMDB pairs (the baseline);
- ``dataset``: ``SSRDegradationDataset`` with ``degrade_on: dataset`` (the per-sample path, in the workers);
- ``model``: ``SSRDegradationDataset`` with ``degrade_on: model`` + the synthesis in the main process;
each of the last two without and with the kernel map (``return_kernel``). Besides batches/s, the CPU time
(main process + workers) per batch: on a shared machine the wall clock favours the ``model`` variants,
whose busy main process is one more runnable process competing for the cores, while CPU time per batch
is what bounds the rate on an idle machine whose cores are the bottleneck.

Then where the CPU time goes (``--breakdown-size``, default 192): CPU time per sample of each dataset's
``__getitem__`` and collation and of each stage of the synthesis, in one process on one thread.

Then the operator calls of the accelerator path's kernels + blur for one batch (counted on ``meta``
tensors, so on any machine): the chunked unfold against the per-tap polyphase loop.

Then the torch JPEG simulation against OpenCV (distance at equal quality, time of both backends).

Then the synthesis against one DKENet training step (forward + backward + optimiser, EMA, AMP on CUDA) of
``DKENetModel`` at the stage-1 settings of ``options/train_dkenet.yml`` (its network, train block and
degradation options, gt_size 192, batch 16 on CUDA; ``--step-batch`` on CPU, default 2, where one step
at batch 16 takes about a minute).

    python scripts/benchmarks/bench_batch_degradation.py [--device cpu|cuda] [--sizes 128 192 256]
        [--workers 4] [--batch 16] [--num-batches 8] [--rounds 3] [--jpeg-backend opencv|torch]
        [--step-batch N] [--skip-step] [--breakdown-size 192] [--skip-breakdown] [--skip-jpeg]
"""
import argparse
import os
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time
import warnings
from copy import deepcopy

from ssr_utils.install import project_root

ROOT = project_root()

from ssr_utils import compat  # noqa: E402

compat.apply()

import torch  # noqa: E402
import yaml  # noqa: E402

from ssr_app.benchmarks.bench_degradation import build_lmdbs  # noqa: E402
from ssr_data.batch_degradation import maybe_degrade_batch  # noqa: E402
from ssr_utils.errors import exit_on_option_error  # noqa: E402

VARIANTS = ('paired', 'dataset', 'dataset+kernel', 'model', 'model+kernel')


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _to_device(batch, device):
    """What a model's feed_data does with a ready batch: its tensors on the device."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def training_ready(batch, device):
    if 'degradation' in batch:
        return maybe_degrade_batch(batch, device)
    return _to_device(batch, device)


def _cpu_seconds():
    """CPU time of this process and of its reaped children (the DataLoader workers, once joined)."""
    import resource
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def batches_per_second(dataset, device, workers, batch, num_batches):
    """(training-ready batches/s in steady state, CPU seconds per batch of the main process and its workers
    over the loader's whole life)."""
    from torch.utils.data import DataLoader, RandomSampler
    cpu0 = _cpu_seconds()
    sampler = RandomSampler(dataset, replacement=True, num_samples=(num_batches + 2 + 2 * workers) * batch,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=device.type == 'cuda')
    it = iter(loader)
    # Steady state only: while the first batches are consumed the workers have a head start (up to
    # prefetch_factor·workers batches made during start-up), so the clock starts after that many.
    skip = 2 + 2 * workers
    stamps = []
    for _ in range(skip + num_batches):
        out = training_ready(next(it), device)
        _sync(device)
        stamps.append(time.perf_counter())
    rate = num_batches / (stamps[-1] - stamps[skip - 1])
    del it, loader, out  # joins the workers, whose CPU time then counts as the children's
    return rate, (_cpu_seconds() - cpu0) / (skip + num_batches)


def make_datasets(root, gt_size, scale, jpeg_backend):
    import basicsr.data  # noqa: F401  (registers PairedImageDataset)
    from basicsr.data.paired_image_dataset import PairedImageDataset
    from ssr_data.ssr_degradation_dataset import SSRDegradationDataset
    common = {'phase': 'train', 'scale': scale, 'gt_size': gt_size, 'use_hflip': True, 'use_rot': True}
    sets = {'paired': PairedImageDataset({**common, 'name': 'paired', 'dataroot_gt': osp.join(root, 'hr.lmdb'),
                                          'dataroot_lq': osp.join(root, 'lq.lmdb'), 'io_backend': {'type': 'lmdb'},
                                          'filename_tmpl': '{}'})}
    for degrade_on in ('dataset', 'model'):
        for kernel in (False, True):
            extra = {'jpeg_backend': jpeg_backend} if degrade_on == 'model' else {}
            sets[degrade_on + ('+kernel' if kernel else '')] = SSRDegradationDataset({
                **common, 'name': 'ssr', 'dataroot_gt': osp.join(root, 'hr.lmdb'),
                'dataroot_depth': osp.join(root, 'depth.lmdb'), 'return_kernel': kernel, 'degrade_on': degrade_on,
                **extra})
    return sets


def bench_throughput(root, sizes, device, workers, batch, num_batches, rounds, scale, jpeg_backend):
    table = {}
    for gt_size in sizes:
        sets = make_datasets(root, gt_size, scale, jpeg_backend)
        rates = {name: [] for name in sets}
        cpu = {name: [] for name in sets}
        for _ in range(rounds):  # interleaved, so load from other processes hits every variant alike
            for name, ds in sets.items():
                rate, cpu_per_batch = batches_per_second(ds, device, workers, batch, num_batches)
                rates[name].append(rate)
                cpu[name].append(cpu_per_batch)
        table[gt_size] = {name: statistics.median(r) for name, r in rates.items()}
        table[gt_size]['_spread'] = {name: (min(r), max(r)) for name, r in rates.items()}
        table[gt_size]['_cpu'] = {name: statistics.median(c) for name, c in cpu.items()}
        row = table[gt_size]
        print(f'[throughput] gt_size {gt_size}: ' + ', '.join(
            f'{name} {row[name]:.2f} b/s ({row[name] / row["paired"]:.2f}x, {row["_cpu"][name] * 1e3:.0f} ms CPU/batch)'
            for name in VARIANTS), flush=True)
    return table


def print_table(table, device, workers, batch):
    print(f'\nTraining-ready batches/s (batch {batch}, {workers} workers, device {device}); ratio to '
          'PairedImageDataset in brackets, medians of interleaved rounds (min-max of the rounds after them)')
    print('| HR crop | PairedImageDataset | degrade_on: dataset | dataset + kernel | degrade_on: model | '
          'model + kernel |')
    print('| --- | --- | --- | --- | --- | --- |')
    for gt_size, row in table.items():
        cells = []
        for name in VARIANTS:
            lo, hi = row['_spread'][name]
            ratio = '' if name == 'paired' else f' ({row[name] / row["paired"]:.2f}x)'
            cells.append(f'{row[name]:.2f}{ratio} [{lo:.2f}-{hi:.2f}]')
        print(f'| {gt_size} | ' + ' | '.join(cells) + ' |')
    print('\nCPU time per training-ready batch (main process + workers, whole loader life; on a shared machine this, '
          'not the wall clock, says what an idle CPU-bound machine would reach); ratio = paired / variant')
    print('| HR crop | PairedImageDataset | degrade_on: dataset | dataset + kernel | degrade_on: model | '
          'model + kernel |')
    print('| --- | --- | --- | --- | --- | --- |')
    for gt_size, row in table.items():
        cpu = row['_cpu']
        cells = [f'{cpu[name] * 1e3:.0f} ms' + ('' if name == 'paired' else f' ({cpu["paired"] / cpu[name]:.2f}x)')
                 for name in VARIANTS]
        print(f'| {gt_size} | ' + ' | '.join(cells) + ' |')


# -------------------------------------------------------------------------------------------------
# where the CPU time goes (one process, one thread, CPU time per sample)
# -------------------------------------------------------------------------------------------------
def _cpu_ms(fn, repeats):
    fn()  # warm-up (first LMDB opens, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1e3


def bench_breakdown(root, gt_size, batch, scale, jpeg_backend, repeats=5):
    from torch.utils.data import default_collate

    from ssr_data.batch_degradation import BatchDegradation
    from ssr_data.dataset_io import ImageSource, decode_depth_raw
    sets = make_datasets(root, gt_size, scale, jpeg_backend)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each DataLoader worker runs with
    try:
        rows = []
        for name in VARIANTS:
            ds = sets[name]
            rows.append((f'{name}: __getitem__', _cpu_ms(lambda ds=ds: [ds[i] for i in range(batch)], repeats) / batch))
            samples = [ds[i] for i in range(batch)]
            rows.append((f'{name}: collate', _cpu_ms(lambda s=samples: default_collate(s), repeats) / batch))
        depth = ImageSource(osp.join(root, 'depth.lmdb'), 'depth', 'dataroot_depth')
        keys = sets['model'].keys
        rows.append(('  of which depth PNG decode (HR size)',
                     _cpu_ms(lambda: [decode_depth_raw(depth.get(keys[i % len(keys)]), '') for i in range(batch)],
                             repeats) / batch))
        raw = default_collate([sets['model'][i] for i in range(batch)])
        deg = raw['degradation']
        synth = BatchDegradation.from_batch(raw)
        gt, kp = raw['gt'], deg['kernel_params']
        noise = (deg['noise_sigma'], deg['gray_noise'], deg['poisson_scale'])
        stages = [
            ('synthesis: kernels + blur, kernel map dropped',
             lambda: synth.synthesize(gt, kp, compress=False, keep_kernels=False)),
            ('synthesis: kernels + blur, kernel map kept',
             lambda: synth.synthesize(gt, kp, compress=False, keep_kernels=True)),
            ('synthesis: + noise', lambda: synth.synthesize(gt, kp, *noise, None, deg['noise_seed'], compress=False,
                                                            keep_kernels=True)),
            (f'synthesis: + JPEG ({jpeg_backend}) = all',
             lambda: synth.synthesize(gt, kp, *noise, deg['jpeg_quality'], deg['noise_seed'], keep_kernels=True)),
        ]
        for label, fn in stages:
            rows.append((label, _cpu_ms(fn, repeats) / batch))
    finally:
        torch.set_num_threads(threads)
    print(f'\n[breakdown] CPU time per sample, one thread, gt_size {gt_size}, batches of {batch} '
          f'(median of {repeats}):')
    for label, ms in rows:
        print(f'[breakdown]   {label:<48s} {ms:7.2f} ms')
    return dict(rows)


def count_accelerator_ops(batch, gt_size, scale, kernel_size=21):
    """Operator calls of the accelerator path for one batch, counted on ``meta`` tensors (the path an
    accelerator takes, with no compute and no device): a machine-independent measure of the launch and
    dispatch overhead that dominates small crops on a GPU. ``synthesis``: kernel maps + SV blur as
    ``BatchDegradation.synthesize`` runs them (noise and JPEG left out: per-sample generators, host JPEG);
    ``blur``: the blur alone with the unfold chunks accelerators take for training crops, ``blur loop``: with
    the per-tap polyphase loop (``max_unfold=0``: large images; every batch before the unfold chunks).
    ``noise``: Gaussian noise on every sample, grey on half of them, shot noise on the other half (counted on
    CPU tensors, whose generators the draws need; the count does not depend on the device or the crop size)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from ssr_data.batch_degradation import BatchDegradation
    from ssr_data.degradations import sv_blur_downsample

    class Count(TorchDispatchMode):

        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    def count(fn):
        with Count() as counter:
            fn()
        return counter.calls

    h = gt_size // scale
    gt = torch.empty(batch, 3, gt_size, gt_size, device='meta')
    params = torch.empty(batch, 3, h, h, device='meta')
    kmap = torch.empty(batch, kernel_size * kernel_size, h, h, device='meta')
    synth = BatchDegradation({'scale': scale, 'kernel_size': kernel_size})
    counts = {
        'synthesis': count(lambda: synth.synthesize(gt, params, compress=False, keep_kernels=True)),
        'blur': count(lambda: sv_blur_downsample(gt, kmap, scale)),
        'blur loop': count(lambda: sv_blur_downsample(gt, kmap, scale, max_unfold=0)),
    }
    small = torch.rand(batch, 3, 8 * scale, 8 * scale)
    small_params = torch.ones(batch, 3, 8, 8)
    noise = ([0.05] * batch, [float(i % 2 == 0) for i in range(batch)], [float(i % 2) for i in range(batch)], None,
             list(range(batch)))
    counts['noise'] = count(lambda: synth.synthesize(small, small_params, *noise, compress=False)) - count(
        lambda: synth.synthesize(small, small_params, compress=False))
    print(f'\n[ops] accelerator path, a batch of {batch} {gt_size}-px crops (k = {kernel_size}), operator calls '
          f'counted on meta tensors: kernel maps + SV blur {counts["synthesis"]}; the blur alone {counts["blur"]} '
          f'with the unfold chunks (what accelerators run), {counts["blur loop"]} with the per-tap polyphase loop; '
          f'noise (half grey, half shot noise; counted on CPU tensors) {counts["noise"]}')
    return counts


# -------------------------------------------------------------------------------------------------
# the torch JPEG simulation against OpenCV
# -------------------------------------------------------------------------------------------------
def bench_jpeg(root, device, size=48, count=16, qualities=(30, 50, 70, 95)):
    """Distance of ``simulate_jpeg`` to OpenCV at the same quality on LR-sized crops of the benchmark's
    images (area-downscaled ×4, as an LR is), and the time of both backends on the device."""
    import cv2

    from ssr_data.degradations import jpeg_compress, quantize
    from ssr_data.jpeg_sim import simulate_jpeg
    from ssr_data.lmdb_util import read_lmdb_image
    crops = []
    with open(osp.join(root, 'hr.lmdb', 'meta_info.txt')) as f:
        keys = [line.split('.')[0] for line in f if line.strip()]
    for key in keys[:count]:
        img = read_lmdb_image(osp.join(root, 'hr.lmdb'), key)
        small = cv2.resize(img, (img.shape[1] // 4, img.shape[0] // 4), interpolation=cv2.INTER_AREA)
        crops.append(torch.from_numpy(small[:size, :size, ::-1].copy()).permute(2, 0, 1).float() / 255)
    imgs = torch.stack(crops)
    print(f'\n[jpeg] simulate_jpeg vs OpenCV ({cv2.__version__}) on {len(imgs)} {size}x{size} LR-sized crops, '
          'in 8-bit levels:')
    print('| quality | mean abs diff sim vs OpenCV | values that differ | max diff | mean JPEG error (OpenCV vs '
          'input) |')
    print('| --- | --- | --- | --- | --- |')
    for q in qualities:
        sim = simulate_jpeg(imgs, [q] * len(imgs))
        ref = torch.stack([jpeg_compress(i, q) for i in imgs])
        diff = (sim - ref).abs() * 255
        err = (ref - quantize(imgs)).abs() * 255
        print(f'| {q} | {diff.mean():.3f} | {(diff > 0).float().mean() * 100:.1f} % | {diff.max():.0f} | '
              f'{err.mean():.2f} |')
    on_device = imgs.to(device)
    quality = [50] * len(imgs)

    def opencv():
        host = on_device.cpu()
        torch.stack([jpeg_compress(i, 50) for i in host]).to(device)

    def torch_sim():
        simulate_jpeg(on_device, quality)

    times = {}
    threads = torch.get_num_threads()
    if device.type == 'cpu':
        torch.set_num_threads(1)  # as the synthesis runs on CPU (BatchDegradation)
    for name, fn in (('opencv', opencv), ('torch', torch_sim)):
        fn()
        _sync(device)
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            runs.append(time.perf_counter() - t0)
        times[name] = statistics.median(runs)
    torch.set_num_threads(threads)
    print(f'[jpeg] batch of {len(imgs)} on {device}: opencv (device -> host, per-image encode/decode, back) '
          f'{times["opencv"] * 1e3:.2f} ms, torch simulation {times["torch"] * 1e3:.2f} ms')
    return times


# -------------------------------------------------------------------------------------------------
# synthesis against one DKENet training step (stage 1)
# -------------------------------------------------------------------------------------------------
def stage1_options():
    with open(osp.join(ROOT, 'options', 'train_dkenet.yml')) as f:
        return yaml.safe_load(f)


def bench_step(root, device, step_batch, repeats, jpeg_backend, gt_size=None):
    from torch.utils.data import default_collate

    import ssr_arch  # noqa: F401
    import ssr_models  # noqa: F401
    from basicsr.models import build_model
    from ssr_data.ssr_degradation_dataset import SSRDegradationDataset
    yml = stage1_options()
    train_set = dict(yml['datasets']['train'])
    batch = step_batch or train_set['batch_size_per_gpu']
    ds_opt = {k: v for k, v in train_set.items() if k not in ('num_worker_per_gpu', 'batch_size_per_gpu',
                                                               'dataset_enlarge_ratio', 'prefetch_mode')}
    ds_opt.update(phase='train', scale=yml['scale'], dataroot_gt=osp.join(root, 'hr.lmdb'),
                  dataroot_depth=osp.join(root, 'depth.lmdb'), degrade_on='model', return_kernel=True,
                  jpeg_backend=jpeg_backend, seed=0)
    if gt_size:
        ds_opt['gt_size'] = gt_size
    dataset = SSRDegradationDataset(ds_opt)
    raw = default_collate([dataset[i % len(dataset)] for i in range(batch)])

    with tempfile.TemporaryDirectory(prefix='ssr_bench_step_') as exp:
        paths = {k: osp.join(exp, k) for k in ('models', 'training_states', 'visualization', 'log')}
        paths.update(pretrain_network_g=None, strict_load_g=True, resume_state=None, experiments_root=exp)
        opt = {'name': 'bench_dkenet', 'model_type': yml['model_type'], 'is_train': True, 'dist': False, 'rank': 0,
               'world_size': 1, 'num_gpu': 1 if device.type == 'cuda' else 0, 'scale': yml['scale'],
               'network_g': deepcopy(yml['network_g']), 'path': paths, 'train': deepcopy(yml['train']),
               'val': {'metrics': {}}, 'depth_from': yml.get('depth_from', 'data'),
               'depth_estimator': yml.get('depth_estimator')}
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        model = build_model(opt)
        synth, step = [], []
        for i in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            data = maybe_degrade_batch(raw, device)
            _sync(device)
            t1 = time.perf_counter()
            model.feed_data(data)
            model.optimize_parameters(i + 1)
            _sync(device)
            t2 = time.perf_counter()
            if i:  # the first call compiles / allocates
                synth.append(t1 - t0)
                step.append(t2 - t1)
    ts, tt = statistics.median(synth), statistics.median(step)
    stages = synthesis_stages(raw, device, repeats)
    amp = yml['train'].get('amp', 'none')
    print(f'\n[step] DKENetModel, options/train_dkenet.yml stage-1 settings (gt_size {ds_opt["gt_size"]}, batch '
          f'{batch}, kernel_size {ds_opt.get("kernel_size", 21)}, use_jpeg {ds_opt.get("use_jpeg", True)}, '
          f'AMP {amp}), device {device}, {repeats} timed steps')
    jpeg = ', JPEG' if ds_opt.get('use_jpeg', True) else ''
    print(f'[step] synthesis (maybe_degrade_batch: H2D, kernels, blur, noise{jpeg}) {ts * 1e3:.1f} ms; training step '
          f'(forward + backward + optimiser + EMA) {tt * 1e3:.1f} ms -> synthesis = {100 * ts / tt:.1f} % of a step '
          '(goal on a GPU: < 10 %)')
    print('[step] synthesis by stage (cumulative, ms): ' + ', '.join(f'{k} {v * 1e3:.2f}' for k, v in stages.items()))
    return {'synthesis': ts, 'step': tt, 'stages': stages}


def synthesis_stages(raw, device, repeats):
    """Where the batch synthesis of the step benchmark spends its time on ``device``: the same batch through
    ``BatchDegradation.synthesize`` stopped after each stage, cumulative medians in seconds (``all`` adds the
    8-bit rounding and, where the batch's options draw it, the JPEG round trip)."""
    from ssr_data.batch_degradation import BatchDegradation
    deg = raw['degradation']
    synth = BatchDegradation.from_batch(raw)
    noise = (deg['noise_sigma'], deg['gray_noise'], deg['poisson_scale'], deg['jpeg_quality'], deg['noise_seed'])
    moved = {}

    def to_device():
        moved['gt'] = raw['gt'].to(device, non_blocking=True)
        moved['kp'] = deg['kernel_params'].to(device, non_blocking=True)

    runs = {'H2D': to_device,
            'kernels + blur': lambda: synth.synthesize(moved['gt'], moved['kp'], compress=False, keep_kernels=True),
            '+ noise': lambda: synth.synthesize(moved['gt'], moved['kp'], *noise, compress=False, keep_kernels=True),
            'all': lambda: synth.synthesize(moved['gt'], moved['kp'], *noise, keep_kernels=True)}
    times = {k: [] for k in runs}
    for i in range(repeats + 1):
        for k, fn in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i:  # the first round compiles / allocates
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


@exit_on_option_error()
def main(argv=None):
    warnings.filterwarnings('ignore', message='This DataLoader will create')  # 4 workers on 2 cores
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N')
    parser.add_argument('--sizes', type=int, nargs='+', default=[128, 192, 256], help='HR crop sizes')
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--image-size', type=int, default=480, help='HR image size stored in the LMDB')
    parser.add_argument('--num-images', type=int, default=24)
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--num-batches', type=int, default=12, help='timed batches per loader (after a head start)')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--jpeg-backend', default='opencv', choices=('opencv', 'torch'),
                        help='JPEG of the degrade_on: model variants')
    parser.add_argument('--step-batch', type=int, default=None,
                        help='batch of the DKENet step (default: 16 from train_dkenet.yml on CUDA, 2 on CPU)')
    parser.add_argument('--step-gt-size', type=int, default=None,
                        help='HR crop of the DKENet step (default: gt_size of train_dkenet.yml)')
    parser.add_argument('--step-repeats', type=int, default=None, help='timed steps (default 10 on CUDA, 2 on CPU)')
    parser.add_argument('--skip-step', action='store_true')
    parser.add_argument('--breakdown-size', type=int, default=192, help='crop of the CPU-time breakdown')
    parser.add_argument('--skip-breakdown', action='store_true')
    parser.add_argument('--skip-jpeg', action='store_true')
    parser.add_argument('--skip-throughput', action='store_true')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        sys.exit('--device cuda: no CUDA device is available')
    gpu = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'none'
    print(f'machine: {platform.machine()} {os.cpu_count()} CPUs, GPU {gpu}, {platform.platform()}, torch '
          f'{torch.__version__}, main-process torch threads {torch.get_num_threads()}', flush=True)
    with tempfile.TemporaryDirectory(prefix='ssr_bench_') as root:
        build_lmdbs(root, args.num_images, args.image_size, args.scale)
        if not args.skip_throughput:
            table = bench_throughput(root, args.sizes, device, args.workers, args.batch, args.num_batches,
                                     args.rounds, args.scale, args.jpeg_backend)
            print_table(table, device, args.workers, args.batch)
        if not args.skip_jpeg:
            bench_jpeg(root, device)
        if not args.skip_breakdown:
            bench_breakdown(root, args.breakdown_size, args.batch, args.scale, args.jpeg_backend)
            count_accelerator_ops(args.batch, args.breakdown_size, args.scale)
        if not args.skip_step:
            cpu = device.type == 'cpu'
            bench_step(root, device, args.step_batch or (2 if cpu else None),
                       args.step_repeats or (2 if cpu else 10), args.jpeg_backend, args.step_gt_size)


if __name__ == '__main__':
    main()
