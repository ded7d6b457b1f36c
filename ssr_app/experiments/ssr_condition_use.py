"""How much each trained arm of ``ssr_ablation.py`` uses each of its conditions, at the network itself rather
than after sampling and colour correction: for every trained arm in an ablation output folder, on the first
training crops of its pool, the change of the network's prediction (ε or v) when one condition is removed
(flat depth 0.5, the PCA mean kernel, the LR image blurred), relative to the prediction, at a few timesteps;
and for AMF arms the RMS of the zero-initialised output layers of each modality's modulation (all zero at
initialisation: how far training has moved each modality's path); and each arm's denoising loss at those
timesteps on training crops against the same number of crops cut alike from the held-out test images (the
ablation's ``scenes``, ``photos`` and ``val`` sets): a held-out loss above the training loss is the network
learning its 512 crops rather than the task.

    python scripts/experiments/ssr_condition_use.py --out results/ssr_ablation   # after (or during) the ablation

Writes ``<out>/condition_use.json`` and prints a markdown table.
"""
import argparse
import json
import os.path as osp
import sys
from collections import OrderedDict

from ssr_app.experiments import ssr_ablation as abl  # noqa: E402  (applies compat, registers the parts)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ssr_pipelines.builder import prediction_target  # noqa: E402

TIMESTEP_FRACTIONS = (0.1, 0.5, 0.9)


def modulation_rms(net):
    """Modality -> RMS of the zero-initialised output layers of its AMF modulations (None: not AMF)."""
    if not any(n.startswith('amf.') for n, _ in net.named_parameters()):  # sft, concat
        return {}
    out = {}
    for m in net.modalities:
        ws = [p.detach().flatten() for n, p in net.named_parameters()
              if n.startswith('amf.') and n.split('.')[1].endswith(f'_{m}') and ('mlp_alpha.2.' in n or
                                                                                   'mlp_beta.2.' in n)]
        out[m] = float(torch.cat(ws).pow(2).mean().sqrt()) if ws else None
    return out


@torch.no_grad()
def prediction_changes(model, pool, pca, arm, crops):
    """Removal -> mean |Δprediction| / mean |prediction| (%), per timestep fraction."""
    _, modalities, maps, net_extra, _ = abl.ARMS[arm]
    net = model.bare_g
    idx = torch.arange(crops)
    batch = abl.batch_of(pool, idx, maps, net_extra.get('lr_input'), pca)
    gt = batch['gt']
    depth = batch.get('depth_lq') if 'depth' in modalities else None
    code = net.kernel_code(batch['kernel']) if 'kernel' in modalities else None
    lr_img = model.lr_encoder_image(batch['lq'], gt.shape[-2:], batch.get('svkr_sr'))
    z0 = net.encode_image(gt).float()
    z_lr = net.encode_image(lr_img).float()
    blurred = net.encode_image(model.lr_encoder_image(abl.blur_lr(batch['lq']), gt.shape[-2:],
                                                      None if batch.get('svkr_sr') is None
                                                      else abl.blur_lr(batch['svkr_sr']))).float()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(z0.shape, generator=gen)
    steps = model.noise_scheduler.config.num_train_timesteps
    res = OrderedDict()
    removed_inputs = dict(kernel=dict(kernel_code=None if code is None else torch.zeros_like(code)),
                          depth=dict(depth=None if depth is None else torch.full_like(depth, abl.FLAT_DEPTH)),
                          lr=dict(lr_latent=blurred))
    feats = net.encode_features(z_lr, depth, code)
    for what in [m for m in ('kernel', 'depth', 'lr') if m in modalities]:
        res[what] = OrderedDict()
        # the modality's encoder at its first level (the fusion method's input where it has no encoders)
        kw = dict(dict(lr_latent=z_lr, depth=depth, kernel_code=code), **removed_inputs[what])
        moved = net.encode_features(**kw)
        key = what if what in feats else next(iter(feats))
        a, b = feats[key][0], moved[key][0]
        res[what]['encoder'] = 100 * float((a - b).abs().mean()) / float(a.abs().mean())
    for frac in TIMESTEP_FRACTIONS:
        t = torch.full((crops, ), int(frac * (steps - 1)), dtype=torch.long)
        zt = model.noise_scheduler.add_noise(z0, noise, t)
        base = net(zt, t, lr_latent=z_lr, depth=depth, kernel_code=code).float()
        scale = float(base.abs().mean())
        for what in res:
            kw = dict(dict(lr_latent=z_lr, depth=depth, kernel_code=code), **removed_inputs[what])
            res[what][f't={frac:g}T'] = 100 * float((net(zt, t, **kw).float() - base).abs().mean()) / scale
    return res


