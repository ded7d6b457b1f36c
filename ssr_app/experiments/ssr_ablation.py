"""Paper Table 2 and Figs. 8/9 for SSR, the fusion methods side by side, the frozen prior against training from
scratch, and SSR's perception-distortion curve against its own SVKR (issue 21, items 4 and 5), in one command.

Every arm is an ``SSRModel`` built from the demo's option files (``options/train_ssr_demo.yml`` for the data,
the encoders, AMF and the training settings; ``options/test_ssr_demo.yml`` for the SVKR) on the SAME frozen
diffusion prior (``--prior``, a ``save_pretrained`` folder in Stable Diffusion's layout, by default the demo's
``experiments/train_Prior_demo/prior_model``), trained by the model's own ``optimize_parameters`` for the SAME
number of iterations on the SAME samples in the same order (per seed), and sampled by its own pipeline.

Data. Training: whole demo scenes (``datasets/demo/hr.lmdb`` + ``depth.lmdb``) degraded by the demo's training
degradation (depth-driven spatially variant blur, noise, JPEG), the demo SVKR run ONCE on each whole LR scene
(its T = 0 maps D⁰, K⁰, its T = 3 maps Dᵀ, Kᵀ and its image Iᵀ), then random crops of the demo's crop size
cut from the images and all maps alike: every arm reads the same crops, each the maps its row names. Tests:
``scenes``, held-out scenes composed from the held-out photographs (exact depth, blur driven by it, as the
demo's validation set, but 200² so that NIQE has blocks to score); ``photos``, the held-out photographs
(``default_texture_photos('test')``) centre-cropped, with the project's spatially variant blur (``mixed``
patterns; the depth the blur used is the demo depth network's); ``val``, other held-out scenes on which the
fidelity and perceptual sampling settings are chosen (never scored in the tables). Test images are sampled
whole, one seed; each arm's maps come from the SVKR run on the whole test LR image (T = 0 / T = 3), or are
the set's ground truth.

Arms (``ARMS``): LR only; LR + kernel and LR + depth (T = 0 maps, as the paper's Table 2 rows; ``lr_depth_gt``:
LR + the ground-truth depth, for the depth control, not in the full mode); LR + kernel +
depth with T = 0 maps, with SVKR's T = 3 maps (SSR) and with ground-truth maps (upper bound); the same with the
``sft`` and ``concat`` fusion methods; the same with the UNet trained from scratch (same architecture, random
weights, everything trainable, the prior's autoencoder kept frozen so both regimes decode alike); and the
same with ``network_g: lr_input: svkr`` (the LR encoder and the img2img start read the SVKR's Iᵀ). For every
trained arm each of its conditions is then removed alone at test time (flat depth 0.5, the mean kernel of the
PCA basis everywhere, the LR image blurred): an arm whose output does not move is printed as a DEFECT.
Figs. 8/9: the full arm with Kᵀ made narrower / wider (K^(1/a²), renormalised) and Dᵀ pushed nearer / farther
(D^g). Item 5: PSNR against NIQE over sampling steps and strength (``PD_GRID``, each point also with
``vae_residual``: what the VAE round trip loses on the start image added back) for the full arm and the Iᵀ arm,
with the SVKR and bicubic points; the fidelity setting (highest PSNR on ``val``) and the perceptual setting (lowest
NIQE on ``val`` among settings not below bicubic's PSNR) are reported on the test sets.

Metrics: PSNR / SSIM on Y (crop 4) and NIQE (crop 4), BasicSR's; LPIPS, MUSIQ, CLIP-IQA through
``ssr_utils.evaluation`` (pyiqa from local weights; "not run" with the reason otherwise). Seeds change the
initialisation, the order of the crops and the training noise; tables give mean ± sample standard deviation.

    python scripts/experiments/ssr_ablation.py --tiny --out /tmp/abl   # seconds: every code path, toy sizes
    python scripts/experiments/ssr_ablation.py --quick                 # LR only vs SSR, one seed, 30 iterations
    OMP_NUM_THREADS=1 nohup python scripts/experiments/ssr_ablation.py --threads 1 > /tmp/ssr_ablation.log 2>&1 &

The sizes (``MODES``): the full run trains 17 networks (seeds 0 and 1 for every arm but sft, concat and
scratch) for 3000 iterations each: 17 × 3000 iterations at the 0.06-0.15 s per iteration the recorded run's
tables give (one core of the 2-core CPU, 2026-12-07) is 1-2 hours of training, plus the sampling: a small
budget (3000 × batch 4 of 32² crops; the paper states none) on a prior trained on that CPU (docs/diffusion.md
says what that shows and what not); ``--iters`` shortens it (the 250- and 1000-iteration runs in
docs/evidence/ssr_ablation). ``--quick`` (30 iterations) checks the wiring in about a minute. On a shared
machine use one thread: with two, training stalled for minutes at a time (0.15 s per iteration with one thread
against up to 9 s with two, measured in the 250-iteration run).

The quick and the full run end with the line
``full vs LR only: +X dB PSNR; SSR vs SVKR at fidelity setting: +Y dB; removing depth: -Z dB, removing kernel: -W dB``
(held-out scenes; signed differences). Outputs in ``--out`` (default ``results/ssr_ablation[_quick]``):
``ssr_ablation.json`` (every number), ``ssr_ablation.md`` (the tables), ``deviation.png`` (Figs. 8/9),
``pd_curve.png``; ``cache/`` and ``arms/`` keep the data and the trained arms, so a rerun resumes.
"""
import argparse
import copy
import json
import math
import os
import os.path as osp
import sys
import time
from collections import OrderedDict

from ssr_utils.install import project_root  # noqa: E402

ROOT = project_root()  # relative paths of the options are the checkout's

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import ssr_arch  # noqa: E402,F401  (registers)
import ssr_models  # noqa: E402,F401
from basicsr.archs import build_network  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from ssr_app.tools.make_sv_testset import make_sv_testset  # noqa: E402
from ssr_arch.depth_arch import MonocularDepth  # noqa: E402
from ssr_arch.ssr_unet_arch import MODALITIES, tiny_config  # noqa: E402
from ssr_data.degradations import kernel_distribution_options  # noqa: E402
from ssr_data.kernels import KernelPCA, check_focus_plane, random_kernels  # noqa: E402
from ssr_data.scenes import SceneGenerator, default_texture_photos  # noqa: E402
from ssr_data.ssr_degradation_dataset import SSRDegradationDataset  # noqa: E402
from ssr_data.ssr_paired_dataset import SSRPairedDataset  # noqa: E402
from ssr_pipelines.builder import SCHEDULE_KEYS, build_svkr_from_options  # noqa: E402
from ssr_pipelines.pipeline_ssr import upsample_lr  # noqa: E402
from ssr_utils.atomic_file import atomic_torch_save, atomic_write  # noqa: E402
from ssr_utils.errors import OptionError  # noqa: E402
from ssr_utils.evaluation import MetricSuite  # noqa: E402

