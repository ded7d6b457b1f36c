"""What each condition contributes, on the demo's validation set: trained DKENet and NBSR with their conditions
changed one at a time.

    python scripts/experiments/demo_conditions.py [--dkenet-opt options/train_dkenet_demo.yml]
        [--nbsr-opt options/train_nbsr_demo.yml] [--svkr-opt options/train_svkr_demo.yml] [--val datasets/demo/val_x4]
        [--depth-backend dpt --depth-model-path experiments/train_Depth_demo/depth_model]
        [--output results/demo_conditions]

The networks are the trained checkpoints of the option files (``experiments/<name>/models/net_g_latest.pth``,
``params_ema``). Rows (kernel PSNR against the set's ground-truth kernel maps, its gain over the mean-kernel
baseline, and the SR PSNR of the trained NBSR given those kernels; PSNR on Y, 4-pixel border, as the
validation metrics):

- ``mean training kernel everywhere``: the baseline: one kernel, the mean of the training data's kernel maps
  (``--mean-samples`` samples of the DKENet option file's training set), at every position;
- ``DKENet + exact depth``: DKENet given the set's depth maps (exact scene depth, area-downscaled to LR);
- ``DKENet + depth network (LR)``: DKENet given ``MonocularDepth(--depth-backend, --depth-model-path)`` on the
  LR image, as SVKR's first pass runs it (``--depth-backend prior``: the weight-free heuristic, labelled so);
- ``DKENet + flat depth``: the same DKENet given a constant depth map (0.5): what is left without depth;
- ``ground-truth kernels``: NBSR given the true kernel maps (its upper bound);
- ``bicubic``: the LR image upsampled, for scale.
The NBSR column is the stage 2 network (``--nbsr-opt``); the next one the NBSR inside the stage 3 SVKR
(``--svkr-opt``, its ``sr_net``, fine-tuned inside the loop; ``--svkr-opt ''`` leaves it out). Below the table,
each NBSR's SR PSNR with the ground-truth kernels made narrower or wider (every kernel ``K^(1/a^2)``,
renormalised: both sigmas of a Gaussian times ``a``; paper Fig. 8), and how far the true width beats each end.
A DKENet whose rows with and without depth are equal ignores its depth input, and an NBSR whose width curve
is flat towards either end (within the noise of the per-image drop, ``ssr_utils.deviation_curves``) does not
read its kernels: the script prints a DEFECT line for each.
Writes ``<output>/<set>_conditions.md`` and ``.csv`` and prints the table.
"""
import argparse
import csv
import os
import os.path as osp
from copy import deepcopy

from ssr_utils.install import project_root

ROOT = project_root()

from ssr_utils import compat  # noqa: E402

compat.apply()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import ssr_arch  # noqa: F401,E402  (registers the archs)
import ssr_data  # noqa: F401,E402  (registers the datasets)
from basicsr.archs import build_network  # noqa: E402
from basicsr.metrics import calculate_psnr  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from ssr_arch.depth_arch import MonocularDepth  # noqa: E402
from ssr_arch.svkr_arch import SVKR  # noqa: E402
from ssr_data.kernels import widen_kernel_map  # noqa: E402
from ssr_data.ssr_degradation_dataset import SSRDegradationDataset  # noqa: E402
from ssr_data.ssr_paired_dataset import SSRPairedDataset  # noqa: E402
from ssr_utils.atomic_file import atomic_write  # noqa: E402
from ssr_utils.checkpoint import read_state_dict  # noqa: E402
from ssr_utils.deviation_curves import describe_ends, flat_curve_defects  # noqa: E402
from ssr_utils.errors import OptionError, exit_on_option_error  # noqa: E402
from ssr_utils.kernel_metrics import calculate_kernel_psnr  # noqa: E402

FLAT_DEPTH = 0.5
# two rows whose kernel PSNR differs by less than this are "equal": the network ignores what they change
EQUAL_DB = 0.01
# NBSR given ground-truth kernels and given the mean kernel everywhere: closer than this in SR PSNR, and
# NBSR ignores its kernels (the demo NBSR did, 0.02 dB apart, until its PCA codes were scaled: NBSR docstring)
NBSR_EQUAL_DB = 0.05
WIDTH_FACTORS = (0.5, 0.7, 1.0, 1.4, 2.0)  # the ground-truth kernels' width deviations (svkr_evidence.py's row 4)
STAGE2, STAGE3 = 'NBSR', 'NBSR after stage 3'