def held_out_pool(items, crops_per_image, crop, seed=0):
    """Crops of ``crop``² HR (and the LR, every map, Iᵀ alike) cut at seeded positions from the held-out test
    ``items`` (``ssr_ablation.load_test_set``), in the layout of the training pool (``ssr_ablation.build_pool``)."""
    lcrop = crop // abl.SCALE
    rng = np.random.default_rng(seed)
    pool = {k: [] for k in abl.POOL_KEYS}
    for it in items:
        h, w = it['lq'].shape[-2:]
        lr_maps = {f'{kind}_{what}': m[0] for kind in ('gt', 't0', 't3')
                   for what, m in zip(('depth', 'code'), it['maps'][kind])}
        for _ in range(crops_per_image):
            y, x = int(rng.integers(0, h - lcrop + 1)), int(rng.integers(0, w - lcrop + 1))
            abl.append_crop(pool, y, x, lcrop, it['lq'][0], it['gt'][0], lr_maps, it['svkr_sr'][0])
    return {k: torch.stack(v).contiguous() for k, v in pool.items()}


@torch.no_grad()
def denoising_loss(model, pool, pca, arm, idx, batch=16):
    """The training objective (MSE between the prediction and its target, ε or v) on the crops ``idx`` of
    ``pool``, at each of ``TIMESTEP_FRACTIONS`` with seeded noise: timestep fraction -> loss."""
    _, modalities, maps, net_extra, _ = abl.ARMS[arm]
    net, sched = model.bare_g, model.noise_scheduler
    steps = sched.config.num_train_timesteps
    gen = torch.Generator().manual_seed(0)
    totals = OrderedDict((frac, 0.0) for frac in TIMESTEP_FRACTIONS)
    for first in range(0, len(idx), batch):
        b = abl.batch_of(pool, idx[first:first + batch], maps, net_extra.get('lr_input'), pca)
        gt = b['gt']
        depth = b.get('depth_lq') if 'depth' in modalities else None
        code = net.kernel_code(b['kernel']) if 'kernel' in modalities else None
        z0 = net.encode_image(gt).float()
        z_lr = net.encode_image(model.lr_encoder_image(b['lq'], gt.shape[-2:], b.get('svkr_sr'))).float()
        for frac in TIMESTEP_FRACTIONS:
            noise = torch.randn(z0.shape, generator=gen)
            t = torch.full((z0.shape[0], ), int(frac * (steps - 1)), dtype=torch.long)
            zt = sched.add_noise(z0, noise, t)
            target = prediction_target(sched, z0, noise, t)
            pred = net(zt, t, lr_latent=z_lr, depth=depth, kernel_code=code).float()
            totals[frac] += float((pred - target).pow(2).mean()) * z0.shape[0]
    return OrderedDict((f't={frac:g}T', v / len(idx)) for frac, v in totals.items())


def fmt_r(r):
    return 'n/a' if r is None else f'{r:+.2f}'