SCALE = 4
ALL = list(MODALITIES)  # kernel, depth, lr: the paper's AMF order
# name -> (label, modalities, maps the arm trains and is tested with, options of network_g, regime)
ARMS = OrderedDict([
    ('lr_only', ('LR only', ['lr'], None, {}, 'prior')),
    ('lr_kernel', ('LR + kernel (T = 0)', ['kernel', 'lr'], 't0', {}, 'prior')),
    ('lr_depth', ('LR + depth (T = 0)', ['depth', 'lr'], 't0', {}, 'prior')),
    ('lr_depth_gt', ('LR + depth (ground truth)', ['depth', 'lr'], 'gt', {}, 'prior')),
    ('full_t0', ('LR + kernel + depth, T = 0', ALL, 't0', {}, 'prior')),
    ('full', ('LR + kernel + depth, SVKR T = 3 (SSR)', ALL, 't3', {}, 'prior')),
    ('full_gt', ('LR + kernel + depth, ground-truth maps', ALL, 'gt', {}, 'prior')),
    ('sft', ('SSR, fusion sft', ALL, 't3', {'fusion': 'sft'}, 'prior')),
    ('concat', ('SSR, fusion concat', ALL, 't3', {'fusion': 'concat'}, 'prior')),
    ('scratch', ('SSR, UNet from scratch', ALL, 't3', {}, 'scratch')),
    ('full_it', ('SSR, LR encoder reads Iᵀ', ALL, 't3', {'lr_input': 'svkr'}, 'prior')),
])
TEST_SETS = ('scenes', 'photos')
TEST_SEED, VAL_SEED = 2100, 2200  # held-out scenes (the demo's validation set uses seed 1)
KERNEL_WIDTHS = (0.5, 0.7, 1.0, 1.4, 2.0)  # Fig. 8: every kernel narrower (< 1) or wider (> 1) by this factor
DEPTH_GAMMAS = (0.4, 0.63, 1.0, 1.6, 2.5)  # Fig. 9: D^g, g < 1 nearer, g > 1 farther
FLAT_DEPTH = 0.5
LR_BLUR_SIGMA = 2.0  # LR pixels: "the LR image removed" keeps its colours, not its structure
# a removed condition that moves the output by less than half a grey level on average is not being used
DEFECT_MEAN_CHANGE = 0.5 / 255
METRICS = OrderedDict([
    ('psnr', dict(type='calculate_psnr', crop_border=SCALE, test_y_channel=True)),
    ('ssim', dict(type='calculate_ssim', crop_border=SCALE, test_y_channel=True)),
    ('niqe', dict(type='calculate_niqe', crop_border=SCALE, better='lower')),
    ('lpips', dict(type='calculate_pyiqa', metric='lpips', crop_border=SCALE, better='lower')),
    ('musiq', dict(type='calculate_pyiqa', metric='musiq')),
    ('clipiqa', dict(type='calculate_pyiqa', metric='clipiqa')),
])
# Sizes. Test images 200² HR: NIQE needs 2 × 2 of its 96-px blocks after the 4-px crop (below 200 its fit
# fails). A 200² image is one 6.5 CPU-s sample here, a 32² crop × 4 one 1.4 CPU-s training iteration
# (measured 2026-12-06): the budget of every mode is mostly sampling. ``extra_seeds``: more seeds for some arms,
# run after every arm's first seed; PD curve and Figs. 8/9 on an arm's first seed.
# the perception-distortion grid: (sampling steps, strength, vae_residual); a strength s runs int(steps · s) steps
# from the LR latent noised to that point (one step for every point below 1)
PD_GRID = ((1, 1.0, False), (4, 0.5, False), (4, 0.25, False), (10, 0.1, False), (20, 0.05, False),
           (4, 0.25, True), (10, 0.1, True), (20, 0.05, True))
MODES = {
    'tiny': dict(iters=2, batch=2, seeds=(0, ), extra_seeds={'full': (1, )}, arms=tuple(ARMS), pool_scenes=None, draws=1,
                 crops=4, crop=32, scenes=1, val=1, photos=1, size=32, removal_images=1, table_steps=1,
                 pd=((1, 1.0, False), (2, 0.5, True)), widths=(0.7, 1.4), gammas=(0.63, 1.6), deviation_images=1),
    'quick': dict(iters=30, batch=4, seeds=(0, ), extra_seeds={}, arms=('lr_only', 'full'), pool_scenes=32,
                  draws=1, crops=8, crop=32, scenes=2, val=1, photos=1, size=200, removal_images=2,
                  table_steps=None, pd=((1, 1.0, False), (4, 0.5, False), (4, 0.25, False), (10, 0.1, False),
                                        (10, 0.1, True)), widths=(0.5, 1.0, 2.0),
                  gammas=(0.4, 1.0, 2.5), deviation_images=1),
    'full': dict(iters=3000, batch=4, seeds=(0, ),
                 extra_seeds={a: (1, ) for a in ('lr_only', 'full', 'full_it', 'lr_kernel', 'lr_depth', 'full_t0',
                                                 'full_gt')},
                 arms=('lr_only', 'full', 'full_it', 'lr_kernel', 'lr_depth', 'full_t0', 'full_gt', 'sft', 'concat',
                       'scratch'),
                 pool_scenes=64, draws=1, crops=8, crop=32, scenes=2, val=1, photos=2, size=200, removal_images=1,
                 table_steps=None, pd=PD_GRID, widths=(0.5, 1.0, 2.0),
                 gammas=(0.4, 1.0, 2.5), deviation_images=1),
}


def seeds_of(arm, cfg):
    """The seeds an arm is trained with: the mode's, then its extra ones."""
    return tuple(cfg['seeds']) + tuple(s for s in cfg['extra_seeds'].get(arm, ()) if s not in cfg['seeds'])


def arms_in_order(cfg):
    """The mode's arms in the tables' order (``ARMS``)."""
    return [a for a in ARMS if a in cfg['arms']]


def log(msg=''):
    print(msg, flush=True)


def rel(path):
    return path if osp.isabs(path) else osp.join(ROOT, path)


def load_yaml(path):
    with open(rel(path)) as f:
        return yaml.safe_load(f)


# ---------------------------------------------------------------------------------------------- resources
def tiny_resources(work):
    """Toy stand-ins for what the real run reads (a random prior in SD's layout, a random SVKR with the depth
    prior, a random kernel PCA, a few training scenes): the same code, numbers that mean nothing."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from ssr_app.tools.make_scene_data import make_scene_data
    os.makedirs(work, exist_ok=True)
    cfg = tiny_config()
    prior = osp.join(work, 'prior')
    if not osp.isfile(osp.join(prior, 'model_index.json')):
        torch.manual_seed(0)
        UNet2DConditionModel(**cfg['unet']).save_pretrained(osp.join(prior, 'unet'))
        AutoencoderKL(**cfg['vae']).save_pretrained(osp.join(prior, 'vae'))
        # v-prediction, as the demo's prior: not DDPMScheduler's default, so an arm that lost the prior's schedule
        # would show it (tests/test_ssr_ablation.py)
        DDPMScheduler(num_train_timesteps=100, prediction_type='v_prediction').save_pretrained(
            osp.join(prior, 'scheduler'))
        with atomic_write(osp.join(prior, 'model_index.json'), 'w') as f:
            json.dump({'_class_name': 'StableDiffusionPipeline'}, f)
    pca_path = osp.join(work, 'kernel_pca.pth')
    if not osp.isfile(pca_path):
        KernelPCA.fit(random_kernels(300, kernel_size=21, seed=0).reshape(300, -1), 10).save(pca_path)
    svkr_opt = dict(type='SVKR', num_iter=3, gamma=0.9, use_depth=True, scale=SCALE, kernel_size=21,
                    depth_opt=dict(type='MonocularDepth', backend='prior'),
                    kernel_opt=dict(type='DKENet', num_feat=[8, 16], num_depth_feat=[4, 8], reduction=2),
                    sr_opt=dict(type='NBSR', num_feat=8, num_block=1, num_grow_ch=4, num_cond=8, pca_path=pca_path))
    svkr_ckpt = osp.join(work, 'svkr.pth')
    if not osp.isfile(svkr_ckpt):
        torch.manual_seed(0)
        state = build_network(copy.deepcopy(svkr_opt)).state_dict()
        atomic_torch_save({'params': state, 'params_ema': state}, svkr_ckpt)
    scenes = osp.join(work, 'scenes')
    if not osp.isfile(osp.join(scenes, 'scenes.json')):
        make_scene_data(scenes, 3, (64, 64), seed=0, split='train', fmt='folder', overwrite=True, show_progress=False)
    net = dict(type='SSRUNet', modalities=ALL, kernel_code_channels=10, kernel_size=21, pca_path=pca_path,
               null_text='zeros', null_text_length=cfg['null_text_length'], lr_encoder=cfg['lr_encoder'],
               map_encoder=cfg['map_encoder'], amf=cfg['amf'])
    dataset = dict(name='tiny', type='SSRDegradationDataset', dataroot_gt=osp.join(scenes, 'image'),
                   dataroot_depth=osp.join(scenes, 'depth'), gt_size=32, scale=SCALE, kernel_size=21)
    train = dict(ema_decay=0.9, optim_g=dict(type='AdamW', lr=1e-3, weight_decay=0), lambda_kernel=0.1,
                 lambda_depth=0.1, lambda_lr=0.1, grad_clip=1.0)
    sampling = dict(sampler='dpmsolver++', num_inference_steps=1, seed=0, color_fix='wavelet')
    return dict(prior=prior, pca_path=pca_path, svkr_opt=svkr_opt, svkr_ckpt=svkr_ckpt, net=net, dataset=dataset,
                train=train, sampling=sampling, depth_opt=svkr_opt['depth_opt'], tiny=True)


def demo_resources(args):
    """What the real run reads: the demo's option files, its trained SVKR and depth network, the prior."""
    train_opt, test_opt = load_yaml(args.train_opt), load_yaml(args.test_opt)
    prior = rel(args.prior)
    svkr_ckpt = rel(args.svkr_ckpt or test_opt['path']['pretrain_network_svkr'])
    svkr_opt = copy.deepcopy(test_opt['network_svkr'])
    depth_opt = svkr_opt.get('depth_opt') or {}
    if args.depth_model:
        depth_opt['model_path'] = args.depth_model
    if depth_opt.get('model_path'):
        depth_opt['model_path'] = rel(depth_opt['model_path'])
    svkr_opt['depth_opt'] = depth_opt
    if svkr_opt.get('sr_opt', {}).get('pca_path'):
        svkr_opt['sr_opt']['pca_path'] = rel(svkr_opt['sr_opt']['pca_path'])
    needed = [('the diffusion prior', osp.join(prior, 'unet', 'config.json'),
               'python basicsr/train.py -opt options/train_prior_demo.yml (or --prior <a diffusers-layout folder>)'),
              ('the demo SVKR', svkr_ckpt, 'python scripts/demo.py (its SVKR stage), or --svkr-ckpt'),
              ('the demo data', rel(train_opt['datasets']['train']['dataroot_gt']),
               'python scripts/prepare_demo_data.py')]
    if depth_opt.get('backend', 'prior') != 'prior':
        needed.append(('the demo depth network', depth_opt.get('model_path') or '',
                       'python scripts/demo.py (its depth stage), or --depth-model'))
    missing = [(what, path, how) for what, path, how in needed if not osp.exists(path)]
    if missing:
        raise SystemExit('ssr_ablation: missing ' + '; '.join(f'{w} ({p}): {h}' for w, p, h in missing))
    net = copy.deepcopy(train_opt['network_g'])
    for key in ('unet', 'vae', 'pretrained_path', 'freeze_unet', 'freeze_vae'):  # the arms' regime sets these
        net.pop(key, None)
    net['pca_path'] = rel(net['pca_path'])
    dataset = copy.deepcopy(train_opt['datasets']['train'])
    for key in ('dataroot_gt', 'dataroot_depth'):
        dataset[key] = rel(dataset[key])
    train = {k: v for k, v in train_opt['train'].items()
             if k in ('ema_decay', 'optim_g', 'lambda_kernel', 'lambda_depth', 'lambda_lr', 'grad_clip', 'amp')}
    diff = test_opt.get('diffusion') or {}
    sampling = {k: diff[k] for k in ('sampler', 'num_inference_steps', 'seed', 'color_fix') if k in diff}
    return dict(prior=prior, pca_path=net['pca_path'], svkr_opt=svkr_opt, svkr_ckpt=svkr_ckpt, net=net,
                dataset=dataset, train=train, sampling=sampling, depth_opt=depth_opt, tiny=False)


