"""Evidence for SVKR (issues 4 and 10): does depth help kernel estimation, does the loop help, is the
non-blind SR ordered GT kernels >= estimated kernels > bicubic, how much do deviated kernels and depth
maps cost (paper Fig. 8 and 9), and is the depth network more accurate on the loop's SR output than on
the LR image (the loop's premise)?

Data: RGB-D scenes with EXACT depth composed from real photographs (``ssr_data/scenes.py``): training
scenes from the training photographs, test scenes from the held-out photographs
(``default_texture_photos('test')``). Degradation: SSR's depth-driven spatially variant blur at x4
(``SVDegradation``, kernel_mode depth, blur only unless ``--noise``), drawn on the fly for every training
sample from the exact depth of its crop; the test set is fixed (seeded). Every network trains with Adam,
cosine decay and an EMA of its weights (scored), on CPU; the seeds change the training scenes, the
initialisation and the sample order, not the test set. DKENet's loss is the option files' L1 over the
kernel map (mean over taps and pixels); ``--kernel-loss-weight 441`` (k^2) makes it the L1 distance summed
over each kernel's taps (measured: no change in the depth gain, README).

Rows (kernel PSNR over every pixel's 21x21 kernel, ``ssr_utils/kernel_metrics.py``; SR PSNR on Y, crop 4):
0. baseline: the mean training kernel at every pixel (no network); every kernel PSNR is also given as a
   gain over it.
1. DKENet without depth / with exact depth / with the depth network's depth of the LR image (what SVKR's
   K0 uses), for the paper's structure (``paper``) and for the paper's structure with the ``defocus_input``
   option (``paper_defocus``: the depth branch also reads the defocus map from a weight-free focus-plane
   estimate, ``docs/svkr.md``; its no-depth twin is the paper's network without depth). The with-depth
   networks are also scored with a flat and a shuffled depth map: equal numbers would mean the network
   ignores depth.
2. SVKR T = 0..3 (the trained DKENet with depth, NBSR trained with ground-truth kernels, the depth
   network as DE): kernel PSNR and SR PSNR per T.
3. NBSR with ground-truth kernels / SVKR's estimated kernels (T = 3) / bicubic: SR PSNR.
4. Paper Fig. 8 / 9: SR PSNR with the kernel map deviated in both directions (every kernel made narrower
   or wider by a width factor a: K^(1/a^2), renormalised, exact for Gaussians) and with the depth map
   deviated in both directions (D^g: g < 1 pushes depths nearer, g > 1 farther; 0 and 1 stay fixed, so
   the map keeps the min-max convention), on every test scene, plotted to ``row4_deviation.png``. For the
   curves around the truth (ground-truth kernels, exact depth) the script prints how far the true value
   beats each end and a DEFECT line for an end within the noise of that drop (2 standard errors of the
   paired per-scene drops, seeds pooled; ``ssr_utils/deviation_curves.py``): a network that does not read
   the condition.
5. Depth accuracy (issue 10 item 2): the depth network's error against the exact depth on the HR image,
   on the LR image, on its bicubic upsampling and on SVKR's SR images per T.
6. (``--photo-rows``) the old setting of issue 4, kept for comparison: row 1 on photographs whose depth is
   the weight-free prior of the HR image (no scenes), headline structure.

Before training it prints what bounds the result (measured, not assumed): reference kernel PSNRs without a
network (the mean kernel given the depth map alone, given sigma_major, i.e. depth AND the focus plane, and
the best single kernel per image, and the mean kernel given the depth map and the weight-free focus-plane
estimate), the estimate's error, each structure's receptive field against the share of test pixels that
see an in-focus pixel, and the gradient scale of the stage 1 loss per part of the network at
initialisation.

``--quick`` runs row 1 for the headline structure (``paper_defocus``), one seed (wall times measured in the README;
every process uses one thread, see ``--threads``). Its last line is
``depth gain in kernel PSNR: exact +X dB, estimated +Y dB`` (each against the same structure without
depth). The full run (rows 0-5, both structures, three seeds, ``--jobs 2`` trains them in parallel
processes) ends with the same line (mean over the seeds). Both modes use the same row 1 settings, so the
full run's seed 0 contains the quick run's networks.

    python scripts/experiments/svkr_evidence.py --quick [--depth-model <folder>]
    nohup python scripts/experiments/svkr_evidence.py --jobs 2 [--photo-rows] [--depth-model <folder>] > evidence.log &

``--sr-finetune N`` (full run) trains NBSR N more iterations inside the loop before rows 2-5 (stage 3 with a
frozen DKENet): the L1 of every iterate's SR image plus ``--sr-finetune-gt-weight`` times the L1 of NBSR given
the ground-truth kernels, at ``--sr-finetune-lr``; it records the SR PSNR with ground-truth kernels undeviated
and 2x narrower / wider before and along the way, the kernel codes' statistics and each parameter group's
gradients and weight change (``stage3`` in the JSON, printed after the table). ``--reuse DIR`` loads the
DKENets and stage 2 NBSRs that an earlier run saved in its ``--out`` DIR (same seeds and settings) instead of
training them, e.g. to compare stage 3 settings.

``--depth-model`` is a ``save_pretrained`` folder loaded by ``MonocularDepth(backend=--depth-backend)``;
without it the "estimated depth" rows use the weight-free prior and say so. ``--iters`` / ``--sr-iters``
change the training budgets, ``--ke-lr`` DKENet's learning rate (the learning curves are in the JSON),
``--kernel-loss mse`` the stage 1 loss, ``--crop`` / ``--batch`` the training crops (``--crop 256``: whole
scenes). ``--archs`` also takes ``context`` (``global_context``), ``defocus`` (context + ``defocus_input``),
``gaussian`` (context + ``kernel_head: gaussian``) and ``context_zi`` (context + ``depth_zero_init``), the
options tried for item 5 of issue 10 (README).
"""
import argparse
import copy
import json
import math
import os
import os.path as osp
import time

from ssr_utils.install import project_root

ROOT = project_root()

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import ssr_arch  # noqa: E402,F401
from basicsr.metrics import calculate_psnr  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from ssr_arch.depth_arch import MonocularDepth  # noqa: E402
from ssr_arch.dkenet_arch import DKENet, FocusPlaneEstimator  # noqa: E402
from ssr_arch.nbsr_arch import NBSR  # noqa: E402
from ssr_arch.svkr_arch import SVKR  # noqa: E402
from ssr_data.degradations import SVDegradation  # noqa: E402
from ssr_data.kernels import (KernelPCA, default_sigma_range, depth_defocus_sigma, kernel_map_from_params,  # noqa: E402
                              random_kernels, sample_depth_kernel_params, widen_kernel_map)
from ssr_data.scenes import SceneGenerator, default_texture_photos  # noqa: E402
from ssr_utils.atomic_file import atomic_torch_save, atomic_write  # noqa: E402
from ssr_utils.deviation_curves import describe_ends, flat_curve_defects  # noqa: E402
from ssr_utils.errors import exit_on_option_error  # noqa: E402
from ssr_utils.kernel_metrics import calculate_kernel_psnr  # noqa: E402

SCALE, KSIZE = 4, 21
TEST_SEED = 1000  # test scenes (held-out photographs) and their degradations; the same for every seed

# Both modes use the same data and training settings for row 1, so the full run contains the quick run's
# networks (seed 0, headline structure).
SETTINGS = {
    'quick': dict(train_scenes=96, scene_size=256, crop=128, batch=4, ke_iters=150, sr_iters=0, sr_crop=96,
                  sr_batch=4, num_test=10, test_size=256, seeds=(0, ), archs=('paper_defocus', )),
    'full': dict(train_scenes=96, scene_size=256, crop=128, batch=4, ke_iters=150, sr_iters=150, sr_crop=96,
                 sr_batch=4, num_test=10, test_size=256, seeds=(0, 1, 2), archs=('paper', 'paper_defocus')),
}
# --tiny: the same code on toy sizes, for the tests (its numbers are not evidence)
TINY = dict(train_scenes=3, scene_size=64, crop=48, batch=2, ke_iters=2, sr_iters=2, sr_crop=32, sr_batch=2,
            num_test=2, test_size=64)
HEADLINE_ARCH = 'paper_defocus'
KE_WIDTHS = dict(num_feat=[32, 64], num_depth_feat=[16, 32], reduction=2)
SR_WIDTHS = dict(num_feat=32, num_block=3, num_grow_ch=16, num_cond=32)
ARCHS = {'paper': dict(global_context=False), 'context': dict(global_context=True),
         'gaussian': dict(global_context=True, kernel_head='gaussian'),
         'context_zi': dict(global_context=True, depth_zero_init=True),
         'defocus': dict(global_context=True, defocus_input=True),
         'paper_defocus': dict(global_context=False, defocus_input=True)}