def depth_blur_relation(pool, crops_per_scene):
    """How much the ground-truth depth says about the blur in the training crops: Pearson's r between the depth
    and the first component of the ground-truth kernel's PCA code (the kernel's width, mostly) over every LR
    pixel of the pool, and within each scene (its ``crops_per_scene`` consecutive crops): the scene's r, its mean
    and the mean of |r| over scenes. The scene data blurs by the distance to a focus plane drawn per image, so
    the sign of the within-scene relation changes from scene to scene."""
    depth = pool['gt_depth'].float()[:, 0]
    width = pool['gt_code'].float()[:, 0]

    def pearson(a, b):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        den = float(a.norm() * b.norm())
        return float((a * b).sum()) / den if den > 0 else None

    n = depth.shape[0] // crops_per_scene
    per_scene = [pearson(depth[i * crops_per_scene:(i + 1) * crops_per_scene],
                         width[i * crops_per_scene:(i + 1) * crops_per_scene]) for i in range(n)]
    per_scene = [r for r in per_scene if r is not None]
    estimated = pool['t0_depth'].float()[:, 0]  # the SVKR's depth network on the LR scene
    return dict(pooled_r=pearson(depth, width), scenes=len(per_scene),
                scene_r_mean=float(np.mean(per_scene)) if per_scene else None,
                scene_abs_r_mean=float(np.mean(np.abs(per_scene))) if per_scene else None,
                estimated_vs_true_r=pearson(estimated, depth), estimated_vs_width_r=pearson(estimated, width))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='an ssr_ablation.py output folder (cache/pool.pth, arms/)')
    parser.add_argument('--tiny', action='store_true', help='the folder is a --tiny run')
    parser.add_argument('--prior', default='experiments/train_Prior_demo/prior_model')
    parser.add_argument('--train-opt', default='options/train_ssr_demo.yml')
    parser.add_argument('--test-opt', default='options/test_ssr_demo.yml')
    parser.add_argument('--svkr-ckpt', default=None)
    parser.add_argument('--depth-model', default=None)
    parser.add_argument('--crops', type=int, default=8)
    parser.add_argument('--loss-crops', type=int, default=64,
                        help='crops of the training pool and of the held-out images for the denoising loss')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import logging
    logging.getLogger('basicsr').setLevel(logging.WARNING)
    out = abl.rel(args.out)
    res = abl.tiny_resources(osp.join(out, 'tiny_resources')) if args.tiny else abl.demo_resources(args)
    pca = abl.KernelPCA.load(res['pca_path'])
    pool = torch.load(osp.join(out, 'cache', 'pool.pth'), weights_only=True)
    crops = min(args.crops, pool['lq'].shape[0])
    cfg = dict(abl.MODES['tiny' if args.tiny else 'full'])
    arms_dir = osp.join(out, 'arms')
    codes = pool['t3_code'][:crops]
    code_std = [float(v) for v in codes.std(dim=(0, 2, 3))]
    relation = depth_blur_relation(pool, cfg['crops'])
    tests = [it for name in abl.TEST_SETS + ('val', ) for it in
             torch.load(osp.join(out, 'cache', f'{name}_items.pth'), weights_only=True)]
    crop = pool['gt'].shape[-1]
    held = held_out_pool(tests, -(-args.loss_crops // len(tests)), crop)
    n_loss = min(args.loss_crops, pool['lq'].shape[0], held['lq'].shape[0])
    train_idx = torch.randperm(pool['lq'].shape[0], generator=torch.Generator().manual_seed(1))[:n_loss]
    held_idx = torch.arange(n_loss)
    results = OrderedDict()
    for arm in abl.ARMS:
        ckpt = osp.join(arms_dir, f'{arm}_s{args.seed}.pth')
        if not osp.isfile(ckpt):
            continue
        model = abl.eval_model(arm, args.seed, res, cfg, ckpt, arms_dir)
        results[arm] = dict(prediction_change_pct=prediction_changes(model, pool, pca, arm, crops),
                            modulation_rms=modulation_rms(model.bare_g),
                            loss_train=denoising_loss(model, pool, pca, arm, train_idx),
                            loss_held_out=denoising_loss(model, held, pca, arm, held_idx))
        del model
    with abl.atomic_write(osp.join(out, 'condition_use.json'), 'w') as f:
        json.dump(dict(seed=args.seed, crops=crops, loss_crops=n_loss, timestep_fractions=TIMESTEP_FRACTIONS,
                       t3_code_std=code_std,
                       depth_blur_relation=relation, arms=results), f, indent=1)
    cols = ['encoder'] + [f't={f:g}T' for f in TIMESTEP_FRACTIONS]
    lines = [f'One condition removed (flat depth {abl.FLAT_DEPTH}, the PCA mean kernel, the LR image blurred): change '
             f'of the modality\'s encoder features at the first level ("encoder") and of the network\'s prediction '
             f'at three timesteps, mean |Δ| / mean |value| (%), on {crops} training crops, seed {args.seed}; RMS of '
             'the zero-initialised AMF output layers per modality (0 at initialisation). Standard deviation of the '
             'SVKR\'s kernel PCA code per component on those crops (raw; the network divides it by its '
             '`code_scale`): ' + ', '.join(f'{v:.4f}' for v in code_std) + '.',
             '', 'Depth against blur in the training crops (ground truth; Pearson r between the depth and the first '
             f'kernel-code component): {fmt_r(relation["pooled_r"])} over every LR pixel of the pool; within each of '
             f'its {relation["scenes"]} scenes {fmt_r(relation["scene_r_mean"])} on average, |r| '
             f'{relation["scene_abs_r_mean"]:.2f}'
             + (' (the sign changes from scene to scene: a focus plane drawn per image)'
                if abs(relation['scene_r_mean']) < 0.5 * relation['scene_abs_r_mean'] else '')
             + '. The SVKR\'s '
             f'estimated depth (T = 0 maps) against the true depth: r = {fmt_r(relation["estimated_vs_true_r"])}; '
             f'against the first kernel-code component: r = {fmt_r(relation["estimated_vs_width_r"])}.',
             '', '| arm | removed | ' + ' | '.join(cols) + ' | AMF output-layer RMS |',
             '| --- | --- |' + ' --- |' * (len(cols) + 1)]
    for arm, r in results.items():
        for what, row in r['prediction_change_pct'].items():
            rms = r['modulation_rms'].get(what)
            lines.append(f'| {abl.ARMS[arm][0]} | {what} | ' + ' | '.join(f'{row[c]:.3f}' for c in cols)
                         + f' | {"n/a" if rms is None else f"{rms:.2e}"} |')
    lines += ['', f'Denoising loss (the training objective, seeded noise) on {n_loss} training crops and on {n_loss} '
              f'crops cut alike from the {len(tests)} held-out test images, seed {args.seed}; ratio = held-out / '
              'training:', '',
              '| arm | ' + ' | '.join(f'{c} train | {c} held-out | {c} ratio' for c in cols[1:]) + ' |',
              '| --- |' + ' --- |' * (3 * (len(cols) - 1))]
    for arm, r in results.items():
        cells = []
        for c in cols[1:]:
            a, b = r['loss_train'][c], r['loss_held_out'][c]
            cells += [f'{a:.4f}', f'{b:.4f}', f'{b / a:.2f}']
        lines.append(f'| {abl.ARMS[arm][0]} | ' + ' | '.join(cells) + ' |')
    with abl.atomic_write(osp.join(out, 'condition_use.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