def _abs(path):
    return path if osp.isabs(path) else osp.join(ROOT, path)


def load_trained(opt_path, device):
    """``(network in eval mode, its option dict)`` of an option file's trained ``network_g``."""
    with open(_abs(opt_path)) as f:
        opt = yaml.safe_load(f)
    net_opt = deepcopy(opt['network_g'])
    if net_opt.get('pca_path'):
        net_opt['pca_path'] = _abs(net_opt['pca_path'])
    ckpt = osp.join(ROOT, 'experiments', opt['name'], 'models', 'net_g_latest.pth')
    state, _ = read_state_dict(ckpt, 'params_ema', f'{opt_path}: experiments/{opt["name"]}/models/net_g_latest.pth')
    net = build_network(net_opt)
    net.load_state_dict(state)
    return net.to(device).eval().requires_grad_(False), opt


def load_stage3_nbsr(svkr_opt_path, device):
    """The NBSR inside a trained stage 3 SVKR (``sr_net`` of ``experiments/<name>/models/net_g_latest.pth``,
    ``params_ema``), built from the file's ``sr_opt`` as SVKR builds it (no depth network needed)."""
    with open(_abs(svkr_opt_path)) as f:
        opt = yaml.safe_load(f)
    net = opt['network_g']
    _, _, sr_opt = SVKR.network_options(net.get('use_depth', True), None, net.get('kernel_opt'), net.get('sr_opt'),
                                        net.get('scale'), net.get('kernel_size'))
    if sr_opt.get('pca_path'):
        sr_opt['pca_path'] = _abs(sr_opt['pca_path'])
    ckpt = osp.join(ROOT, 'experiments', opt['name'], 'models', 'net_g_latest.pth')
    state, _ = read_state_dict(ckpt, 'params_ema', f'{svkr_opt_path}: experiments/{opt["name"]}/models/net_g_latest.pth')
    nbsr = build_network(sr_opt)
    nbsr.load_state_dict({k[len('sr_net.'):]: v for k, v in state.items() if k.startswith('sr_net.')})
    return nbsr.to(device).eval().requires_grad_(False)


def mean_training_kernel(dkenet_opt, samples, seed=0):
    """The mean of the training set's kernel maps (1×k²×1×1): the constant every estimator must beat."""
    dopt = deepcopy(dkenet_opt['datasets']['train'])
    for key in ('dataroot_gt', 'dataroot_depth', 'pca_path'):
        if dopt.get(key):
            dopt[key] = _abs(dopt[key])
    dopt.update(phase='train', scale=dkenet_opt.get('scale', 4), seed=seed)
    dataset = SSRDegradationDataset(dopt)
    rng = np.random.default_rng(seed)
    total = None
    for index in rng.choice(len(dataset), size=min(samples, len(dataset)), replace=False):
        kmap = dataset[int(index)]['kernel'].float().mean(dim=(1, 2))
        total = kmap if total is None else total + kmap
    return (total / total.sum()).view(1, -1, 1, 1)


def _img(t):
    return tensor2img(t.detach().float().cpu(), rgb2bgr=True, min_max=(0, 1))


def sr_psnr(sr, gt, scale):
    return calculate_psnr(_img(sr), _img(gt), crop_border=scale, test_y_channel=True)