def load_svkr(res):
    svkr = build_svkr_from_options(res['svkr_opt'], {'pretrain_network_svkr': res['svkr_ckpt']})
    return svkr.eval().requires_grad_(False)


def prior_configs(prior):
    """The prior folder's UNet and VAE configs, and ``schedule``: its noise schedule's keys of
    ``builder.SCHEDULE_KEYS`` (as an option file's ``diffusion`` block would give them)."""
    out = {}
    for part in ('unet', 'vae'):
        with open(osp.join(prior, part, 'config.json')) as f:
            out[part] = {k: v for k, v in json.load(f).items() if not k.startswith('_')}
    sched = osp.join(prior, 'scheduler', 'scheduler_config.json')
    out['schedule'] = {}
    if osp.isfile(sched):
        with open(sched) as f:
            out['schedule'] = {k: v for k, v in json.load(f).items() if k in SCHEDULE_KEYS}
    return out


# ---------------------------------------------------------------------------------------------- data
@torch.no_grad()
def svkr_outputs(svkr, pca, lq, batch=8):
    """The SVKR on whole LR images: T = 0 and T = 3 maps (depth, kernel PCA code) and Iᵀ."""
    keys = ('t0_depth', 't0_code', 't3_depth', 't3_code', 'svkr_sr')
    out = {k: [] for k in keys}
    for i in range(0, lq.shape[0], batch):
        res = svkr(lq[i:i + batch], return_all=True)
        out['t0_depth'].append(res['depths'][0].float())
        out['t0_code'].append(pca.encode(res['kernels'][0].float()))
        out['t3_depth'].append(res['depth'].float())
        out['t3_code'].append(pca.encode(res['kernel'].float()))
        out['svkr_sr'].append(res['sr'].float().clamp(0, 1))
    return {k: torch.cat(v) for k, v in out.items()}


POOL_KEYS = ('lq', 'gt', 'gt_depth', 'gt_code', 't0_depth', 't0_code', 't3_depth', 't3_code', 'svkr_sr')


def append_crop(pool, y, x, lcrop, lq, gt, lr_maps, svkr_sr):
    """Append to ``pool`` (lists under ``POOL_KEYS``) the ``lcrop``² LR crop at (y, x) of one image: ``lq``
    (3×h×w), ``gt`` (3×H×W in [0, 1], stored uint8), every map of ``lr_maps`` (key -> C×h×w), and ``svkr_sr``
    (3×H×W, stored float16) at the matching HR box."""
    lr_box = (slice(None), slice(y, y + lcrop), slice(x, x + lcrop))
    hr_box = (slice(None), slice(y * SCALE, (y + lcrop) * SCALE), slice(x * SCALE, (x + lcrop) * SCALE))
    pool['lq'].append(lq[lr_box])
    pool['gt'].append((gt[hr_box] * 255).round().to(torch.uint8))
    for key, value in lr_maps.items():
        pool[key].append(value[lr_box])
    pool['svkr_sr'].append(svkr_sr[hr_box].half())


def build_pool(res, cfg, svkr, pca, cache):
    """Training crops: whole scenes degraded (``draws`` per scene, seeded), the SVKR run on each whole LR scene,
    ``crops`` random crops per draw cut from the images and every map alike."""
    if osp.isfile(cache):
        return torch.load(cache, weights_only=True)
    opt = dict(res['dataset'], gt_size=None, seed=0, phase='train')
    crop = cfg['crop'] or res['dataset']['gt_size']
    lcrop = crop // SCALE
    pool = {k: [] for k in POOL_KEYS}
    rng = np.random.default_rng(0)
    start = time.time()
    for draw in range(cfg['draws']):
        dataset = SSRDegradationDataset(dict(opt, seed=1000 * draw))
        count = min(len(dataset), cfg['pool_scenes'] or len(dataset))
        for first in range(0, count, 16):
            samples = [dataset[i] for i in range(first, min(first + 16, count))]
            sizes = {tuple(s['lq'].shape[-2:]) for s in samples}
            for size in sizes:  # same-size scenes go through the SVKR together
                group = [s for s in samples if tuple(s['lq'].shape[-2:]) == size]
                lq = torch.stack([s['lq'] for s in group])
                maps = svkr_outputs(svkr, pca, lq)
                for j, s in enumerate(group):
                    h, w = size
                    lr_maps = dict(gt_depth=s['depth_lq'], gt_code=pca.encode(s['kernel'][None].float())[0],
                                   **{k: maps[k][j] for k in ('t0_depth', 't0_code', 't3_depth', 't3_code')})
                    for _ in range(cfg['crops']):
                        y, x = int(rng.integers(0, h - lcrop + 1)), int(rng.integers(0, w - lcrop + 1))
                        append_crop(pool, y, x, lcrop, s['lq'], s['gt'], lr_maps, maps['svkr_sr'][j])
        log(f'  pool: draw {draw + 1}/{cfg["draws"]}, {len(pool["lq"])} crops ({time.time() - start:.0f} s)')
    pool = {k: torch.stack(v).contiguous() for k, v in pool.items()}
    atomic_torch_save(pool, cache)
    return pool