KE_LR, SR_LR, EMA_DECAY = 2e-3, 1e-3, 0.98
SR_FINETUNE_LR = SR_LR * 0.5
SR_FINETUNE_GT_WEIGHT = 1.0
# The stage 1 loss is the option files' L1 over the kernel map (mean over taps and pixels, loss_weight 1).
# Kernel taps are ~1e-3, so it gives the depth path initial gradients of ~1e-8, Adam's eps; weighting it by
# k^2 (the per-pixel L1 distance between kernels, summed over taps) lifts them far above eps. Measured with
# --kernel-loss-weight 441: the same kernel PSNRs and depth gain (README, SVKR evidence), so eps is not what
# keeps the depth gain at zero, and the default stays the option files' loss.
KERNEL_TAPS = KSIZE ** 2
NUM_ITER, GAMMA = 3, 0.9
KERNEL_WIDTH_FACTORS = (0.5, 0.7, 1.0, 1.4, 2.0)  # row 4, K1 (< 1, narrower) and K2 (> 1, wider)
DEPTH_GAMMAS = (0.4, 0.63, 1.0, 1.6, 2.5)  # row 4, D1 (< 1, nearer) and D2 (> 1, farther)


def log(msg=''):
    print(msg, flush=True)


def to_tensor(img_uint8):
    return torch.from_numpy(np.ascontiguousarray(img_uint8.transpose(2, 0, 1))).float() / 255.0


def degradation(noise):
    return SVDegradation({'scale': SCALE, 'kernel_size': KSIZE, 'kernel_mode': 'depth', 'use_noise': noise,
                          'use_jpeg': noise})


# -------------------------------------------------------------------------------------------------
# data
# -------------------------------------------------------------------------------------------------
def make_scenes(num, size, seed, split, with_meta=False):
    """``num`` scenes ``(rgb 3xHxW float, exact depth 1xHxW[, inverse-depth range])`` of ``split``'s
    photographs, scene i from (seed, i)."""
    gen = SceneGenerator(default_texture_photos(split), size=size)
    scenes = []
    for i in range(num):
        rgb, depth, meta = gen.generate((seed, i))
        scene = (to_tensor(rgb), torch.from_numpy(depth)[None])
        scenes.append(scene + (meta['inv_depth_range'], ) if with_meta else scene)
    return scenes


def make_photo_data(cfg, deg):
    """The old setting (issue 4), kept for comparison: photographs (no scenes) whose depth is the weight-free
    prior of the HR image. Training: the training photographs; test: centre crops of the held-out
    photographs, degraded with fixed seeds. Returns (training pairs, test set)."""
    prior = MonocularDepth()  # backend: prior

    def pair(photo, size=None):
        rgb = to_tensor(photo.rgb)
        if size is not None:
            hh, ww = rgb.shape[-2:]
            s = min(size, hh, ww) // SCALE * SCALE
            y, x = (hh - s) // 2, (ww - s) // 2
            rgb = rgb[:, y:y + s, x:x + s]
        with torch.no_grad():
            return rgb, prior(rgb[None])[0]

    train_pairs = [pair(p) for p in default_texture_photos('train')]
    tests = []
    for j, photo in enumerate(default_texture_photos('test')[:cfg['num_test']]):
        gt, depth = pair(photo, cfg['test_size'])
        out = deg(gt, depth, np.random.default_rng([TEST_SEED, 2 * 10**6 + j]))
        tests.append({'name': photo.name, 'lq': out['lq'][None], 'gt': gt[None], 'kernel': out['kernel'][None],
                      'depth': depth[None], 'depth_lq': out['depth_lq'][None], 'params': out['params']})
    return train_pairs, tests


def make_test_set(cfg, deg):
    tests = []
    for j, (gt, depth, inv_range) in enumerate(make_scenes(cfg['num_test'], cfg['test_size'], TEST_SEED, 'test', True)):
        out = deg(gt, depth, np.random.default_rng([TEST_SEED, 10**6 + j]))
        tests.append({'name': f'test_scene_{j:02d}', 'lq': out['lq'][None], 'gt': gt[None], 'inv_depth_range': inv_range,
                      'kernel': out['kernel'][None], 'depth': depth[None], 'depth_lq': out['depth_lq'][None],
                      'params': out['params']})
    return tests


class SceneSampler:
    """Random crops of the training scenes (h-flipped at random), degraded on the fly: every draw has a new
    focus plane, anisotropy and angle. One generator drives everything, so a seed fixes the sequence."""

    def __init__(self, scenes, deg, crop, batch, seed):
        self.scenes, self.deg, self.crop, self.batch = scenes, deg, crop, batch
        self.rng = np.random.default_rng([seed, 7])

    def __call__(self):
        out = {'lq': [], 'gt': [], 'kernel': [], 'depth_lq': []}
        c = self.crop
        for _ in range(self.batch):
            gt, depth = self.scenes[int(self.rng.integers(len(self.scenes)))]
            hh, ww = gt.shape[-2:]
            y, x = int(self.rng.integers(0, hh - c + 1)), int(self.rng.integers(0, ww - c + 1))
            gt, depth = gt[:, y:y + c, x:x + c], depth[:, y:y + c, x:x + c]
            if self.rng.uniform() < 0.5:
                gt, depth = gt.flip(-1), depth.flip(-1)
            d = self.deg(gt, depth, self.rng)
            for key, value in (('lq', d['lq']), ('gt', gt), ('kernel', d['kernel']), ('depth_lq', d['depth_lq'])):
                out[key].append(value)
        return {k: torch.stack(v) for k, v in out.items()}


def crop_depth_stats(scenes, crop, num=400, seed=0, tol=0.05):
    """What a training crop holds: its mean depth range (max - min of the normalised scene depth) and the
    share of crops that hold an in-focus pixel (|depth - d_f| <= ``tol``) for a focus plane d_f ~ U(0, 1)
    drawn as the degradation draws it. A crop without one shows how blurred its depths are, not where the
    focus plane is."""
    rng = np.random.default_rng([seed, 11])
    ranges, in_focus = [], []
    for _ in range(num):
        _, depth = scenes[int(rng.integers(len(scenes)))]
        hh, ww = depth.shape[-2:]
        c = min(crop, hh, ww)
        y, x = int(rng.integers(0, hh - c + 1)), int(rng.integers(0, ww - c + 1))
        d = depth[:, y:y + c, x:x + c]
        ranges.append(float(d.max() - d.min()))
        in_focus.append(float(((d - float(rng.uniform())).abs() <= tol).any()))
    return {'crop': crop, 'mean_depth_range': float(np.mean(ranges)), 'in_focus_share': float(np.mean(in_focus))}


def focus_estimates(tests):
    """``FocusPlaneEstimator``'s focus plane (what ``defocus_input`` feeds DKENet) of every test scene, from its
    LR image and exact depth."""
    estimator = FocusPlaneEstimator()
    return [float(estimator(t['lq'], t['depth_lq'])[0]) for t in tests]


def focus_estimate_error(tests, estimates):
    """Mean |d_f estimate - d_f| over the test scenes, and of the constant guess 0.5 for comparison."""
    errors = [abs(e - t['params']['focus']) for e, t in zip(estimates, tests)]
    return float(np.mean(errors)), float(np.mean([abs(0.5 - t['params']['focus']) for t in tests]))