def evaluate(dkenet, nbsrs, dataset, mean_kernel, depth_net, scale, device='cpu'):
    """``{row: {'kernel_psnr': [...], <NBSR label>: [...]}}`` per image (see the module doc), ``nbsrs`` a dict
    label -> NBSR; and per NBSR label the SR PSNR of every image with the ground-truth kernels widened by each
    of ``WIDTH_FACTORS`` (rows = images)."""
    rows, curves = {}, {label: [] for label in nbsrs}

    def add(row, key, value):
        rows.setdefault(row, {'kernel_psnr': [], **{label: [] for label in nbsrs}})[key].append(value)

    depth_rows = dkenet.use_depth
    for i in range(len(dataset)):
        sample = dataset[i]
        lq, gt, kgt = (sample[k][None].to(device) for k in ('lq', 'gt', 'kernel'))
        h, w = lq.shape[-2:]
        gt = gt[..., :h * scale, :w * scale]
        kernels = {'mean training kernel everywhere': mean_kernel.to(device).expand(1, -1, h, w)}
        if depth_rows:
            if 'depth_lq' in sample:
                kernels['DKENet + exact depth'] = dkenet(lq, sample['depth_lq'][None].to(device))
            kernels[f'DKENet + depth network (LR){" [PRIOR]" if depth_net.backend == "prior" else ""}'] = \
                dkenet(lq, depth_net(lq).clamp(0, 1))
            kernels['DKENet + flat depth'] = dkenet(lq, torch.full_like(lq[:, :1], FLAT_DEPTH))
        else:
            kernels['DKENet (built without depth)'] = dkenet(lq)
        if 'DKENet + exact depth' in kernels:
            # how much depth moves the estimate at all: kernel PSNR between the maps with exact and flat depth
            rows.setdefault('_exact_vs_flat', []).append(
                calculate_kernel_psnr(kernels['DKENet + exact depth'], kernels['DKENet + flat depth']))
        for row, kmap in kernels.items():
            add(row, 'kernel_psnr', calculate_kernel_psnr(kmap, kgt))
            for label, nbsr in nbsrs.items():
                add(row, label, sr_psnr(nbsr(lq, kmap).clamp(0, 1), gt, scale))
        for label, nbsr in nbsrs.items():
            add('ground-truth kernels', label, sr_psnr(nbsr(lq, kgt).clamp(0, 1), gt, scale))
            curves[label].append([sr_psnr(nbsr(lq, widen_kernel_map(kgt, a)).clamp(0, 1), gt, scale)
                                  for a in WIDTH_FACTORS])
        bic = F.interpolate(lq, scale_factor=scale, mode='bicubic', align_corners=False).clamp(0, 1)
        for label in nbsrs:
            add('bicubic', label, sr_psnr(bic, gt, scale))
    return rows, curves


def table(rows, depth_note, labels=(STAGE2, )):
    """Markdown lines and CSV rows of the means, one SR column per NBSR label."""
    base = np.mean(rows['mean training kernel everywhere']['kernel_psnr'])
    md = [f'**{depth_note}**', '', '| condition | kernel PSNR (dB) | vs mean kernel (dB) | '
          + ' | '.join(f'{label} PSNR (dB)' for label in labels) + ' |', '| --- | --- | --- |' + ' --- |' * len(labels)]
    out = []
    for row, vals in rows.items():
        if row.startswith('_'):
            continue
        k = np.mean(vals['kernel_psnr']) if vals['kernel_psnr'] else None
        ps = [np.mean(vals[label]) if vals.get(label) else None for label in labels]
        gain = None if k is None else k - base
        md.append(f'| {row} | {"—" if k is None else f"{k:.2f}"} | {"—" if gain is None else f"{gain:+.2f}"} | '
                  + ' | '.join("—" if p is None else f"{p:.2f}" for p in ps) + ' |')
        out.append([row, '' if k is None else repr(float(k)), '' if gain is None else repr(float(gain))]
                   + ['' if p is None else repr(float(p)) for p in ps])
    return md, out


def width_curve_lines(curves):
    """Per NBSR: the mean SR PSNR at each width factor of the ground-truth kernels, how far the true width
    beats each end, and DEFECT lines for a flat end."""
    lines, defects = [], []
    for label, per_image in curves.items():
        means = np.mean(per_image, axis=0)
        lines.append(f'{label} given the ground-truth kernels made narrower / wider (a = '
                     + ' / '.join(f'{a:g}' for a in WIDTH_FACTORS) + '): '
                     + ' / '.join(f'{m:.2f}' for m in means) + f' dB; {describe_ends(per_image, WIDTH_FACTORS, 1.0, "a")}.')
        defects += flat_curve_defects(f'{label}\'s SR PSNR against the width of the ground-truth kernels', per_image,
                                      WIDTH_FACTORS, 1.0, 'a')
    return lines, defects