def write_test_sets(res, cfg, data_dir, depth_net):
    """``scenes`` / ``val`` (held-out scenes, exact depth, blur driven by it, with the training data's focus
    plane: ``res['dataset']['focus_plane']``, default drawn per image) and ``photos`` (held-out photographs
    centre-cropped, mixed spatially variant blur, the depth network's depth) as test-set folders."""
    size = cfg['size']
    folders = {}
    gen = None
    for name, seed, count in (('scenes', TEST_SEED, cfg['scenes']), ('val', VAL_SEED, cfg['val'])):
        folder = osp.join(data_dir, f'{name}_x{SCALE}')
        folders[name] = folder
        if osp.isfile(osp.join(folder, 'meta.json')):
            continue
        gen = gen or SceneGenerator(default_texture_photos('test'), (size, size))
        images, depths = [], {}
        for i in range(count):
            rgb, depth, _ = gen.generate((seed, i))
            images.append((f'{name}_{i:03d}', np.ascontiguousarray(rgb[:, :, ::-1])))
            depths[f'{name}_{i:03d}'] = depth
        make_sv_testset(images, folder, scale=SCALE, kernel_size=21, pattern='depth', seed=seed, depth_maps=depths,
                        show_progress=False, report=None, focus_plane=res['dataset'].get('focus_plane'))
    folder = osp.join(data_dir, f'photos_x{SCALE}')
    folders['photos'] = folder
    if not osp.isfile(osp.join(folder, 'meta.json')):
        images = []
        for photo in default_texture_photos('test')[:cfg['photos']]:
            rgb = photo.rgb if photo.rgb.ndim == 3 else np.stack([photo.rgb] * 3, 2)
            h, w = rgb.shape[:2]
            side = min(size, h - h % SCALE, w - w % SCALE)
            top, left = (h - side) // 2, (w - side) // 2
            images.append((photo.name, np.ascontiguousarray(rgb[top:top + side, left:left + side, ::-1])))
        make_sv_testset(images, folder, scale=SCALE, kernel_size=21, pattern='mixed', seed=TEST_SEED,
                        depth_net=depth_net, show_progress=False, report=None)
    return folders


def load_test_set(folder, svkr, pca, keep_kernels=False, cache=None):
    """Items of a test-set folder with the maps of every source: ``gt`` (the set's), ``t0`` / ``t3`` (the SVKR
    on the whole LR image) as ``(depth, kernel code)``, and the SVKR's Iᵀ (kept in ``cache`` when given)."""
    if cache and osp.isfile(cache):
        return torch.load(cache, weights_only=True)
    dataset = SSRPairedDataset(dict(dataroot=folder, scale=SCALE, phase='val', name=osp.basename(folder)))
    items = []
    for i in range(len(dataset)):
        s = dataset[i]
        lq = s['lq'][None]
        out = svkr_outputs(svkr, pca, lq)
        item = dict(name=osp.splitext(osp.basename(s['lq_path']))[0], lq=lq, gt=s['gt'][None],
                    maps=dict(gt=(s['depth_lq'][None].float(), pca.encode(s['kernel'][None].float())),
                              t0=(out['t0_depth'], out['t0_code']), t3=(out['t3_depth'], out['t3_code'])),
                    svkr_sr=out['svkr_sr'])
        if keep_kernels:
            with torch.no_grad():
                item['t3_kernel'] = svkr(lq)['kernel'].float()
        items.append(item)
    if cache:
        atomic_torch_save(items, cache)
    return items


# ---------------------------------------------------------------------------------------------- arms
def arm_options(name, res, cfg, seed, work, ckpt=None):
    label, modalities, maps, net_extra, regime = ARMS[name]
    net = copy.deepcopy(res['net'])
    net.update(modalities=list(modalities), kernel_distribution=kernel_distribution_options(res['dataset']),
               **net_extra)
    if net.get('fusion') == 'sft':
        net['fusion_opt'] = dict(hidden=(net.get('amf') or {}).get('hidden', 128))
    diffusion = dict(res['sampling'])
    if regime == 'scratch':
        cfgs = prior_configs(res['prior'])
        net.update(unet=cfgs['unet'], vae=cfgs['vae'], freeze_vae=True)
        # the prior's noise schedule and prediction type (a frozen prior brings its own): the regimes differ in the
        # UNet's starting weights only
        diffusion.update(cfgs['schedule'])
    else:
        net['pretrained_path'] = res['prior']
    train = copy.deepcopy(res['train'])
    train.update(scheduler=dict(type='CosineAnnealingRestartLR', periods=[cfg['iters']], restart_weights=[1],
                                eta_min=1e-6), total_iter=cfg['iters'], warmup_iter=-1)
    for sub in ('models', 'training_states', 'visualization'):
        os.makedirs(osp.join(work, sub), exist_ok=True)
    opt = dict(name=f'ablation_{name}_s{seed}', model_type='SSRModel', scale=SCALE, num_gpu=0,
               is_train=ckpt is None, dist=False, rank=0, world_size=1, manual_seed=seed, network_g=net,
               conditions=dict(source='gt', val_source='gt'), diffusion=diffusion,
               path=dict(models=osp.join(work, 'models'), training_states=osp.join(work, 'training_states'),
                         visualization=osp.join(work, 'visualization'), pretrain_network_g=ckpt,
                         param_key_g='params'),
               train=train)
    if net.get('lr_input') == 'svkr':
        opt['network_svkr'] = copy.deepcopy(res['svkr_opt'])
        opt['path'].update(pretrain_network_svkr=res['svkr_ckpt'], param_key_svkr='params_ema')
    return opt


def batch_of(pool, idx, maps, lr_input, pca):
    batch = dict(lq=pool['lq'][idx], gt=pool['gt'][idx].float() / 255)
    if maps is not None:
        depth, code = (pool['gt_depth'], pool['gt_code']) if maps == 'gt' else \
            (pool[f'{maps}_depth'], pool[f'{maps}_code'])
        batch.update(depth_lq=depth[idx], kernel=pca.decode(code[idx]))
    if lr_input == 'svkr':
        batch['svkr_sr'] = pool['svkr_sr'][idx].float()
    return batch


