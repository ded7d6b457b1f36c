"""Evidence for SVKR (issue 4): does depth help kernel estimation, does the loop help, and is the
non-blind SR ordered GT kernels >= estimated kernels > bicubic?

Data: the McMaster photographs in ``../shared/data/train_hr`` when present, else scikit-image's
photographs. Each HR image gets its depth from ``MonocularDepth`` (default backend: the weight-free
prior) once; the training pool is random HR crops degraded with SSR's depth-driven spatially variant
blur at x4 (``SVDegradation``, kernel_mode depth, blur only unless ``--noise``), the test set is whole
held-out images degraded the same way with fixed seeds. Every row uses the same small widths, seeds,
training pool and iteration budget; networks train with plain Adam + L1 (the stage losses), on CPU.

Rows:
1. DKENet without depth (MANet-like) vs with depth: kernel PSNR over all pixels of the test kernel maps.
   The with-depth net is scored with the dataset depth (depth of the HR image, what stage 1 trains
   with) and with the depth estimated from the LR image (what SVKR's K⁰ uses).
2. SVKR T = 0..3 (trained DKENet + NBSR, no fine-tuning): kernel PSNR and SR PSNR (Y, crop 4) per T.
3. NBSR with ground-truth kernels / with SVKR's estimated kernels / bicubic: SR PSNR.

``--quick`` (< 10 min on 2 CPU cores) runs row 1 only. The last printed line is always
``kernel PSNR with depth minus without depth: <signed value> dB`` (with depth = the dataset depth).

    python scripts/experiments/svkr_evidence.py --quick
    python scripts/experiments/svkr_evidence.py            # all three rows
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
import time

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import ssr_arch  # noqa: E402,F401
from basicsr.archs import build_network  # noqa: E402
from basicsr.metrics import calculate_psnr  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from ssr_arch.dkenet_arch import DKENet  # noqa: E402
from ssr_arch.nbsr_arch import NBSR  # noqa: E402
from ssr_arch.svkr_arch import SVKR  # noqa: E402
from ssr_data.degradations import SVDegradation  # noqa: E402
from ssr_utils.kernel_metrics import calculate_kernel_psnr  # noqa: E402

SHARED_HR = osp.join(ROOT, '..', 'shared', 'data', 'train_hr')
DEMO_PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'immunohistochemistry', 'hubble_deep_field', 'cat')
SCALE, KSIZE = 4, 21

# Row 1 uses the same settings in both modes, so a full run contains the quick run (same numbers).
# The photographs are area-downscaled by --hr-downscale (default 2) before cropping: a 64 px crop then
# spans a quarter of the scene, so the depth (and with it the blur) varies inside a training crop.
SETTINGS = {
    'quick': dict(pool=512, crop=64, ke_iters=300, sr_iters=0, batch=16, num_test=4, test_size=248),
    'full': dict(pool=512, crop=64, ke_iters=300, sr_iters=500, batch=16, num_test=4, test_size=248),
}
# --tiny: the same code on toy sizes, for the tests (its numbers are not evidence)
TINY = dict(pool=12, crop=48, ke_iters=2, sr_iters=2, batch=4, num_test=2, test_size=64)
KE_WIDTHS = dict(num_feat=[32, 64], num_depth_feat=[16, 32], reduction=2)
SR_WIDTHS = dict(num_feat=32, num_block=3, num_grow_ch=16, num_cond=32)


def log(msg):
    print(msg, flush=True)


def _downscale(img, factor):
    if factor == 1:
        return img
    h, w = img.shape[:2]
    return cv2.resize(img, (round(w / factor), round(h / factor)), interpolation=cv2.INTER_AREA)


def load_photos(source=None, downscale=1):
    """(name, H×W×3 float32 RGB in [0, 1]) list and a description of the source."""
    photos, desc = _load_photos(source)
    if downscale != 1:
        photos = [(name, _downscale(img, downscale)) for name, img in photos]
        desc += f', area-downscaled x{downscale:g}'
    return photos, desc


def _load_photos(source=None):
    folder = source or SHARED_HR
    files = sorted(glob.glob(osp.join(folder, '*.tif')) + glob.glob(osp.join(folder, '*.png')))
    if files:
        photos = []
        for path in files:
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f'cannot read image {path}')
            photos.append((osp.splitext(osp.basename(path))[0], img[..., ::-1].astype(np.float32) / 255.0))
        return photos, f'{len(photos)} photographs from {osp.normpath(folder)}'
    if source:
        raise FileNotFoundError(f'no .tif/.png images in {source}')
    import skimage.data
    photos = [(name, getattr(skimage.data, name)()[..., :3].astype(np.float32) / 255.0) for name in DEMO_PHOTOS]
    return photos, f'{len(photos)} scikit-image photographs (../shared/data/train_hr absent)'


def to_tensor(img):
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


def build_data(photos, cfg, seed, noise):
    """Training pool (random crops) and test set (held-out images, centre crop ``test_size``)."""
    depth_net = build_network({'type': 'MonocularDepth'})
    deg = SVDegradation({'scale': SCALE, 'kernel_size': KSIZE, 'kernel_mode': 'depth', 'use_noise': noise,
                         'use_jpeg': noise})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    test_ids, train_ids = order[:cfg['num_test']], order[cfg['num_test']:]
    hr, depth = {}, {}
    for i, (_, img) in enumerate(photos):
        t = to_tensor(img)
        hr[i] = t
        depth[i] = depth_net(t[None])[0]  # depth of the whole HR image, as the offline depth LMDB
    pool = {'lq': [], 'gt': [], 'kernel': [], 'depth_lq': []}
    c = cfg['crop']
    for n in range(cfg['pool']):
        i = int(train_ids[n % len(train_ids)])
        _, hh, ww = hr[i].shape
        y, x = int(rng.integers(0, hh - c + 1)), int(rng.integers(0, ww - c + 1))
        gt, d = hr[i][:, y:y + c, x:x + c], depth[i][:, y:y + c, x:x + c]
        out = deg(gt, d, np.random.default_rng([seed, n]))
        for key, value in (('lq', out['lq']), ('gt', gt), ('kernel', out['kernel']), ('depth_lq', out['depth_lq'])):
            pool[key].append(value)
    pool = {k: torch.stack(v) for k, v in pool.items()}
    tests = []
    for j, i in enumerate(test_ids):
        i = int(i)
        _, hh, ww = hr[i].shape
        s = min(cfg['test_size'], hh, ww) // SCALE * SCALE
        y, x = (hh - s) // 2, (ww - s) // 2
        gt, d = hr[i][:, y:y + s, x:x + s], depth[i][:, y:y + s, x:x + s]
        out = deg(gt, d, np.random.default_rng([seed, 10**6 + j]))
        tests.append({'name': photos[i][0], 'lq': out['lq'][None], 'gt': gt[None], 'kernel': out['kernel'][None],
                      'depth_lq': out['depth_lq'][None]})
    return pool, tests, depth_net


def train_loop(net, step_fn, pool, iters, batch, seed, lr, label):
    """Adam + cosine decay; the same batch order for every network (generator seeded with ``seed``)."""
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters, eta_min=lr * 0.05)
    g = torch.Generator().manual_seed(seed)
    n = pool['lq'].shape[0]
    t0 = time.time()
    net.train()
    for it in range(1, iters + 1):
        idx = torch.randint(0, n, (batch, ), generator=g)
        loss = step_fn(net, {k: v[idx] for k, v in pool.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if it % max(iters // 4, 1) == 0 or it == iters:
            log(f'  [{label}] iter {it}/{iters}  loss {loss.item():.3e}  ({time.time() - t0:.0f} s)')
    return net.eval()


def train_dkenet(use_depth, pool, cfg, seed):
    torch.manual_seed(seed)
    net = DKENet(kernel_size=KSIZE, scale=SCALE, use_depth=use_depth, **KE_WIDTHS)

    def step(net, b):
        return F.l1_loss(net(b['lq'], b['depth_lq'] if use_depth else None), b['kernel'])

    return train_loop(net, step, pool, cfg['ke_iters'], cfg['batch'], seed, 2e-3,
                      f'DKENet {"with" if use_depth else "without"} depth')


def train_nbsr(pool, cfg, seed):
    torch.manual_seed(seed)
    # without pca_path NBSR fits its 10-d PCA on the default x4 kernel distribution (seed 0)
    net = NBSR(scale=SCALE, kernel_size=KSIZE, **SR_WIDTHS)

    def step(net, b):
        return F.l1_loss(net(b['lq'], b['kernel']), b['gt'])

    return train_loop(net, step, pool, cfg['sr_iters'], max(cfg['batch'] // 2, 1), seed, 1e-3, 'NBSR (GT kernels)')


def sr_psnr(sr, gt):
    return calculate_psnr(tensor2img(sr), tensor2img(gt), crop_border=SCALE, test_y_channel=True)


@torch.no_grad()
def kernel_psnr(net, tests, depth_mode, depth_net):
    values = []
    for t in tests:
        if depth_mode == 'none':
            depth = None
        elif depth_mode == 'data':
            depth = t['depth_lq']
        else:  # estimated from the LR image
            depth = depth_net(t['lq'])
        values.append(calculate_kernel_psnr(net(t['lq'], depth), t['kernel']))
    return float(np.mean(values))


@torch.no_grad()
def svkr_rows(ke, sr_net, tests, use_depth=True, num_iter=3):
    svkr = SVKR(num_iter=num_iter, gamma=0.9, use_depth=use_depth,
                kernel_opt=dict(type='DKENet', kernel_size=KSIZE, **KE_WIDTHS),
                sr_opt=dict(type='NBSR', kernel_size=KSIZE, pca_dim=10, **SR_WIDTHS), scale=SCALE).eval()
    svkr.kernel_net.load_state_dict(ke.state_dict())
    svkr.sr_net.load_state_dict(sr_net.state_dict())
    kp = np.zeros(num_iter + 1)
    sp = np.zeros(num_iter + 1)
    for t in tests:
        out = svkr(t['lq'], return_all=True)
        for i in range(num_iter + 1):
            kp[i] += calculate_kernel_psnr(out['kernels'][i], t['kernel']) / len(tests)
            sp[i] += sr_psnr(out['srs'][i], t['gt']) / len(tests)
    return kp.tolist(), sp.tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='row 1 only, < 10 min on 2 CPU cores')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--data', default=None, help='folder of HR photographs (default: ../shared/data/train_hr)')
    parser.add_argument('--noise', action='store_true', help='add the training noise and JPEG to the blur')
    parser.add_argument('--iters', type=int, default=None, help='override the iteration budget of every network')
    parser.add_argument('--hr-downscale', type=float, default=2.0, help='area-downscale the photographs first')
    parser.add_argument('--tiny', action='store_true', help='toy sizes to test the script (numbers mean nothing)')
    parser.add_argument('--out', default=osp.join(ROOT, 'results', 'svkr_evidence'))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mode = 'quick' if args.quick else 'full'
    cfg = dict(SETTINGS[mode])
    if args.tiny:
        cfg.update(TINY, sr_iters=0 if args.quick else TINY['sr_iters'])
    if args.iters:
        cfg['ke_iters'] = args.iters
        cfg['sr_iters'] = 0 if args.quick else args.iters
    t_start = time.time()
    photos, source = load_photos(args.data, args.hr_downscale)
    log(f'SVKR evidence ({mode}): {source}; x{SCALE}, k={KSIZE}, depth-driven SV blur'
        f'{" + noise + JPEG" if args.noise else " (blur only)"}; depth: MonocularDepth (prior backend)')
    pool, tests, depth_net = build_data(photos, cfg, args.seed, args.noise)
    log(f'pool: {pool["lq"].shape[0]} crops of {cfg["crop"]}px HR; test: {len(tests)} held-out images '
        f'({", ".join(t["name"] for t in tests)}) of {tests[0]["gt"].shape[-1]}px HR; '
        f'{cfg["ke_iters"]} iterations per DKENet, batch {cfg["batch"]}, seed {args.seed}')

    results = {'mode': mode, 'source': source, 'settings': cfg, 'seed': args.seed, 'noise': args.noise}
    ke_plain = train_dkenet(False, pool, cfg, args.seed)
    ke_depth = train_dkenet(True, pool, cfg, args.seed)
    mean_kernel = pool['kernel'].mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    row1 = {
        'reference: mean training kernel everywhere (no network)': float(np.mean(
            [calculate_kernel_psnr(mean_kernel.expand_as(t['kernel']), t['kernel']) for t in tests])),
        'without depth': kernel_psnr(ke_plain, tests, 'none', depth_net),
        'with depth (dataset depth)': kernel_psnr(ke_depth, tests, 'data', depth_net),
        'with depth (DE of the LR image)': kernel_psnr(ke_depth, tests, 'lr', depth_net),
    }
    results['row1_kernel_psnr'] = row1
    results['row1_seconds'] = time.time() - t_start
    log(f'row 1 done after {results["row1_seconds"]:.0f} s: ' + ', '.join(f'{k} {v:.2f} dB' for k, v in row1.items()))
    lines = ['', '| row | setting | kernel PSNR (dB) | SR PSNR (dB, Y) |', '| --- | --- | --- | --- |']
    for key, value in row1.items():
        lines.append(f'| 1 DKENet | {key} | {value:.2f} | |')

    if not args.quick:
        sr_net = train_nbsr(pool, cfg, args.seed)
        kp, sp = svkr_rows(ke_depth, sr_net, tests, use_depth=True)
        kp_nd, sp_nd = svkr_rows(ke_plain, sr_net, tests, use_depth=False, num_iter=0)
        results['row2'] = {'kernel_psnr': kp, 'sr_psnr': sp, 'no_depth_T0': {'kernel_psnr': kp_nd[0],
                                                                            'sr_psnr': sp_nd[0]}}
        for t in range(len(kp)):
            lines.append(f'| 2 SVKR | T = {t} | {kp[t]:.2f} | {sp[t]:.2f} |')
        lines.append(f'| 2 SVKR | no depth (DKENet without depth), T = 0 | {kp_nd[0]:.2f} | {sp_nd[0]:.2f} |')
        with torch.no_grad():
            gt_k = float(np.mean([sr_psnr(sr_net(t['lq'], t['kernel']), t['gt']) for t in tests]))
            bic = float(np.mean([sr_psnr(F.interpolate(t['lq'], scale_factor=SCALE, mode='bicubic',
                                                       align_corners=False).clamp(0, 1), t['gt']) for t in tests]))
        results['row3_sr_psnr'] = {'ground-truth kernels': gt_k, 'estimated kernels (SVKR T=3)': sp[-1],
                                   'bicubic': bic}
        for key, value in results['row3_sr_psnr'].items():
            lines.append(f'| 3 NBSR | {key} | | {value:.2f} |')

    diff = row1['with depth (dataset depth)'] - row1['without depth']
    results['kernel_psnr_depth_gain_db'] = diff
    results['seconds'] = time.time() - t_start
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, f'svkr_evidence_{mode}.json'), 'w') as f:
        json.dump(results, f, indent=2)
    for line in lines:
        log(line)
    log(f'\n({time.time() - t_start:.0f} s; results in {osp.join(args.out, f"svkr_evidence_{mode}.json")})')
    log(f'kernel PSNR with depth minus without depth: {diff:+.2f} dB')


if __name__ == '__main__':
    main()