def ignored_conditions(rows):
    """Lines naming a condition whose removal leaves the numbers unchanged."""
    flat = rows.get('DKENet + flat depth')
    notes = []
    if '_exact_vs_flat' in rows:
        notes.append(f'DKENet\'s kernel maps with exact depth vs with flat depth differ by a kernel PSNR of '
                     f'{np.mean(rows["_exact_vs_flat"]):.2f} dB (inf: identical; the larger, the less depth moves the '
                     'estimate).')
    for row, vals in rows.items():
        if flat is None or row == 'DKENet + flat depth' or not row.startswith('DKENet +'):
            continue
        diff = abs(np.mean(vals['kernel_psnr']) - np.mean(flat['kernel_psnr']))
        if diff < EQUAL_DB:
            notes.append(f'DEFECT: "{row}" and "DKENet + flat depth" differ by {diff:.3f} dB kernel PSNR: the '
                         'trained DKENet ignores its depth input.')
    gt, mean = rows.get('ground-truth kernels'), rows.get('mean training kernel everywhere')
    for label in (STAGE2, STAGE3):
        if gt and mean and gt.get(label) and mean.get(label):
            diff = abs(np.mean(gt[label]) - np.mean(mean[label]))
            if diff < NBSR_EQUAL_DB:
                notes.append(f'DEFECT: {label} with ground-truth kernels and with the mean kernel everywhere differ by '
                             f'{diff:.3f} dB SR PSNR: the trained {label} ignores its kernel input.')
    return notes


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dkenet-opt', default='options/train_dkenet_demo.yml')
    parser.add_argument('--nbsr-opt', default='options/train_nbsr_demo.yml')
    parser.add_argument('--svkr-opt', default='options/train_svkr_demo.yml',
                        help="stage 3: the NBSR inside this SVKR gets a column too ('' leaves it out)")
    parser.add_argument('--val', default='datasets/demo/val_x4', help='an SSRPairedDataset folder with kernels')
    parser.add_argument('--depth-backend', default='dpt', help='dpt | depth_anything | prior')
    parser.add_argument('--depth-model-path', default='experiments/train_Depth_demo/depth_model')
    parser.add_argument('--mean-samples', type=int, default=32)
    parser.add_argument('--output', default='results/demo_conditions')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    dkenet, dkenet_opt = load_trained(args.dkenet_opt, device)
    nbsrs = {STAGE2: load_trained(args.nbsr_opt, device)[0]}
    if args.svkr_opt:
        nbsrs[STAGE3] = load_stage3_nbsr(args.svkr_opt, device)
    scale = int(dkenet_opt.get('scale', 4))
    if args.depth_backend == 'prior':
        depth_net = MonocularDepth('prior')
    else:
        if not args.depth_model_path:
            raise OptionError('--depth-model-path', args.depth_model_path, f'backend {args.depth_backend} needs '
                              'the save_pretrained folder of a depth network')
        depth_net = MonocularDepth(args.depth_backend, _abs(args.depth_model_path))
    depth_net = depth_net.to(device)
    dataset = SSRPairedDataset({'dataroot': _abs(args.val), 'scale': scale, 'phase': 'val', 'name': 'val'})
    with torch.no_grad():
        mean_kernel = mean_training_kernel(dkenet_opt, args.mean_samples)
        rows, curves = evaluate(dkenet, nbsrs, dataset, mean_kernel, depth_net, scale, device)
    note = ('depth network: ' + depth_net.source if args.depth_backend != 'prior' else
            'depth network row: the weight-free PRIOR (backend: prior), not a depth network')
    md, csv_rows = table(rows, note, tuple(nbsrs))
    name = osp.basename(osp.normpath(args.val))
    curve_lines, curve_defects = width_curve_lines(curves)
    notes = ignored_conditions(rows) + curve_defects
    lines = [f'# {name}: {len(dataset)} image(s), what each condition contributes (scripts/experiments/'
             'demo_conditions.py)', ''] + md + [''] + curve_lines + ([''] + notes if notes else [])
    out_dir = _abs(args.output)
    os.makedirs(out_dir, exist_ok=True)
    md_path, csv_path = osp.join(out_dir, f'{name}_conditions.md'), osp.join(out_dir, f'{name}_conditions.csv')
    with atomic_write(md_path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with atomic_write(csv_path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['condition', 'kernel_psnr', 'kernel_psnr_gain_over_mean']
                        + [f'psnr {label}' for label in nbsrs] + ['depth'])
        for row in csv_rows:
            writer.writerow(row + [depth_net.source if 'depth network' in row[0] else ''])
        for label, per_image in curves.items():
            for a, value in zip(WIDTH_FACTORS, np.mean(per_image, axis=0)):
                writer.writerow([f'ground-truth kernels widened by a = {a:g}', '', '']
                                + [repr(float(value)) if other == label else '' for other in nbsrs] + [''])
    print('\n'.join(lines))
    print(f'tables: {md_path}, {csv_path}')


if __name__ == '__main__':
    main()