def train_arm(name, seed, res, cfg, pool, pca, arms_dir):
    """Train one arm (or reuse its saved EMA weights); returns (checkpoint, training record)."""
    ckpt = osp.join(arms_dir, f'{name}_s{seed}.pth')
    record_path = osp.join(arms_dir, f'{name}_s{seed}_train.json')
    if osp.isfile(ckpt) and osp.isfile(record_path):
        with open(record_path) as f:
            return ckpt, json.load(f)
    _, modalities, maps, net_extra, regime = ARMS[name]
    torch.manual_seed(seed)
    model = build_model(arm_options(name, res, cfg, seed, osp.join(arms_dir, 'work')))
    net = model.bare_g
    if regime == 'scratch':  # the prior's autoencoder, frozen, so both regimes decode alike
        from diffusers import AutoencoderKL
        net.vae.load_state_dict(AutoencoderKL.from_pretrained(osp.join(res['prior'], 'vae'),
                                                             low_cpu_mem_usage=False).state_dict())
    n_train, n_total = net.parameter_counts()
    gen = torch.Generator().manual_seed(seed)
    n = pool['lq'].shape[0]
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(cfg['iters'] * cfg['batch'] // n + 1)])
    losses, start = [], time.time()
    for it in range(1, cfg['iters'] + 1):
        idx = order[(it - 1) * cfg['batch']:it * cfg['batch']]
        model.update_learning_rate(it, warmup_iter=-1)
        model.feed_data(batch_of(pool, idx, maps, net_extra.get('lr_input'), pca))
        model.optimize_parameters(it)
        losses.append(float(model.log_dict['l_eps']))
        if it % max(1, cfg['iters'] // 5) == 0:
            log(f'    {name} s{seed}: iter {it}/{cfg["iters"]}, l_eps {np.mean(losses[-50:]):.4f} '
                f'({time.time() - start:.0f} s)')
    seconds = time.time() - start
    atomic_torch_save({'params': model.network_g_state(use_ema=True)}, ckpt)
    record = dict(seconds=seconds, s_per_iter=seconds / cfg['iters'], trainable=n_train, total=n_total,
                  l_eps_first=float(np.mean(losses[:20])), l_eps_last=float(np.mean(losses[-50:])))
    with atomic_write(record_path, 'w') as f:
        json.dump(record, f)
    return ckpt, record


def eval_model(name, seed, res, cfg, ckpt, arms_dir):
    """The arm's trained network, loaded as a test-time SSRModel (no EMA bookkeeping: the saved weights are the
    EMA's)."""
    torch.manual_seed(seed)
    model = build_model(arm_options(name, res, cfg, seed, osp.join(arms_dir, 'work'), ckpt=ckpt))
    model.bare_g.eval()
    return model


@torch.no_grad()
def sample(model, pca, item, maps, steps, strength, lq=None, depth=None, code=None, vae_residual=False):
    """One test image through the model's pipeline with the arm's maps (or the ones given)."""
    net = model.bare_g
    kw = {}
    if maps is not None:
        d, c = item['maps'][maps]
        d = d if depth is None else depth
        c = c if code is None else code
        if 'depth' in net.modalities:
            kw['depth'] = d
        if 'kernel' in net.modalities:
            kw['kernel'] = pca.decode(c)
    out = model.pipeline(item['lq'] if lq is None else lq, num_inference_steps=steps, strength=strength, seed=0,
                         vae_residual=vae_residual, **kw)
    return out.images


def to_bgr(img):
    return tensor2img(img.float().cpu(), rgb2bgr=True, min_max=(0, 1))


def score_set(suite, outputs, items):
    """Per-image scores and their means (None where a metric could not run)."""
    per = [suite.score(to_bgr(o), to_bgr(it['gt'])) for o, it in zip(outputs, items)]
    means = OrderedDict()
    for key in suite.names:
        vals = [p[key] for p in per if p[key] is not None]
        means[key] = float(np.mean(vals)) if vals else None
    return means, per


def widen(kernel, factor):
    """Every kernel of the map narrower (< 1) or wider (> 1) by ``factor``: K^(1/a²), renormalised (exact for
    Gaussians)."""
    k = kernel.clamp_min(0).pow(1.0 / factor**2)
    return k / k.sum(1, keepdim=True).clamp_min(1e-12)


def blur_lr(lq, sigma=LR_BLUR_SIGMA):
    r = int(math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    c = lq.shape[1]
    pad = F.pad(lq, (r, r, r, r), mode='replicate')
    out = F.conv2d(pad, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def removals(modalities):
    """The test-time removals that apply to an arm: ``(key, label)``."""
    return [(m, {'kernel': 'mean kernel', 'depth': f'flat depth {FLAT_DEPTH}', 'lr': 'blurred LR'}[m])
            for m in ('kernel', 'depth', 'lr') if m in modalities]


def run_removed(model, pca, item, maps, steps, what):
    d, c = item['maps'][maps] if maps is not None else (None, None)
    if what == 'depth':
        return sample(model, pca, item, maps, steps, 1.0, depth=torch.full_like(d, FLAT_DEPTH))
    if what == 'kernel':
        return sample(model, pca, item, maps, steps, 1.0, code=torch.zeros_like(c))  # the PCA mean kernel
    return sample(model, pca, item, maps, steps, 1.0, lq=blur_lr(item['lq']))


def evaluate_arm(name, model, pca, tests, steps, suite, deviation=None, pd=None, val=None, removal_images=None):
    """Table metrics on every test set, every removal, and for the full arms Figs. 8/9 and the PD curve."""
    _, modalities, maps, _, _ = ARMS[name]
    res = OrderedDict()
    for set_name, items in tests.items():
        outputs = [sample(model, pca, it, maps, steps, 1.0) for it in items]
        means, per = score_set(suite, outputs, items)
        entry = dict(metrics=means, per_image=[dict(name=it['name'], **p) for it, p in zip(items, per)],
                     removed=OrderedDict())
        for what, label in (removals(modalities) if set_name == 'scenes' else ()):
            few = items[:removal_images]
            removed = [run_removed(model, pca, it, maps, steps, what) for it in few]
            rmeans, _ = score_set(suite, removed, few)
            kept = [p['psnr'] for p in per[:len(few)]]
            entry['removed'][what] = dict(
                label=label, images=len(few), psnr=rmeans['psnr'], delta_psnr=rmeans['psnr'] - float(np.mean(kept)),
                max_abs_change=max(float((a - b).abs().max()) for a, b in zip(removed, outputs)),
                mean_abs_change=float(np.mean([float((a - b).abs().mean()) for a, b in zip(removed, outputs)])))
        res[set_name] = entry
    if deviation is not None:
        n = deviation['images']
        res['deviation'] = deviation_rows(model, pca, tests['scenes'][:n], steps, suite, deviation['widths'],
                                          deviation['gammas'],
                                          float(np.mean([p['psnr'] for p in res['scenes']['per_image'][:n]])))
    if pd is not None:
        res['pd'] = pd_rows(model, pca, val, tests, maps, pd, suite)
    return res


def deviation_rows(model, pca, items, steps, suite, widths, gammas, unchanged=None):
    """Figs. 8/9 on SSR: PSNR with Kᵀ made narrower / wider and Dᵀ pushed nearer / farther. ``unchanged``: the
    PSNR of the maps as they are (the table's), used for the factor 1 instead of sampling it again."""
    rows = dict(kernel=OrderedDict(), depth=OrderedDict())
    for a in widths:
        if a == 1 and unchanged is not None:
            rows['kernel'][str(a)] = unchanged
            continue
        outs = [sample(model, pca, it, 't3', steps, 1.0, code=pca.encode(widen(it['t3_kernel'], a))) for it in items]
        rows['kernel'][str(a)] = score_set(suite, outs, items)[0]['psnr']
    for g in gammas:
        if g == 1 and unchanged is not None:
            rows['depth'][str(g)] = unchanged
            continue
        outs = [sample(model, pca, it, 't3', steps, 1.0, depth=it['maps']['t3'][0].clamp(0, 1).pow(g)) for it in items]
        rows['depth'][str(g)] = score_set(suite, outs, items)[0]['psnr']
    return rows


def pd_rows(model, pca, val, tests, maps, grid, suite):
    """PSNR and NIQE over the ``grid`` of (steps, strength, vae_residual) on ``val`` (where the settings are chosen)
    and the tests."""
    rows = []
    for steps, strength, vae_residual in grid:
        row = dict(steps=steps, strength=strength, vae_residual=vae_residual)
        for set_name, items in [('val', val)] + list(tests.items()):
            outs = [sample(model, pca, it, maps, steps, strength, vae_residual=vae_residual) for it in items]
            means, _ = score_set(suite, outs, items)
            row[set_name] = dict(psnr=means['psnr'], ssim=means['ssim'], niqe=means['niqe'])
        rows.append(row)
    return rows


def setting_label(row):
    """``steps/strength``, ``+r`` with the VAE residual."""
    return f'{row["steps"]}/{row["strength"]:g}' + ('+r' if row.get('vae_residual') else '')


def choose_settings(rows, bicubic_val_psnr):
    """Fidelity: the highest PSNR on ``val``; perceptual: the lowest NIQE on ``val`` among settings whose PSNR
    is not below bicubic's (None when NIQE could not run)."""
    fidelity = max(rows, key=lambda r: r['val']['psnr'])
    ok = [r for r in rows if r['val']['niqe'] is not None and r['val']['psnr'] >= bicubic_val_psnr]
    perceptual = min(ok, key=lambda r: r['val']['niqe']) if ok else None
    return fidelity, perceptual


# ---------------------------------------------------------------------------------------------- report
def stat(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def fmt(values, digits=2):
    m, s = stat(values)
    if m is None:
        return 'n/a'
    return f'{m:.{digits}f}' + (f' ± {s:.{digits}f}' if s is not None else '')


def baseline_rows(tests, suite, prior=None):
    """Bicubic and the SVKR's Iᵀ; with ``prior``, the prior's autoencoder round trip (encode, decode) of the HR
    image and of Iᵀ: what any output decoded by that VAE, and an img2img start from Iᵀ, can reach at best."""
    rows = OrderedDict()
    fns = [('Bicubic', lambda it: upsample_lr(it['lq'], it['gt'].shape[-2:])),
           ('SVKR (Iᵀ, T = 3)', lambda it: it['svkr_sr'])]
    if prior is not None:
        from diffusers import AutoencoderKL
        vae = AutoencoderKL.from_pretrained(osp.join(prior, 'vae'), low_cpu_mem_usage=False).eval()

        @torch.no_grad()
        def round_trip(img):
            return ((vae.decode(vae.encode(img * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)

        fns += [('VAE round trip of HR (prior\'s autoencoder)', lambda it: round_trip(it['gt'])),
                ('VAE round trip of Iᵀ', lambda it: round_trip(it['svkr_sr']))]
    for label, fn in fns:
        rows[label] = {s: score_set(suite, [fn(it) for it in items], items)[0] for s, items in tests.items()}
    return rows


def make_tables(results, baselines, records, cfg, suite, mode, not_run):
    crop = f'{cfg["crop"]}²' if cfg['crop'] else 'the demo\'s'
    lines = [f'Mean ± sample std over an arm\'s seeds (column "seeds"), {cfg["iters"]} iterations × batch '
             f'{cfg["batch"]} of {crop} HR crops per arm, test images {cfg["size"]}² HR; '
             f'sampling: {results["table_setting"]}.', '']
    head = '| arm | seeds | trainable params | ' + ' | '.join(
        f'{s} PSNR | {s} SSIM | {s} NIQE' for s in TEST_SETS) + ' |'
    lines += [head, '|' + ' --- |' * (3 + 3 * len(TEST_SETS))]
    for label, row in baselines.items():
        cells = []
        for s in TEST_SETS:
            m = row[s]
            cells += [f'{m["psnr"]:.2f}', f'{m["ssim"]:.3f}', 'n/a' if m['niqe'] is None else f'{m["niqe"]:.2f}']
        lines.append(f'| {label} | | | ' + ' | '.join(cells) + ' |')
    for name in arms_in_order(cfg):
        rec = records[name]
        tr = rec[0]
        seeds = list(results['arms'][name])
        cells = []
        for s in TEST_SETS:
            runs = [results['arms'][name][seed][s]['metrics'] for seed in seeds]
            cells += [fmt([r['psnr'] for r in runs]), fmt([r['ssim'] for r in runs], 3),
                      fmt([r['niqe'] for r in runs])]
        lines.append(f'| {ARMS[name][0]} | {", ".join(seeds)} | {tr["trainable"]:,} '
                     f'({100 * tr["trainable"] / tr["total"]:.1f}%) | '
                     + ' | '.join(cells) + ' |')
    lines += ['', f'Each condition removed at test time (PSNR change on the first {cfg["removal_images"]} held-out '
              'scenes, dB; mean over seeds):', '',
              '| arm | mean kernel | flat depth | blurred LR | smallest mean change of the output (grey levels) |',
              '| --- | --- | --- | --- | --- |']
    for name in arms_in_order(cfg):
        cells = []
        changes = []
        for what in ('kernel', 'depth', 'lr'):
            vals = [r['scenes']['removed'].get(what) for r in results['arms'][name].values()]
            if vals[0] is None:
                cells.append('')
                continue
            cells.append(fmt([v['delta_psnr'] for v in vals]))
            changes += [255 * v['mean_abs_change'] for v in vals]
        lines.append(f'| {ARMS[name][0]} | ' + ' | '.join(cells) + f' | {min(changes):.2f} |')
    pd_arms = [a for a in arms_in_order(cfg) if any('pd' in r for r in results['arms'][a].values())]
    if pd_arms:
        lines += ['', 'Perception-distortion grid (sampling steps / strength, +r: with the VAE residual; PSNR / NIQE; '
                  'mean over the seeds that ran it; the settings are chosen on val):', '',
                  '| arm | setting | ' + ' | '.join(f'{s} PSNR | {s} NIQE' for s in ('val', ) + TEST_SETS) + ' |',
                  '|' + ' --- |' * (2 + 2 * (1 + len(TEST_SETS)))]
        for name in pd_arms:
            runs = [r['pd'] for r in results['arms'][name].values() if 'pd' in r]
            for i, row in enumerate(runs[0]):
                cells = []
                for s in ('val', ) + TEST_SETS:
                    cells += [fmt([r[i][s]['psnr'] for r in runs]), fmt([r[i][s]['niqe'] for r in runs])]
                lines.append(f'| {ARMS[name][0]} | {setting_label(row)} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'Not run: ' + ('; '.join(f'{k} ({v})' for k, v in not_run.items()) or 'none')]
    notes = suite.na_notes()
    if notes:
        lines += ['', 'n/a on some images:'] + notes
    return '\n'.join(lines)


# BGR; one per series of a panel (the PD panel has up to 7: four SSR curves, bicubic, SVKR, the VAE round trip)
COLOURS = ((200, 80, 30), (30, 120, 220), (40, 160, 40), (40, 40, 40), (150, 60, 160), (30, 30, 200),
           (160, 160, 0), (0, 110, 140))


def draw_panel(img, box, series, xlabel, ylabel, title, log_x=False, labels_at=None):
    """One line plot drawn with OpenCV into ``img`` (BGR uint8) at ``box`` (x0, y0, w, h). ``series``: list of
    ``(legend, xs, ys, marker)``, marker ``line`` (points joined) or ``point``; NaNs are skipped.
    ``labels_at``: legend -> a text per point."""
    x0, y0, w, h = box
    font = cv2.FONT_HERSHEY_SIMPLEX
    pts = [(x, y) for _, xs, ys, _ in series for x, y in zip(xs, ys) if np.isfinite(x) and np.isfinite(y)]
    if not pts:
        cv2.putText(img, f'{title}: nothing to plot', (x0, y0 + 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        return
    tx = (lambda v: math.log(v)) if log_x else (lambda v: v)
    xs_all, ys_all = [tx(x) for x, _ in pts], [y for _, y in pts]
    xlo, xhi = min(xs_all), max(xs_all)
    ylo, yhi = min(ys_all), max(ys_all)
    xpad, ypad = (xhi - xlo) * 0.08 or 0.5, (yhi - ylo) * 0.12 or 0.25
    xlo, xhi, ylo, yhi = xlo - xpad, xhi + xpad, ylo - ypad, yhi + ypad

    def px(x, y):
        return (int(x0 + (tx(x) - xlo) / (xhi - xlo) * w), int(y0 + h - (y - ylo) / (yhi - ylo) * h))

    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), (0, 0, 0), 1)
    for k in range(5):
        yv = ylo + (yhi - ylo) * (k + 0.5) / 5
        _, py = px(math.exp(xlo) if log_x else xlo, yv)
        cv2.line(img, (x0 - 4, py), (x0, py), (0, 0, 0), 1)
        cv2.putText(img, f'{yv:.2f}', (x0 - 48, py + 4), font, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
    ticks = sorted({x for x, _ in pts})
    for xv in ticks if len(ticks) <= 4 else [ticks[0], ticks[len(ticks) // 2], ticks[-1]]:  # no overlaps
        pxv, _ = px(xv, ylo)
        cv2.line(img, (pxv, y0 + h), (pxv, y0 + h + 4), (0, 0, 0), 1)
        cv2.putText(img, f'{xv:.3g}', (pxv - 12, y0 + h + 17), font, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (x0, y0 + h + 36), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (x0 - 48, y0 - 8), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, title, (x0 + 4, y0 - 24), font, 0.48, (0, 0, 0), 1, cv2.LINE_AA)
    for n, (legend, xs, ys, marker) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        points = [px(x, y) for x, y in zip(xs, ys) if np.isfinite(x) and np.isfinite(y)]
        if marker == 'line' and len(points) > 1:
            cv2.polylines(img, [np.array(points, np.int32)], False, colour, 2, cv2.LINE_AA)
        for k, p in enumerate(points):
            cv2.circle(img, p, 4 if marker == 'line' else 6, colour, -1, cv2.LINE_AA)
            if labels_at and legend in labels_at:
                cv2.putText(img, labels_at[legend][k], (p[0] + 5, p[1] - 5), font, 0.33, colour, 1, cv2.LINE_AA)
        cv2.putText(img, legend, (x0 + 8, y0 + 16 + 15 * n), font, 0.4, colour, 1, cv2.LINE_AA)


def plot_deviation(results, cfg, path):
    """Figs. 8/9 on SSR: PSNR of the full arm (mean over seeds) against the kernel width factor and the depth
    exponent, log x axes."""
    panel, margin = (430, 300), 70
    img = np.full((panel[1] + 2 * margin, 2 * (panel[0] + 2 * margin), 3), 255, np.uint8)
    for p, (key, xlabel, title) in enumerate((('kernel', 'kernel width factor a (K^(1/a^2))', 'Fig. 8 on SSR: kernel'),
                                              ('depth', 'depth exponent g (D^g)', 'Fig. 9 on SSR: depth'))):
        rows = [r['deviation'][key] for r in results['arms']['full'].values() if 'deviation' in r]
        keys = list(rows[0])
        ys = np.array([[row[k] for k in keys] for row in rows], dtype=float).mean(0)
        draw_panel(img, (p * (panel[0] + 2 * margin) + margin, margin, panel[0], panel[1]),
                   [('SSR (full arm), held-out scenes', [float(k) for k in keys], list(ys), 'line')], xlabel,
                   'PSNR (dB)', title, log_x=True)
    cv2.imwrite(path, img)


def plot_pd(results, baselines, cfg, path):
    """PSNR against NIQE over sampling steps / strength (labels ``steps/strength``, one curve without and one with
    the VAE residual), with bicubic, SVKR and the VAE round trip of Iᵀ."""
    panel, margin = (430, 320), 70
    img = np.full((panel[1] + 2 * margin, len(TEST_SETS) * (panel[0] + 2 * margin), 3), 255, np.uint8)
    for p, set_name in enumerate(TEST_SETS):
        series, labels = [], {}
        for name in ('full', 'full_it'):
            if name not in results['arms']:
                continue
            runs = [r['pd'] for r in results['arms'][name].values() if 'pd' in r]
            for residual in (False, True):
                idx = [i for i, row in enumerate(runs[0]) if bool(row.get('vae_residual')) == residual]
                if not idx:
                    continue
                xs = [float(np.mean([np.nan if r[i][set_name]['niqe'] is None else r[i][set_name]['niqe']
                                     for r in runs])) for i in idx]
                ys = [float(np.mean([r[i][set_name]['psnr'] for r in runs])) for i in idx]
                # OpenCV's font has no superscript T
                legend = ARMS[name][0].replace('ᵀ', '^T') + (' + VAE residual' if residual else '')
                series.append((legend, xs, ys, 'point'))
                labels[legend] = [setting_label(runs[0][i]) for i in idx]
        for label in ('Bicubic', 'SVKR (I^T, T = 3)', 'VAE round trip of I^T'):
            if label.replace('I^T', 'Iᵀ') not in baselines:
                continue
            m = baselines[label.replace('I^T', 'Iᵀ')][set_name]
            series.append((label, [np.nan if m['niqe'] is None else m['niqe']], [m['psnr']], 'point'))
        draw_panel(img, (p * (panel[0] + 2 * margin) + margin, margin, panel[0], panel[1]), series,
                   'NIQE (lower is better)', 'PSNR (dB)', f'{set_name}: PSNR vs NIQE (steps/strength)',
                   labels_at=labels)
    cv2.imwrite(path, img)


# ---------------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--tiny', action='store_true', help='toy sizes to test the script (numbers mean nothing)')
    mode.add_argument('--quick', action='store_true', help='LR only against SSR, one seed (< 10 min)')
    parser.add_argument('--out', default=None, help='default results/ssr_ablation (--quick: results/ssr_ablation_quick)')
    parser.add_argument('--prior', default='experiments/train_Prior_demo/prior_model')
    parser.add_argument('--train-opt', default='options/train_ssr_demo.yml')
    parser.add_argument('--test-opt', default='options/test_ssr_demo.yml')
    parser.add_argument('--svkr-ckpt', default=None, help='default: the --test-opt file\'s pretrain_network_svkr')
    parser.add_argument('--depth-model', default=None, help='default: the --test-opt file\'s depth network')
    parser.add_argument('--arms', default=None, help=f'comma-separated subset of {", ".join(ARMS)}')
    parser.add_argument('--seeds', default=None, help='comma-separated seeds')
    parser.add_argument('--iters', type=int, default=None, help='training iterations per arm')
    parser.add_argument('--steps', type=int, default=None,
                        help='sampling steps of the tables (default: the --test-opt file\'s)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--focus-plane', type=float, default=None,
                        help='a control: fix the focus plane of the depth-driven blur (training scenes, held-out '
                        'scenes and val) at this depth in [0, 1], so that blur follows depth alone (default: drawn '
                        'per image, as the demo data); use its own --out (the cache does not know it)')
    parser.add_argument('--report-only', action='store_true',
                        help='train and sample nothing: the tables from the arms already in --out (a run cut short)')
    args = parser.parse_args(argv)
    if args.focus_plane is not None:
        try:
            check_focus_plane(args.focus_plane, '--focus-plane')
        except OptionError:
            parser.error(f'--focus-plane {args.focus_plane:g}: expected a depth in [0, 1]')
    name = 'tiny' if args.tiny else 'quick' if args.quick else 'full'
    cfg = dict(MODES[name])
    if args.arms:
        cfg['arms'] = tuple(a.strip() for a in args.arms.split(','))
        unknown = [a for a in cfg['arms'] if a not in ARMS]
        if unknown:
            parser.error(f'--arms: unknown {unknown}; expected some of {list(ARMS)}')
    if args.seeds:
        cfg['seeds'] = tuple(int(s) for s in args.seeds.split(','))
    if args.iters:
        cfg['iters'] = args.iters
    out = rel(args.out or osp.join('results', 'ssr_ablation' + ('' if name == 'full' else f'_{name}')))
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)
    import logging
    logging.getLogger('basicsr').setLevel(logging.WARNING)
    start = time.time()
    log(f'SSR ablation ({name}): {len(cfg["arms"])} arms, {sum(len(seeds_of(a, cfg)) for a in cfg["arms"])} trained '
        f'networks, {cfg["iters"]} iterations each; out {out}')
    res = tiny_resources(osp.join(out, 'tiny_resources')) if args.tiny else demo_resources(args)
    if args.focus_plane is not None:
        res['dataset']['focus_plane'] = args.focus_plane
        log(f'control: the focus plane fixed at depth {args.focus_plane:g} (blur follows depth alone)')
    steps = args.steps or cfg['table_steps'] or res['sampling'].get('num_inference_steps', 1)
    pca = KernelPCA.load(res['pca_path'])
    svkr = load_svkr(res)
    log(f'prior {res["prior"]}; SVKR {res["svkr_ckpt"]} (T = {svkr.num_iter}); table sampling: {steps} '
        f'{res["sampling"].get("sampler", "dpmsolver++")} step(s) from noise')
    cache = osp.join(out, 'cache')
    os.makedirs(cache, exist_ok=True)
    log('==> training crops: whole scenes degraded, the SVKR on each whole LR scene')
    pool = build_pool(res, cfg, svkr, pca, osp.join(cache, 'pool.pth'))
    log(f'  {pool["lq"].shape[0]} crops of {pool["gt"].shape[-1]}² HR')
    log('==> test sets')
    depth_net = build_network(copy.deepcopy(res['depth_opt'])) if res['depth_opt'].get('backend', 'prior') != 'prior' \
        else MonocularDepth('prior')
    folders = write_test_sets(res, cfg, osp.join(cache, 'data'), depth_net)
    tests = OrderedDict((s, load_test_set(folders[s], svkr, pca, keep_kernels=(s == 'scenes'),
                                          cache=osp.join(cache, f'{s}_items.pth'))) for s in TEST_SETS)
    val = load_test_set(folders['val'], svkr, pca, cache=osp.join(cache, 'val_items.pth'))
    for s, items in list(tests.items()) + [('val', val)]:
        log(f'  {s}: {len(items)} images, {items[0]["gt"].shape[-1]}² HR ({folders[s]})')
    suite = MetricSuite(METRICS, logger=_QuietLogger())
    not_run = dict(suite.unavailable)
    baselines = baseline_rows(tests, suite, res['prior'])
    bicubic_val = score_set(suite, [upsample_lr(it['lq'], it['gt'].shape[-2:]) for it in val], val)[0]['psnr']
    for label, row in baselines.items():
        log(f'  {label}: ' + ', '.join(f'{s} {row[s]["psnr"]:.2f} dB / {row[s]["ssim"]:.3f}' for s in TEST_SETS))
    results = dict(mode=name, cfg={k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                   table_setting=f'{steps} {res["sampling"].get("sampler", "dpmsolver++")} step(s) from noise, seed 0, '
                   f'colour fix {res["sampling"].get("color_fix", "wavelet")}',
                   baselines=baselines, bicubic_val_psnr=bicubic_val, arms=OrderedDict(), train=OrderedDict(),
                   not_run=not_run)
    arms_dir = osp.join(out, 'arms')
    os.makedirs(arms_dir, exist_ok=True)
    records = OrderedDict((arm, []) for arm in arms_in_order(cfg))
    for arm in arms_in_order(cfg):
        results['arms'][arm] = OrderedDict()
    defects = []
    # every arm's first seed, then the extra seeds: a run cut short still has every arm
    jobs = [(arm, seeds_of(arm, cfg)[0]) for arm in cfg['arms']] + \
        [(arm, seed) for arm in cfg['arms'] for seed in seeds_of(arm, cfg)[1:]]
    skipped = []
    for arm, seed in jobs:
        if args.report_only and not all(osp.isfile(osp.join(arms_dir, f'{arm}_s{seed}{end}'))
                                        for end in ('.pth', '_train.json', '_eval.json')):
            skipped.append(f'{arm} seed {seed}')
            continue
        log(f'==> {arm} ({ARMS[arm][0]}), seed {seed}')
        ckpt, record = train_arm(arm, seed, res, cfg, pool, pca, arms_dir)
        records[arm].append(record)
        eval_path = osp.join(arms_dir, f'{arm}_s{seed}_eval.json')
        if osp.isfile(eval_path):
            with open(eval_path) as f:
                ev = json.load(f)
        else:
            model = eval_model(arm, seed, res, cfg, ckpt, arms_dir)
            first = seed == seeds_of(arm, cfg)[0]
            ev = evaluate_arm(arm, model, pca, tests, steps, suite,
                              deviation=dict(images=cfg['deviation_images'], widths=cfg['widths'],
                                             gammas=cfg['gammas']) if arm == 'full' and first else None,
                              pd=cfg['pd'] if arm in ('full', 'full_it') and first else None, val=val,
                              removal_images=cfg['removal_images'])
            with atomic_write(eval_path, 'w') as f:
                json.dump(ev, f)
            del model
        results['arms'][arm][str(seed)] = ev
        m = ev['scenes']['metrics']
        log(f'  {record["trainable"]:,} trainable ({record["s_per_iter"]:.3f} s/iter); scenes {m["psnr"]:.2f} dB / '
            f'{m["ssim"]:.3f}, photos {ev["photos"]["metrics"]["psnr"]:.2f} dB; removed: ' + ', '.join(
                f'{v["label"]} {v["delta_psnr"]:+.2f} dB (mean change {255 * v["mean_abs_change"]:.2f} grey levels)'
                for v in ev['scenes']['removed'].values()))
        for what, v in ev['scenes']['removed'].items():
            if v['mean_abs_change'] < DEFECT_MEAN_CHANGE:
                defects.append(f'DEFECT: {arm} seed {seed}: removing {v["label"]} leaves the output unchanged '
                               f'(mean abs change {255 * v["mean_abs_change"]:.2f} grey levels, max '
                               f'{255 * v["max_abs_change"]:.1f})')
                log(defects[-1])
    if skipped:
        log('--report-only: not trained, not in the tables: ' + ', '.join(skipped))
        for arm in [a for a in results['arms'] if not results['arms'][a]]:
            del results['arms'][arm], records[arm]
        cfg['arms'] = tuple(a for a in cfg['arms'] if a in results['arms'])
        cfg['extra_seeds'] = {a: tuple(int(s) for s in results['arms'][a])[1:] for a in cfg['arms']}
    results['not_trained'] = skipped
    results['train'] = records
    # item 5: the settings chosen on val, scored on the tests
    summary = OrderedDict()
    for arm in ('full', 'full_it'):
        if arm not in cfg['arms']:
            continue
        picks = OrderedDict()
        for seed in [s for s in seeds_of(arm, cfg) if 'pd' in results['arms'][arm][str(s)]]:
            fid, per = choose_settings(results['arms'][arm][str(seed)]['pd'], bicubic_val)
            picks[str(seed)] = dict(fidelity=fid, perceptual=per)
        summary[arm] = picks
    results['settings'] = summary
    svkr_psnr = baselines['SVKR (Iᵀ, T = 3)']['scenes']['psnr']
    svkr_niqe = baselines['SVKR (Iᵀ, T = 3)']['scenes']['niqe']
    lines = []
    for arm, picks in summary.items():
        fids = [p['fidelity']['scenes']['psnr'] for p in picks.values()]
        pers = [p['perceptual']['scenes']['niqe'] for p in picks.values() if p['perceptual'] is not None]
        lines.append(f'{ARMS[arm][0]}: fidelity setting ' + ', '.join(
            setting_label(p['fidelity']) for p in picks.values())
            + f' -> scenes PSNR {fmt(fids)} dB (SVKR {svkr_psnr:.2f}); perceptual setting ' + ', '.join(
            setting_label(p['perceptual']) if p['perceptual'] else 'none'
            for p in picks.values()) + f' -> scenes NIQE {fmt(pers)} (SVKR '
            + ('n/a' if svkr_niqe is None else f'{svkr_niqe:.2f}') + ')')
    for line in lines:
        log(line)
    results['settings_summary'] = lines
    results['defects'] = defects
    with atomic_write(osp.join(out, 'ssr_ablation.json'), 'w') as f:
        json.dump(results, f, indent=1)
    table = make_tables(results, baselines, records, cfg, suite, name, not_run)
    with atomic_write(osp.join(out, 'ssr_ablation.md'), 'w') as f:
        f.write(table + '\n\n' + '\n'.join(lines) + '\n')
    log('')
    log(table)
    if 'full' in cfg['arms']:
        plot_deviation(results, cfg, osp.join(out, 'deviation.png'))
        plot_pd(results, baselines, cfg, osp.join(out, 'pd_curve.png'))
    log(f'done in {time.time() - start:.0f} s; {out}/ssr_ablation.{{json,md}}, deviation.png, pd_curve.png')

    def mean_psnr(arm, key=None):
        runs = [results['arms'][arm][str(s)]['scenes'] for s in seeds_of(arm, cfg)]
        return float(np.mean([r['metrics']['psnr'] if key is None else r['removed'][key]['delta_psnr'] for r in runs]))

    full_vs_lr = mean_psnr('full') - mean_psnr('lr_only') if 'lr_only' in cfg['arms'] and 'full' in cfg['arms'] \
        else float('nan')
    fid_arm = 'full' if 'full' in summary else next(iter(summary), None)
    fid = float(np.mean([p['fidelity']['scenes']['psnr'] for p in summary[fid_arm].values()])) - svkr_psnr \
        if fid_arm else float('nan')
    d_depth = mean_psnr('full', 'depth') if 'full' in cfg['arms'] else float('nan')
    d_kernel = mean_psnr('full', 'kernel') if 'full' in cfg['arms'] else float('nan')
    log(f'full vs LR only: {full_vs_lr:+.2f} dB PSNR; SSR vs SVKR at fidelity setting: {fid:+.2f} dB; '
        f'removing depth: {d_depth:+.2f} dB, removing kernel: {d_kernel:+.2f} dB')
    return 0


class _QuietLogger:
    """MetricSuite's logger: a metric that cannot run is reported once, in the tables."""

    def warning(self, msg):
        pass

    info = warning


if __name__ == '__main__':
    sys.exit(main())