def focus_in_view(tests, window, tol=0.05):
    """Fraction of test LR pixels whose ``window`` x ``window`` neighbourhood holds an in-focus pixel (depth
    within ``tol`` of the image's focus plane, i.e. sigma within 10 % of its range from the minimum), and
    the fraction of test images that hold one anywhere: what a local estimator could compare against."""
    local, anywhere = [], []
    for t in tests:
        sharp = ((t['depth_lq'] - t['params']['focus']).abs() <= tol).float()
        seen = F.max_pool2d(sharp, window, stride=1, padding=window // 2)[..., :sharp.shape[-2], :sharp.shape[-1]]
        local.append(float(seen.mean()))
        anywhere.append(float(sharp.max()))
    return float(np.mean(local)), float(np.mean(anywhere))


# -------------------------------------------------------------------------------------------------
# training
# -------------------------------------------------------------------------------------------------
def train(net, loss_fn, sampler, iters, lr, seed, label, probe=None, curve=None, after_backward=None):
    """Adam + cosine decay; returns the EMA copy of the weights (what is scored, like BasicSR's net_g_ema).

    ``probe(ema) -> float or dict`` is called at every quarter of the budget and appended to ``curve`` as
    ``[iteration, value]`` (the learning curve of the EMA weights). ``after_backward(net)`` sees every
    step's gradients before the optimiser uses them."""
    torch.manual_seed(seed)
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iters, 1), eta_min=lr * 0.05)
    net.train()
    t0 = time.time()
    for it in range(1, iters + 1):
        loss = loss_fn(net, sampler())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward(net)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn, 1 - EMA_DECAY)
        if it % max(iters // 4, 1) == 0 or it == iters:
            msg = ''
            if probe is not None:
                value = probe(ema)
                curve.append([it, value])
                msg = ('  test ' + ', '.join(f'{k} {v:.2f}' for k, v in value.items()) if isinstance(value, dict)
                       else f'  test kernel PSNR {value:.2f} dB')
            log(f'  [{label}] iter {it}/{iters}  loss {loss.item():.3e}{msg}  ({time.time() - t0:.0f} s)')
    return ema


def build_dkenet(arch, use_depth, seed):
    torch.manual_seed(seed)
    options = dict(ARCHS[arch])
    if not use_depth:  # the no-depth twin: the same structure without what reads depth
        options.pop('defocus_input', None)
    return DKENet(kernel_size=KSIZE, scale=SCALE, use_depth=use_depth, **KE_WIDTHS, **options)


def train_dkenet(arch, use_depth, sampler, cfg, seed, tests=None, curve=None):
    net = build_dkenet(arch, use_depth, seed)
    weight = cfg.get('kernel_loss_weight', 1.0)

    def loss_fn(net, b):  # L1 on the kernel map, the stage 1 loss
        loss = F.mse_loss if cfg.get('kernel_loss', 'l1') == 'mse' else F.l1_loss
        return weight * loss(net(b['lq'], b['depth_lq'] if use_depth else None), b['kernel'])

    def probe(ema):  # exact depth for the with-depth network
        return mean_kernel_psnr(ema, tests, [t['depth_lq'] if use_depth else None for t in tests])

    return train(net, loss_fn, sampler, cfg['ke_iters'], cfg.get('ke_lr', KE_LR), seed,
                 f'DKENet {arch}, {"with" if use_depth else "without"} depth, seed {seed}',
                 probe if tests is not None else None, curve)


def fit_kernel_pca(path):
    """The 10-d kernel PCA NBSR fits without ``pca_path`` (4000 kernels of the default x4 distribution,
    seed 0), fitted once and saved, so that every NBSR of the run shares it."""
    KernelPCA.fit(random_kernels(4000, KSIZE, default_sigma_range(SCALE), seed=0), 10).save(path)
    return path


def train_nbsr(sampler, cfg, seed, pca_path):
    torch.manual_seed(seed)
    net = NBSR(scale=SCALE, kernel_size=KSIZE, pca_path=pca_path, **SR_WIDTHS)

    def loss_fn(net, b):  # L1 on the image with ground-truth kernels, the stage 2 loss
        return F.l1_loss(net(b['lq'], b['kernel']), b['gt'])

    return train(net, loss_fn, sampler, cfg['sr_iters'], SR_LR, seed, f'NBSR (GT kernels), seed {seed}')


def initial_gradients(tests):
    """Why a few hundred iterations teach the depth path little: per part of a freshly built context DKENet
    with depth, the mean |gradient| of the L1 kernel loss on two test images (compare with Adam's eps,
    below which Adam's steps shrink), and how much a flat depth map moves its kernels relative to another
    image (the depth path's initial influence)."""
    net = build_dkenet('context', True, 0)
    lq = torch.cat([t['lq'] for t in tests[:2]])
    depth = torch.cat([t['depth_lq'] for t in tests[:2]])
    kernel = torch.cat([t['kernel'] for t in tests[:2]])
    F.l1_loss(net(lq, depth), kernel).backward()
    parts = {'depth branch': 'depth_branch.', 'SFT layers': '.sft.', 'LR branch': ('conv_first', 'block', 'down', 'up'),
             'output conv': 'conv_last'}
    out = {}
    for name, keys in parts.items():
        keys = keys if isinstance(keys, tuple) else (keys, )
        grads = [p.grad.abs().mean().item() for n, p in net.named_parameters()
                 if p.grad is not None and any(k in n for k in keys) and not (name == 'LR branch' and '.sft.' in n)]
        out[name] = float(np.mean(grads))
    # the L1 distance summed over a kernel's taps is k^2 times this loss: its gradients scale by the same factor
    for name in parts:
        out[f'{name} x k^2'] = out[name] * KERNEL_TAPS
    with torch.no_grad():
        k = net(lq[:1], depth[:1])
        flat = net(lq[:1], torch.full_like(depth[:1], 0.5))
        other = net(lq[1:2], depth[:1])
    out['depth effect / image effect'] = float((k - flat).abs().mean() / (k - other).abs().mean())
    return out


@torch.no_grad()
def receptive_field(net, size):
    """Side of the square of LR pixels that can change the kernel at the centre pixel (gradient support)."""
    probe = copy.deepcopy(net).float().eval()
    if probe.context is not None:  # the fuse layer starts at zero: give it weights, as training would
        probe.context.fuse.weight.normal_(0, 0.1)
    with torch.enable_grad():
        lr = torch.rand(1, 3, size, size, requires_grad=True)
        depth = torch.rand(1, 1, size, size) if probe.use_depth else None
        probe(lr, depth)[0, :, size // 2, size // 2].pow(2).sum().backward()
    rows = torch.nonzero(lr.grad.abs().sum(dim=(0, 1)).sum(dim=1) > 0)
    return int(rows.max() - rows.min() + 1)


# -------------------------------------------------------------------------------------------------
# scoring
# -------------------------------------------------------------------------------------------------
@torch.no_grad()
def mean_kernel_psnr(net, tests, depths):
    return float(np.mean([calculate_kernel_psnr(net(t['lq'], d), t['kernel']) for t, d in zip(tests, depths)]))


def sr_psnr(sr, gt):
    return calculate_psnr(tensor2img(sr.clamp(0, 1)), tensor2img(gt), crop_border=SCALE, test_y_channel=True)


def bicubic(lq):
    return F.interpolate(lq, scale_factor=SCALE, mode='bicubic', align_corners=False).clamp(0, 1)


def resize_depth(depth, size):
    if depth.shape[-2:] == tuple(size):
        return depth
    return F.interpolate(depth, size=size, mode='bilinear', align_corners=False,
                         antialias=depth.shape[-2] > size[0]).clamp(0, 1)


def depth_errors(pred, exact):
    """MAE of the normalised inverse depth and r^2 (squared Pearson correlation), per image, averaged."""
    mae, r2 = [], []
    for p, e in zip(pred.flatten(1).double(), exact.flatten(1).double()):
        mae.append(float((p - e).abs().mean()))
        pc, ec = p - p.mean(), e - e.mean()
        r2.append(float((pc @ ec)**2 / ((pc @ pc) * (ec @ ec)).clamp_min(1e-20)))
    return float(np.mean(mae)), float(np.mean(r2))


@torch.no_grad()
def reference_rows(tests, deg, focus_estimated, draws=32):
    """Kernel PSNR of conditional means (no network), as references for what depth can be worth:
    E[k given the depth map] (focus plane d_f, anisotropy rho and angle theta averaged out) and
    E[k given sigma_major] (depth AND the focus plane known, so sigma_major is exact; rho and theta
    averaged out) and the same with the focus plane ``focus_estimated[i]`` (``focus_estimates``) instead of
    the true one. ``draws`` Monte-Carlo draws of the unknown per-image quantities (fixed seed)."""
    sig_lo, sig_hi = default_sigma_range(SCALE)
    by_depth = 'mean kernel given the depth map (d_f, rho, theta averaged out)'
    by_sigma = 'mean kernel given sigma_major (depth and d_f known; rho, theta averaged out)'
    by_estimate = ('mean kernel given the depth map and the weight-free focus-plane estimate (FocusPlaneEstimator; '
                   'rho, theta averaged out)')
    out = {by_depth: [], by_sigma: [], by_estimate: []}
    for i, (t, focus_estimate) in enumerate(zip(tests, focus_estimated)):
        rng = np.random.default_rng([TEST_SEED, 77, i])
        d = t['depth_lq'][0, 0]
        sigma = depth_defocus_sigma(d, t['params']['focus'], sig_lo, sig_hi)
        sigma_estimate = depth_defocus_sigma(d, focus_estimate, sig_lo, sig_hi)
        acc_d, acc_s, acc_e = 0, 0, 0
        for _ in range(draws):
            smaj, smin, theta, _ = sample_depth_kernel_params(d, rng, (sig_lo, sig_hi), deg.rho_min,
                                                              deg.theta_jitter, deg.jitter_cells)
            acc_d = acc_d + kernel_map_from_params(smaj, smin, theta, KSIZE)
            rho, theta0 = rng.uniform(deg.rho_min, 1.0), rng.uniform(0, math.pi)
            acc_s = acc_s + kernel_map_from_params(sigma, sigma * rho, torch.full_like(sigma, theta0), KSIZE)
            acc_e = acc_e + kernel_map_from_params(sigma_estimate, sigma_estimate * rho,
                                                   torch.full_like(sigma, theta0), KSIZE)
        out[by_depth].append(calculate_kernel_psnr(acc_d / draws, t['kernel']))
        out[by_sigma].append(calculate_kernel_psnr(acc_s / draws, t['kernel']))
        out[by_estimate].append(calculate_kernel_psnr(acc_e / draws, t['kernel']))
    # what an estimator that sees no spatial structure could reach at best: the image's own mean kernel
    out['best single kernel per image (its own mean kernel; no depth, one kernel everywhere)'] = [
        calculate_kernel_psnr(t['kernel'].mean(dim=(2, 3), keepdim=True).expand_as(t['kernel']), t['kernel'])
        for t in tests]
    return {k: float(np.mean(v)) for k, v in out.items()}


@torch.no_grad()
def row1(ke_nets, tests, mean_kernel, depth_net, est_depths):
    """Kernel PSNR per network and depth input; ``est_depths[i]`` is the depth network's depth of LR i."""
    out = {'mean kernel': float(np.mean([calculate_kernel_psnr(mean_kernel.expand_as(t['kernel']), t['kernel'])
                                         for t in tests]))}
    for arch, (plain, with_depth) in ke_nets.items():
        score = {'without depth': mean_kernel_psnr(plain, tests, [None] * len(tests))}
        inputs = {
            'exact depth': [t['depth_lq'] for t in tests],
            'estimated depth': est_depths,
            'flat depth (0.5)': [torch.full_like(t['depth_lq'], 0.5) for t in tests],
            'shuffled depth (another test scene)': [resize_depth(tests[(i + 1) % len(tests)]['depth_lq'],
                                                                 t['depth_lq'].shape[-2:]) for i, t in enumerate(tests)],
        }
        for name, depths in inputs.items():
            score[name] = mean_kernel_psnr(with_depth, tests, depths)
        out[arch] = score
    return out


def build_svkr(ke, sr_net, depth_opt, pca_path):
    """SVKR (Algorithm 1) around the trained DKENet ``ke`` and NBSR ``sr_net`` (their weights copied), the
    depth network as DE."""
    svkr = SVKR(num_iter=NUM_ITER, gamma=GAMMA, use_depth=True, depth_opt=depth_opt,
                kernel_opt=dict(type='DKENet', kernel_size=KSIZE, **KE_WIDTHS, **ARCHS[ke.arch]),
                sr_opt=dict(type='NBSR', kernel_size=KSIZE, pca_path=pca_path, **SR_WIDTHS), scale=SCALE).eval()
    svkr.kernel_net.load_state_dict(ke.state_dict())
    svkr.sr_net.load_state_dict(sr_net.state_dict())
    return svkr


def nbsr_parameter_groups(sr_net):
    """NBSR's parameters by what they read: the kernel path (the 1x1 convs of the kernel code and the SFT
    layer before every RRDB) and the image trunk (everything else)."""
    groups = {'kernel path': [], 'image trunk': []}
    for name, p in sr_net.named_parameters():
        groups['kernel path' if name.startswith('cond.') or '.sft.' in name else 'image trunk'].append((name, p))
    return groups


@torch.no_grad()
def kernel_code_stats(sr_net, tests, estimates):
    """What NBSR's condition input holds, in its own units (PCA code / ``code_scale``), over every LR pixel of
    the test scenes: the spread of the codes of the ground-truth kernels and of the estimates, and how much
    of the ground-truth codes' variance the estimates explain (1 - MSE / variance, per component, averaged).
    A condition that explains little of what it stands for is one a network learns to discount."""
    def codes(kmaps):
        scale = sr_net.code_scale.view(1, -1, 1, 1)
        return torch.cat([(sr_net.kernel_code(k.float()) / scale).flatten(2) for k in kmaps], dim=2)[0].double()

    gt, est = codes([t['kernel'] for t in tests]), codes(estimates)
    var = gt.var(dim=1)
    mse = (est - gt).square().mean(dim=1)
    return {'ground-truth code spread': float(gt.std(dim=1).mean()), 'estimated code spread': float(est.std(dim=1).mean()),
            'estimate error (RMS)': float(mse.sqrt().mean()),
            'variance explained by the estimates': float((1 - mse / var.clamp_min(1e-12)).mean()),
            'per component': {'ground-truth spread': gt.std(dim=1).tolist(), 'estimated spread': est.std(dim=1).tolist(),
                              'variance explained': (1 - mse / var.clamp_min(1e-12)).tolist()}}


def finetune_nbsr_in_loop(ke, sr_net, depth_opt, pca_path, sampler, cfg, seed, tests):
    """Stage 3 with a frozen DKENet (``train_svkr.yml``'s ``freeze_kernel``): NBSR trained inside the loop
    on the kernels SVKR estimates (K^0..K^T from DE's depth), L1 on every iterate's SR image, plus
    ``cfg['sr_finetune_gt_weight']`` times the L1 of NBSR given the sample's ground-truth kernels (stage 2's
    loss, which keeps NBSR reading its kernels; 0 = the loop alone, the setting before issue 20). Learning
    rate ``cfg['sr_finetune_lr']`` with cosine decay.

    Returns the fine-tuned NBSR (EMA weights) and what was measured along the way: the test scenes' SR PSNR
    with ground-truth kernels undeviated and made 2x narrower / wider, and with the estimate K^0, before
    and at every quarter (``sensitivity``); the gradient norm of each parameter group, averaged over the
    steps, and each group's relative weight change (``parameter_groups``); the kernel codes' statistics
    (``kernel_codes``)."""
    svkr = build_svkr(ke, sr_net, depth_opt, pca_path)
    for p in svkr.kernel_net.parameters():
        p.requires_grad_(False)
    trained_groups = cfg.get('sr_finetune_train', 'all')
    if trained_groups != 'all':  # a diagnosis: which part of NBSR stops it reading its kernels
        for group, params in nbsr_parameter_groups(svkr.sr_net).items():
            if group != trained_groups:
                for _, p in params:
                    p.requires_grad_(False)
    gt_weight = float(cfg['sr_finetune_gt_weight'])
    with torch.no_grad():
        k0 = [svkr.kernel_net(t['lq'], svkr.estimate_depth(t['lq'], t['lq'].shape[-2:])) for t in tests]
    codes = kernel_code_stats(svkr.sr_net, tests, k0)

    def loss_fn(net, b):
        net.depth_net.eval()  # frozen networks stay in eval mode (DE's BatchNorm statistics)
        net.kernel_net.eval()
        srs = net(b['lq'], return_all=True)['srs']
        loss = sum(F.l1_loss(sr, b['gt']) for sr in srs) / len(srs)
        if gt_weight > 0:
            loss = loss + gt_weight * F.l1_loss(net.sr_net(b['lq'], b['kernel']), b['gt'])
        return loss

    @torch.no_grad()
    def probe(net):
        nb = net.sr_net
        out = {f'GT a={a:g}': float(np.mean([sr_psnr(nb(t['lq'], widen_kernel_map(t['kernel'], a)), t['gt'])
                                             for t in tests])) for a in (0.5, 1.0, 2.0)}
        out['K0'] = float(np.mean([sr_psnr(nb(t['lq'], k), t['gt']) for t, k in zip(tests, k0)]))
        return out

    groups = nbsr_parameter_groups(svkr.sr_net)
    start = {name: p.detach().clone() for ps in groups.values() for name, p in ps}
    grad_sums = {g: 0.0 for g in groups}
    steps = [0]

    def after_backward(net):
        steps[0] += 1
        for g, ps in groups.items():
            grad_sums[g] += float(torch.sqrt(sum((p.grad.double().square().sum() for _, p in ps if p.grad is not None),
                                                 torch.zeros((), dtype=torch.float64))))

    curve = [[0, probe(svkr)]]
    tuned = train(svkr, loss_fn, sampler, cfg['sr_finetune'], cfg['sr_finetune_lr'], seed,
                  f'NBSR in the loop (stage 3), seed {seed}', probe, curve, after_backward)
    tuned_params = dict(tuned.sr_net.named_parameters())
    change = {}
    for g, ps in groups.items():
        delta = sum(float((tuned_params[n].detach() - start[n]).double().square().sum()) for n, _ in ps)
        norm = sum(float(start[n].double().square().sum()) for n, _ in ps)
        change[g] = math.sqrt(delta / max(norm, 1e-30))
    diagnostics = {'gt_kernel_weight': gt_weight, 'lr': cfg['sr_finetune_lr'], 'trained': trained_groups,
                   'sensitivity': curve,
                   'kernel_codes': codes,
                   'parameter_groups': {g: {'parameters': sum(p.numel() for _, p in ps),
                                            'mean gradient norm': grad_sums[g] / max(steps[0], 1),
                                            'relative weight change': change[g]} for g, ps in groups.items()}}
    return tuned.sr_net, diagnostics


@torch.no_grad()
def loop_rows(ke, sr_net, depth_opt, tests, pca_path):
    """Rows 2, 3, 5 and the inputs of row 4 from one SVKR run per test image."""
    svkr = build_svkr(ke, sr_net, depth_opt, pca_path)
    n = NUM_ITER + 1
    kp, sp = np.zeros(n), np.zeros(n)
    depth_in = {'HR image': [], 'LR image (what K0 uses)': [], 'bicubic LR': []}
    depth_in.update({f'SVKR SR, T = {t}': [] for t in range(n)})
    depth_in['NBSR SR with GT kernels'] = []
    gt_k, bic = [], []
    finals = []
    for t in tests:
        out = svkr(t['lq'], return_all=True)
        for i in range(n):
            kp[i] += calculate_kernel_psnr(out['kernels'][i], t['kernel']) / len(tests)
            sp[i] += sr_psnr(out['srs'][i], t['gt']) / len(tests)
        sr_gt = svkr.sr_net(t['lq'], t['kernel'])
        gt_k.append(sr_psnr(sr_gt, t['gt']))
        bic.append(sr_psnr(bicubic(t['lq']), t['gt']))
        # scored at HR size against the exact depth (DE of the LR image upsampled bilinearly)
        hr_size = t['gt'].shape[-2:]
        images = {'HR image': t['gt'], 'LR image (what K0 uses)': t['lq'], 'bicubic LR': bicubic(t['lq']),
                  'NBSR SR with GT kernels': sr_gt.clamp(0, 1)}
        images.update({f'SVKR SR, T = {i}': out['srs'][i].clamp(0, 1) for i in range(n)})
        for key, img in images.items():
            depth = F.interpolate(svkr.depth_net(img), size=hr_size, mode='bilinear', align_corners=False)
            depth_in[key].append(depth_errors(depth.clamp(0, 1), t['depth']))
        finals.append({'kernel': out['kernel'], 'depth': out['depth']})
    row2 = {'kernel_psnr': kp.tolist(), 'sr_psnr': sp.tolist()}
    row3 = {'ground-truth kernels': float(np.mean(gt_k)), f'estimated kernels (SVKR T = {NUM_ITER})': float(sp[-1]),
            'bicubic': float(np.mean(bic))}
    row5 = {k: {'mae': float(np.mean([v[0] for v in vals])), 'r2': float(np.mean([v[1] for v in vals]))}
            for k, vals in depth_in.items()}
    return row2, row3, row5, finals, svkr


@torch.no_grad()
def row4(svkr, tests, finals):
    """SR PSNR against kernel-width factors (estimated K^T and GT kernels) and depth gammas (D^T and exact),
    on every test scene (20 SR runs per scene and point): the mean curves and, per curve, the scores of
    every scene (``per_image``, rows = scenes), from which the curve's noise is measured
    (``ssr_utils.deviation_curves``)."""
    ke, sr_net = svkr.kernel_net, svkr.sr_net
    per_image = {'K: estimated K^T': [], 'K: ground truth': [], 'D: estimated D^T': [], 'D: exact': []}
    for t, f in zip(tests, finals):
        per_image['K: estimated K^T'].append([sr_psnr(sr_net(t['lq'], widen_kernel_map(f['kernel'], a)), t['gt'])
                                              for a in KERNEL_WIDTH_FACTORS])
        per_image['K: ground truth'].append([sr_psnr(sr_net(t['lq'], widen_kernel_map(t['kernel'], a)), t['gt'])
                                             for a in KERNEL_WIDTH_FACTORS])
        for key, depth in (('D: estimated D^T', f['depth']), ('D: exact', t['depth_lq'])):
            per_image[key].append([sr_psnr(sr_net(t['lq'], ke(t['lq'], depth.clamp(0, 1).pow(g))), t['gt'])
                                   for g in DEPTH_GAMMAS])
    curves = {key: np.mean(rows, axis=0).tolist() for key, rows in per_image.items()}
    return {'kernel_width_factors': list(KERNEL_WIDTH_FACTORS), 'depth_gammas': list(DEPTH_GAMMAS), 'curves': curves,
            'per_image': per_image, 'test_scenes': len(tests)}


# the curves of row 4 whose undeviated point is the truth: a network that reads its condition peaks there
ROW4_REFERENCE_CURVES = (('K: ground truth', 'kernel_width_factors', 'a',
                          'SR PSNR against the width of the ground-truth kernels (row 4)'),
                         ('D: exact', 'depth_gammas', 'g', 'SR PSNR against the gamma of the exact depth (row 4)'))


def row4_checks(runs):
    """Lines on the reference curves of row 4, pooled over the seeds (every seed's scenes are rows of the
    paired differences): how far the true point beats each end, and a DEFECT line for an end within the
    noise (``ssr_utils.deviation_curves``)."""
    lines = []
    for key, xs_key, name, label in ROW4_REFERENCE_CURVES:
        per_image = [row for r in runs for row in r['row4']['per_image'][key]]
        xs = runs[0]['row4'][xs_key]
        lines.append(f'{label}: {describe_ends(per_image, xs, 1.0, name)}')
        lines += flat_curve_defects(label, per_image, xs, 1.0, name)
    return lines


def plot_row4(r4, path, title):
    """Two panels (kernel width factor, depth gamma; log x axes) of SR PSNR, drawn with OpenCV."""
    panel_w, panel_h, margin = 420, 300, 55
    img = np.full((panel_h + 2 * margin, 2 * (panel_w + 2 * margin), 3), 255, np.uint8)
    colours = [(200, 80, 30), (40, 40, 40), (30, 120, 220), (40, 160, 40)]
    panels = (('kernel width factor a (K1: a < 1, K2: a > 1)', r4['kernel_width_factors'],
               ['K: estimated K^T', 'K: ground truth']),
              ('depth gamma g (D1: g < 1, D2: g > 1)', r4['depth_gammas'], ['D: estimated D^T', 'D: exact']))
    values = [v for c in r4['curves'].values() for v in c]
    lo, hi = min(values), max(values)
    lo, hi = math.floor(lo * 2) / 2 - 0.25, math.ceil(hi * 2) / 2 + 0.25
    font = cv2.FONT_HERSHEY_SIMPLEX
    for p, (xlabel, xs, keys) in enumerate(panels):
        ox, oy = p * (panel_w + 2 * margin) + margin + 10, margin
        cv2.rectangle(img, (ox, oy), (ox + panel_w, oy + panel_h), (0, 0, 0), 1)
        lx = np.log(xs)

        def to_px(x, y, ox=ox, oy=oy, lx=lx):
            return (int(ox + (x - lx.min()) / (lx.max() - lx.min()) * panel_w),
                    int(oy + panel_h - (y - lo) / (hi - lo) * panel_h))

        for x, xv in zip(lx, xs):
            px, _ = to_px(x, lo)
            cv2.line(img, (px, oy + panel_h), (px, oy + panel_h + 4), (0, 0, 0), 1)
            cv2.putText(img, f'{xv:g}', (px - 12, oy + panel_h + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        y = lo
        while y <= hi + 1e-9:
            _, py = to_px(lx[0], y)
            cv2.line(img, (ox - 4, py), (ox, py), (0, 0, 0), 1)
            cv2.putText(img, f'{y:.1f}', (ox - 42, py + 4), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
            y += 0.5 if hi - lo <= 6 else 1.0
        cv2.putText(img, xlabel, (ox + 20, oy + panel_h + 40), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for i, key in enumerate(keys):
            colour = colours[2 * p + i]
            pts = [to_px(x, v) for x, v in zip(lx, r4['curves'][key])]
            for a, b in zip(pts[:-1], pts[1:]):
                cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
            for pt in pts:
                cv2.circle(img, pt, 3, colour, -1, cv2.LINE_AA)
            cv2.putText(img, key, (ox + 10, oy + 18 + 16 * i), font, 0.45, colour, 1, cv2.LINE_AA)
    cv2.putText(img, title, (margin, 25), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, 'SR PSNR (dB, Y)', (5, margin - 8), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode('.png', img)
    if not ok:
        raise RuntimeError(f'could not encode the row 4 plot for {path}')
    with atomic_write(path, 'wb') as f:
        f.write(buf.tobytes())


# -------------------------------------------------------------------------------------------------
# aggregation over seeds
# -------------------------------------------------------------------------------------------------
def stat(values):
    """mean and sample standard deviation (0 for one value) of a list of numbers."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt(values, gain_over=None):
    mean, sd = stat(values)
    text = f'{mean:.2f} ± {sd:.2f}' if len(values) > 1 else f'{mean:.2f}'
    if gain_over is not None:
        g_mean, g_sd = stat(np.asarray(values) - np.asarray(gain_over))
        text += f' ({g_mean:+.2f} ± {g_sd:.2f})' if len(values) > 1 else f' ({g_mean:+.2f})'
    return text


def table(runs, depth_desc, references):
    """Markdown table over the seeds (mean ± sample std; kernel PSNR gains over the mean kernel in brackets)."""
    base = [r['row1']['mean kernel'] for r in runs]
    lines = ['| row | setting | kernel PSNR (dB) (gain over the mean kernel) | SR PSNR (dB, Y) |',
             '| --- | --- | --- | --- |', f'| 0 | mean training kernel everywhere (no network) | {fmt(base)} | |']
    for key, value in references.items():
        lines.append(f'| 0 | reference, no network: {key} | {fmt([value] * len(runs), base)} | |')
    for arch in runs[0]['row1']:
        if arch == 'mean kernel':
            continue
        for key in runs[0]['row1'][arch]:
            label = key if key != 'estimated depth' else f'estimated depth ({depth_desc})'
            lines.append(f'| 1 | DKENet {arch}, {label} | {fmt([r["row1"][arch][key] for r in runs], base)} | |')
    if 'row2' in runs[0]:
        for t in range(NUM_ITER + 1):
            lines.append(f'| 2 | SVKR T = {t} ({runs[0]["svkr_arch"]} DKENet, {depth_desc}) | '
                         f'{fmt([r["row2"]["kernel_psnr"][t] for r in runs], base)} | '
                         f'{fmt([r["row2"]["sr_psnr"][t] for r in runs])} |')
        for key in runs[0]['row3']:
            lines.append(f'| 3 | NBSR, {key} | | {fmt([r["row3"][key] for r in runs])} |')
        r4 = runs[0]['row4']
        for key, xs, name in (('K: estimated K^T', r4['kernel_width_factors'], 'a'),
                              ('K: ground truth', r4['kernel_width_factors'], 'a'),
                              ('D: estimated D^T', r4['depth_gammas'], 'g'), ('D: exact', r4['depth_gammas'], 'g')):
            cells = ', '.join(f'{name}={x:g}: {stat([r["row4"]["curves"][key][i] for r in runs])[0]:.2f}'
                              for i, x in enumerate(xs))
            lines.append(f'| 4 | SR with deviated {key} | | {cells} |')
        for key in runs[0].get('row5', {}):
            mae = [r['row5'][key]['mae'] for r in runs]
            r2 = [r['row5'][key]['r2'] for r in runs]
            lines.append(f'| 5 | depth network on {key}: MAE / r² against exact depth | | '
                         f'{stat(mae)[0]:.3f} / {stat(r2)[0]:.3f} |')
    if 'row6' in runs[0]:
        base6 = [r['row6']['mean kernel'] for r in runs]
        for key in runs[0]['row6']:
            lines.append(f'| 6 | photographs, weight-free PRIOR depth: DKENet {HEADLINE_ARCH}, {key} | '
                         f'{fmt([r["row6"][key] for r in runs], None if key == "mean kernel" else base6)} | |')
    return lines


def stage3_lines(runs):
    """What stage 3 did to NBSR, per seed (``finetune_nbsr_in_loop``'s measurements)."""
    lines = []
    for r in runs:
        st = r.get('stage3')
        if not st:
            continue
        (_, before), (_, after) = st['sensitivity'][0], st['sensitivity'][-1]
        codes, groups = st['kernel_codes'], st['parameter_groups']
        lines.append('')
        trained = '' if st.get('trained', 'all') == 'all' else f', only the {st["trained"]} trains'
        lines.append(f'stage 3, seed {r["seed"]} (lr {st["lr"]:g}, ground-truth kernel loss weight {st["gt_kernel_weight"]:g}'
                     f'{trained}), '
                     'test SR PSNR before -> after: ' + ', '.join(f'{k} {before[k]:.2f} -> {after[k]:.2f}' for k in before))
        lines.append(f'  kernel codes (PCA code / code_scale, every test pixel): spread of the ground truth '
                     f'{codes["ground-truth code spread"]:.2f}, of the estimates K0 {codes["estimated code spread"]:.2f}, '
                     f'estimate error (RMS) {codes["estimate error (RMS)"]:.2f}, variance of the ground-truth codes '
                     f'explained by the estimates {codes["variance explained by the estimates"]:.2f}')
        lines.append('  ' + '; '.join(f'{g} ({v["parameters"]} parameters): mean gradient norm {v["mean gradient norm"]:.2e}, '
                                      f'relative weight change {v["relative weight change"]:.3f}' for g, v in groups.items()))
    return lines


# -------------------------------------------------------------------------------------------------
def depth_options(args):
    if args.depth_model:
        opt = {'type': 'MonocularDepth', 'backend': args.depth_backend, 'model_path': args.depth_model}
        if args.depth_input_size:
            opt['input_size'] = args.depth_input_size
        return opt, f'depth network {args.depth_backend}: {osp.normpath(args.depth_model)}'
    return {'type': 'MonocularDepth'}, 'weight-free PRIOR (no --depth-model given)'


# the settings that determine the trained DKENets and stage 2 NBSR of a seed: --reuse loads them only when
# these agree
NETWORK_SETTINGS = ('train_scenes', 'scene_size', 'crop', 'batch', 'ke_iters', 'ke_lr', 'kernel_loss',
                    'kernel_loss_weight', 'sr_iters', 'sr_crop', 'sr_batch')


def network_settings(cfg, noise):
    return {**{k: cfg.get(k) for k in NETWORK_SETTINGS}, 'noise': noise}


def dkenet_file(out_dir, arch, use_depth, seed):
    return osp.join(out_dir, f'dkenet_{arch}_{"depth" if use_depth else "nodepth"}_seed{seed}.pth')


def load_reused(reuse_dir, cfg, noise, seed, archs):
    """The DKENets and stage 2 NBSR of ``seed`` saved by an earlier run in ``reuse_dir`` (None where absent);
    stops when that run's network settings differ from this run's."""
    meta_path = osp.join(reuse_dir, f'networks_seed{seed}.json')
    if not osp.isfile(meta_path):
        raise SystemExit(f'--reuse {reuse_dir}: no networks_seed{seed}.json (run once without --reuse, with --out there)')
    with open(meta_path) as f:
        saved = json.load(f)
    wanted = network_settings(cfg, noise)
    if saved != wanted:
        diff = {k: (saved.get(k), wanted.get(k)) for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k)}
        raise SystemExit(f'--reuse {reuse_dir}: seed {seed} was trained with other settings (saved, now): {diff}')
    ke_nets = {}
    for arch in archs:
        nets = []
        for use_depth in (False, True):
            net = build_dkenet(arch, use_depth, seed)
            net.load_state_dict(torch.load(dkenet_file(reuse_dir, arch, use_depth, seed), map_location='cpu'))
            net.eval().requires_grad_(False)
            net.arch = arch
            nets.append(net)
        ke_nets[arch] = tuple(nets)
    sr_path = osp.join(reuse_dir, f'nbsr_stage2_seed{seed}.pth')
    return ke_nets, (sr_path if cfg['sr_iters'] > 0 else None)


def run_seed(seed, cfg, tests, deg, depth_opt, depth_net, est_depths, pca_path, out_dir, noise=False):
    t0 = time.time()
    scenes = make_scenes(cfg['train_scenes'], cfg['scene_size'], seed, 'train')
    ke_sampler = SceneSampler(scenes, deg, cfg['crop'], cfg['batch'], seed)
    ke_nets, curves, reused_sr = {}, {}, None
    if cfg.get('reuse'):
        ke_nets, reused_sr = load_reused(cfg['reuse'], cfg, noise, seed, cfg['archs'])
        log(f'seed {seed}: DKENets{" and the stage 2 NBSR" if reused_sr else ""} loaded from {cfg["reuse"]} (--reuse)')
        # the sampler's draws are spent as if the last DKENet had trained (the mean kernel below reads on)
        ke_sampler.rng = np.random.default_rng([seed, 7])
        for _ in range(cfg['ke_iters']):
            ke_sampler()
    for arch in cfg['archs'] if not ke_nets else ():
        nets = []
        for use_depth in (False, True):
            # every network of a seed sees the same sample sequence
            ke_sampler.rng = np.random.default_rng([seed, 7])
            curve = curves.setdefault(arch, {}).setdefault('exact depth' if use_depth else 'without depth', [])
            net = train_dkenet(arch, use_depth, ke_sampler, cfg, seed, tests, curve)
            net.arch = arch
            nets.append(net)
            # the scored (EMA) weights, loadable into build_dkenet(arch, use_depth, .)
            atomic_torch_save(net.state_dict(), dkenet_file(out_dir, arch, use_depth, seed))
        ke_nets[arch] = tuple(nets)
    mean_kernel = torch.stack([ke_sampler()['kernel'].mean(dim=(0, 2, 3)) for _ in range(8)]).mean(0).view(1, -1, 1, 1)
    res = {'seed': seed, 'row1': row1(ke_nets, tests, mean_kernel, depth_net, est_depths), 'learning_curves': curves}
    if cfg['sr_iters'] > 0:
        sr_sampler = SceneSampler(scenes, deg, cfg['sr_crop'], cfg['sr_batch'], seed + 100)
        if reused_sr:
            sr_net = NBSR(scale=SCALE, kernel_size=KSIZE, pca_path=pca_path, **SR_WIDTHS)
            sr_net.load_state_dict(torch.load(reused_sr, map_location='cpu'))
            sr_net.eval().requires_grad_(False)
            # the stage 2 sampler's draws are spent as if it had trained, so stage 3 sees the same samples
            for _ in range(cfg['sr_iters']):
                sr_sampler()
        else:
            sr_net = train_nbsr(sr_sampler, cfg, seed, pca_path)
            atomic_torch_save(sr_net.state_dict(), osp.join(out_dir, f'nbsr_stage2_seed{seed}.pth'))
        arch = HEADLINE_ARCH if HEADLINE_ARCH in ke_nets else next(iter(ke_nets))
        res['svkr_arch'] = arch
        if cfg.get('sr_finetune', 0) > 0:
            sr_net, res['stage3'] = finetune_nbsr_in_loop(ke_nets[arch][1], sr_net, depth_opt, pca_path, sr_sampler,
                                                          cfg, seed, tests)
            atomic_torch_save(sr_net.state_dict(), osp.join(out_dir, f'nbsr_stage3_seed{seed}.pth'))
        res['row2'], res['row3'], res['row5'], finals, svkr = loop_rows(ke_nets[arch][1], sr_net, depth_opt, tests, pca_path)
        res['row4'] = row4(svkr, tests, finals)
    if not cfg.get('reuse'):
        with atomic_write(osp.join(out_dir, f'networks_seed{seed}.json'), 'w') as f:
            json.dump(network_settings(cfg, noise), f, indent=1)
    if cfg.get('photo_rows'):
        res['row6'] = photo_rows(cfg, deg, seed)
    res['seconds'] = time.time() - t0
    return res


@torch.no_grad()
def _photo_scores(plain, with_depth, tests, mean_kernel):
    prior = MonocularDepth()
    return {'mean kernel': float(np.mean([calculate_kernel_psnr(mean_kernel.expand_as(t['kernel']), t['kernel'])
                                          for t in tests])),
            'without depth': mean_kernel_psnr(plain, tests, [None] * len(tests)),
            'prior depth of the HR image (as trained)': mean_kernel_psnr(with_depth, tests, [t['depth_lq'] for t in tests]),
            'prior depth of the LR image': mean_kernel_psnr(with_depth, tests, [prior(t['lq']) for t in tests]),
            'flat depth (0.5)': mean_kernel_psnr(with_depth, tests, [torch.full_like(t['depth_lq'], 0.5) for t in tests])}


def photo_rows(cfg, deg, seed):
    """Row 6: row 1 in the old setting (photographs, the prior's depth), headline structure, same budget."""
    train_pairs, tests = make_photo_data(cfg, deg)
    sampler = SceneSampler(train_pairs, deg, cfg['crop'], cfg['batch'], seed + 200)
    nets = []
    for use_depth in (False, True):
        sampler.rng = np.random.default_rng([seed + 200, 7])
        nets.append(train_dkenet(HEADLINE_ARCH, use_depth, sampler, cfg, seed))
    mean_kernel = torch.stack([sampler()['kernel'].mean(dim=(0, 2, 3)) for _ in range(8)]).mean(0).view(1, -1, 1, 1)
    return _photo_scores(nets[0], nets[1], tests, mean_kernel)


def build_depth_net(depth_opt):
    return MonocularDepth(**{k: v for k, v in depth_opt.items() if k != 'type'})


def run_seed_job(seed, job):
    """One seed's rows. ``job`` holds only picklable data (the degradation and the depth network are rebuilt
    from their options), so that --jobs can run it in a spawned process."""
    cfg, tests, noise, depth_opt, est_depths, pca_path, threads, out_dir = job
    torch.set_num_threads(threads)
    deg, depth_net = degradation(noise), build_depth_net(depth_opt)
    res = run_seed(seed, cfg, tests, deg, depth_opt, depth_net, est_depths, pca_path, out_dir, noise)
    r1 = res['row1']
    log(f'seed {seed} done ({res["seconds"]:.0f} s): mean kernel {r1["mean kernel"]:.2f} dB; '
        + '; '.join(f'{a}: ' + ', '.join(f'{k} {v:.2f}' for k, v in s.items())
                    for a, s in r1.items() if a != 'mean kernel'))
    return res


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='row 1, headline structure, one seed (< 10 min)')
    parser.add_argument('--seeds', default=None, help='comma-separated seeds (default: 0 quick, 0,1,2 full)')
    parser.add_argument('--archs', default=None,
                        help=f'DKENet structures, comma-separated, of {", ".join(ARCHS)} (default: per mode; module '
                             'docstring)')
    parser.add_argument('--depth-model', default=None, help='save_pretrained folder of the depth network')
    parser.add_argument('--depth-backend', default='dpt', choices=('dpt', 'depth_anything'))
    parser.add_argument('--depth-input-size', type=int, default=None)
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads per process (default 1: on the shared 2-core machine a DKENet step took '
                             '0.5 s with one thread and 10 s with two, every fork/join waiting for a busy core)')
    parser.add_argument('--jobs', type=int, default=1, help='seeds trained in parallel processes (full run)')
    parser.add_argument('--noise', action='store_true', help='add the training noise and JPEG to the blur')
    parser.add_argument('--iters', type=int, default=None, help='override the DKENet iteration budget')
    parser.add_argument('--sr-iters', type=int, default=None, help='override the NBSR iteration budget')
    parser.add_argument('--sr-finetune', type=int, default=0,
                        help='full run: then fine-tune NBSR for this many iterations inside the loop on the kernels '
                             'SVKR estimates (stage 3 with a frozen DKENet); rows 2-5 use it')
    parser.add_argument('--sr-finetune-gt-weight', type=float, default=SR_FINETUNE_GT_WEIGHT,
                        help='stage 3: weight of the L1 of NBSR given the ground-truth kernels, added to the loop\'s '
                             f'loss (default {SR_FINETUNE_GT_WEIGHT:g}; 0 = the loop alone, as before issue 20)')
    parser.add_argument('--sr-finetune-lr', type=float, default=None,
                        help=f'stage 3 learning rate (default {SR_FINETUNE_LR:g}, cosine decay)')
    parser.add_argument('--sr-finetune-train', default='all', choices=('all', 'kernel path', 'image trunk'),
                        help='stage 3: which of NBSR\'s parameters train (a diagnosis; default all)')
    parser.add_argument('--reuse', default=None,
                        help='an earlier run\'s --out: load its DKENets and stage 2 NBSRs (same seeds and network '
                             'settings) instead of training them, e.g. to compare stage 3 settings')
    parser.add_argument('--kernel-loss', default='l1', choices=('l1', 'mse'),
                        help="DKENet's loss on the kernel map: l1 (the option files') or mse (what kernel PSNR scores)")
    parser.add_argument('--kernel-loss-weight', type=float, default=1.0,
                        help='weight of DKENet\'s L1 kernel-map loss (default 1, as the option files; '
                             f'{KERNEL_TAPS} = k^2 makes it the L1 distance summed over a kernel\'s taps)')
    parser.add_argument('--ke-lr', type=float, default=None, help=f'override the DKENet learning rate ({KE_LR})')
    parser.add_argument('--crop', type=int, default=None,
                        help='HR training crop in px (default 128; the scenes are 256 px, 256 trains on whole scenes)')
    parser.add_argument('--batch', type=int, default=None, help='DKENet training batch (default 4)')
    parser.add_argument('--photo-rows', action='store_true',
                        help='full run: add row 6 (the old setting: photographs with the prior depth)')
    parser.add_argument('--tiny', action='store_true', help='toy sizes to test the script (numbers mean nothing)')
    parser.add_argument('--out', default=osp.join(ROOT, 'results', 'svkr_evidence'))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    mode = 'quick' if args.quick else 'full'
    cfg = dict(SETTINGS[mode])
    if args.tiny:
        cfg.update(TINY, sr_iters=0 if args.quick else TINY['sr_iters'])
    if args.iters:
        cfg['ke_iters'] = args.iters
    if args.ke_lr:
        cfg['ke_lr'] = args.ke_lr
    if args.crop:
        cfg['crop'] = args.crop
    if args.batch:
        cfg['batch'] = args.batch
    cfg['kernel_loss_weight'] = args.kernel_loss_weight
    cfg['kernel_loss'] = args.kernel_loss
    if args.sr_iters is not None and not args.quick:
        cfg['sr_iters'] = args.sr_iters
    cfg['sr_finetune'] = 0 if args.quick else args.sr_finetune
    cfg['sr_finetune_gt_weight'] = args.sr_finetune_gt_weight
    cfg['sr_finetune_lr'] = args.sr_finetune_lr or SR_FINETUNE_LR
    cfg['sr_finetune_train'] = args.sr_finetune_train
    cfg['reuse'] = args.reuse
    cfg['photo_rows'] = args.photo_rows and not args.quick
    if args.seeds:
        cfg['seeds'] = tuple(int(s) for s in args.seeds.split(','))
    if args.archs:
        cfg['archs'] = tuple(args.archs.split(','))
        bad = [a for a in cfg['archs'] if a not in ARCHS]
        if bad:
            parser.error(f'--archs: unknown structure(s) {bad}; expected {", ".join(ARCHS)}')
    t_start = time.time()
    deg = degradation(args.noise)
    depth_opt, depth_desc = depth_options(args)
    depth_net = build_depth_net(depth_opt)
    tests = make_test_set(cfg, deg)
    with torch.no_grad():
        est_depths = [resize_depth(depth_net(t['lq']), t['lq'].shape[-2:]) for t in tests]
    log(f'SVKR evidence ({mode}): RGB-D scenes with exact depth (ssr_data/scenes.py), x{SCALE}, k={KSIZE}, '
        f'depth-driven SV blur{" + noise + JPEG" if args.noise else " (blur only)"}; estimated depth: {depth_desc}')
    sr_budget = (f', {cfg["sr_iters"]} per NBSR' if cfg['sr_iters'] else '') + (
        f' + {cfg["sr_finetune"]} inside the loop (stage 3, frozen DKENet, lr {cfg["sr_finetune_lr"]:g}, '
        f'ground-truth kernel loss weight {cfg["sr_finetune_gt_weight"]:g}'
        + ('' if cfg['sr_finetune_train'] == 'all' else f', only the {cfg["sr_finetune_train"]} of NBSR trains')
        + ')' if cfg['sr_finetune'] else '')
    log(f'train: {cfg["train_scenes"]} scenes of {cfg["scene_size"]} px per seed (training photographs), crops of '
        f'{cfg["crop"]} px HR, batch {cfg["batch"]}, {cfg["ke_iters"]} iterations per DKENet (lr {cfg.get("ke_lr", KE_LR):g}, kernel loss '
        f'{cfg["kernel_loss"]} x {cfg["kernel_loss_weight"]:g}){sr_budget}; '
        f'test: {len(tests)} scenes of {cfg["test_size"]} px (held-out photographs); seeds {list(cfg["seeds"])}; '
        f'structures {list(cfg["archs"])}')
    os.makedirs(args.out, exist_ok=True)
    pca_path = fit_kernel_pca(osp.join(args.out, 'kernel_pca_k21.pth')) if cfg['sr_iters'] > 0 else None
    job = (cfg, tests, args.noise, depth_opt, est_depths, pca_path, args.threads, args.out)
    pool = None
    if args.jobs > 1 and len(cfg['seeds']) > 1:
        # spawn, not fork: on a CUDA machine (an H200, torch 2.11) forked children failed at their first
        # backward pass, with "Unable to handle autograd's threading in combination with fork-based
        # multiprocessing" or, forked before any backward here, "CUDA error: initialization error"
        import multiprocessing
        pool = multiprocessing.get_context('spawn').Pool(min(args.jobs, len(cfg['seeds'])))
        pending = pool.starmap_async(run_seed_job, [(seed, job) for seed in cfg['seeds']])
    probe = cfg['test_size'] // SCALE
    rf = {arch: receptive_field(build_dkenet(arch, True, 0), probe) for arch in ARCHS}
    log(f'receptive field of one LR pixel\'s kernel, in a {probe}x{probe} LR image (LR pixels): '
        + ', '.join(f'{a} {v}' + (' (the whole image)' if v >= probe else '') for a, v in rf.items()))
    estimated_focus = focus_estimates(tests)
    references = reference_rows(tests, deg, estimated_focus)
    in_view = focus_in_view(tests, rf['paper'] | 1)
    log(f'test pixels whose {rf["paper"]}x{rf["paper"]} receptive field holds an in-focus pixel (|depth - focus| <= 0.05): '
        f'{in_view[0]:.0%}; test images holding one anywhere: {in_view[1]:.0%}')
    focus_error = focus_estimate_error(tests, estimated_focus)
    log(f'focus plane from the LR image and exact depth (FocusPlaneEstimator, the defocus_input option): mean error '
        f'{focus_error[0]:.3f} over the test scenes (the constant guess 0.5: {focus_error[1]:.3f})')
    probe_scenes = make_scenes(24, cfg['scene_size'], 0, 'train')
    stats = [crop_depth_stats(probe_scenes, c) for c in sorted({cfg['crop'], cfg['scene_size']})]
    log('training crops (24 training scenes, 400 crops, d_f ~ U(0, 1)): ' + '; '.join(
        f"{st['crop']} px: mean depth range {st['mean_depth_range']:.2f}, in-focus pixel in {st['in_focus_share']:.0%}"
        for st in stats))
    grads = initial_gradients(tests)
    log('at initialisation, mean |gradient| of the L1 kernel loss per part of the context DKENet, mean over taps: '
        + ', '.join(f'{k} {v:.1e}' for k, v in grads.items() if k != 'depth effect / image effect' and 'x k^2' not in k)
        + f'; summed over taps (x k^2 = {KERNEL_TAPS}, --kernel-loss-weight {KERNEL_TAPS}): '
        + ', '.join(f'{k[:-6]} {v:.1e}' for k, v in grads.items() if k.endswith(' x k^2'))
        + " (Adam's eps: 1e-8); a flat instead of the exact depth moves the kernels "
        f'{grads["depth effect / image effect"]:.1e} as much as another test image does')
    if pool is not None:
        try:
            runs = pending.get()
        finally:
            pool.close()
            pool.join()
    else:
        runs = [run_seed_job(seed, job) for seed in cfg['seeds']]

    arch = HEADLINE_ARCH if HEADLINE_ARCH in cfg['archs'] else cfg['archs'][0]
    gains = {key: [r['row1'][arch][key] - r['row1'][arch]['without depth'] for r in runs]
             for key in ('exact depth', 'estimated depth')}
    results = {'mode': mode, 'settings': {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
               'noise': args.noise, 'estimated_depth': depth_desc, 'receptive_field': rf, 'focus_in_view': in_view,
               'initial_gradients': grads, 'crop_depth_stats': stats, 'focus_estimate_error': focus_error,
               'references': references, 'headline_arch': arch,
               'runs': runs, 'depth_gain_db': {k: stat(v)[0] for k, v in gains.items()},
               'seconds': time.time() - t_start}
    os.makedirs(args.out, exist_ok=True)
    if 'row4' in runs[0]:
        mean_r4 = copy.deepcopy(runs[0]['row4'])
        for key in mean_r4['curves']:
            mean_r4['curves'][key] = [stat([r['row4']['curves'][key][i] for r in runs])[0]
                                      for i in range(len(mean_r4['curves'][key]))]
        plot_row4(mean_r4, osp.join(args.out, 'row4_deviation.png'),
                  f'SR PSNR with deviated kernels / depth (mean of {len(runs)} seed(s), '
                  f'{len(tests)} test scenes)')
    path = osp.join(args.out, f'svkr_evidence_{mode}.json')
    with atomic_write(path, 'w') as f:
        json.dump(results, f, indent=2)
    log('')
    for line in table(runs, depth_desc, references):
        log(line)
    for line in stage3_lines(runs):
        log(line)
    if 'row4' in runs[0]:
        log('')
        for line in row4_checks(runs):
            log(line)
    log(f'\n({time.time() - t_start:.0f} s; results in {path})')
    log(f'depth gain in kernel PSNR: exact {stat(gains["exact depth"])[0]:+.2f} dB, '
        f'estimated {stat(gains["estimated depth"])[0]:+.2f} dB')


if __name__ == '__main__':
    main()
