"""Diagnostics of a trained demo SSR checkpoint on ``datasets/demo/val_x4`` (docs/diffusion.md, "The CPU demo").

Prints, with BasicSR's PSNR / SSIM (Y channel, crop 4, the metrics of ``options/test_ssr_demo.yml``):

* bicubic and (with an SVKR checkpoint) the SVKR result Iᵀ;
* the VAE alone: reconstruction of the HR image (with and without wavelet colour correction to the
  bicubic image) and of the bicubic image: what any SSR result can reach at most / at least;
* with ``--conditions``: per AMF injection point the mean magnitude of ``M_α(f)`` and ``M_β(f)`` per
  modality, and, at a few timesteps, the error of the x0 estimate on the HR latent noised to t with
  and without the conditions (``conditions={}``: the same UNet with every AMF bypassed);
* SSR over a grid of sampling steps × ``strength`` (1 = from pure noise, < 1 = img2img start from the
  noised LR latent).

The network, scheduler and sampler come from ``--opt`` (default ``options/test_ssr_demo.yml``); the
checkpoint and the prediction type are given here because they must match the training run:

    python scripts/experiments/ssr_demo_diagnostics.py --ckpt experiments/ssr_demo/models/net_g_latest.pth
    python scripts/experiments/ssr_demo_diagnostics.py --ckpt <old run> --prediction-type epsilon --steps 4,20 \\
        --strength 1,0.5 --conditions
"""
import argparse
import glob
import os
import os.path as osp
import sys

from ssr_utils.install import project_root

ROOT = project_root()

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from ssr_utils.color_fix import color_fix  # noqa: E402
from ssr_pipelines.builder import load_options, pipeline_from_options, prepare_options  # noqa: E402
from ssr_utils.errors import exit_on_option_error  # noqa: E402


def load_val(root):
    """``(name, gt, lq, depth_lq, kernel)`` per image of an SSR test-set folder (SSRPairedDataset layout)."""
    items = []
    for path in sorted(glob.glob(osp.join(root, 'gt', '*.png'))):
        name = osp.splitext(osp.basename(path))[0]

        def rgb(p):
            return torch.from_numpy(cv2.imread(p)[..., ::-1].astype(np.float32).transpose(2, 0, 1) / 255)[None]

        gt, lq = rgb(path), rgb(osp.join(root, 'lq', f'{name}.png'))
        scale = gt.shape[-1] // lq.shape[-1]
        depth = cv2.imread(osp.join(root, 'depth', f'{name}.png'), cv2.IMREAD_UNCHANGED).astype(np.float32)
        depth = torch.from_numpy(depth / (65535.0 if depth.dtype == np.uint16 or depth.max() > 255 else 255.0))
        depth_lq = F.avg_pool2d(depth[None, None], scale)
        kernel = torch.from_numpy(np.load(osp.join(root, 'kernel', f'{name}.npy'))).float()[None]
        items.append((name, gt, lq, depth_lq, kernel))
    if not items:
        raise FileNotFoundError(f'no test images under {root}/gt (python scripts/prepare_demo_data.py)')
    return items


def score(img, gt):
    a = tensor2img(img.float().cpu(), rgb2bgr=True, min_max=(0, 1))
    b = tensor2img(gt.float().cpu(), rgb2bgr=True, min_max=(0, 1))
    return calculate_psnr(a, b, 4, test_y_channel=True), calculate_ssim(a, b, 4, test_y_channel=True)


def report(label, scores):
    arr = np.array(scores)
    print(f'{label:<44} {arr[:, 0].mean():6.2f} dB / {arr[:, 1].mean():.3f}', flush=True)


def x0_estimate(sched, zt, out, t):
    a = sched.alphas_cumprod[t]
    if sched.config.prediction_type == 'v_prediction':
        return a.sqrt() * zt - (1 - a).sqrt() * out
    return (zt - (1 - a).sqrt() * out) / a.sqrt()


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--opt', default='options/test_ssr_demo.yml')
    parser.add_argument('--ckpt', default='experiments/ssr_demo/models/net_g_latest.pth')
    parser.add_argument('--key', default='params_ema', help='params_ema (default) or params')
    parser.add_argument('--prediction-type', default=None, help='as trained (default: the --opt file)')
    parser.add_argument('--data', default='datasets/demo/val_x4')
    parser.add_argument('--maps', default='svkr', choices=['svkr', 'gt'],
                        help='depth / kernel maps: estimated by the SVKR (as the demo table) or the ground truth')
    parser.add_argument('--steps', default='4,20', help='comma-separated sampling steps')
    parser.add_argument('--strength', default='1,0.5', help='comma-separated strengths')
    parser.add_argument('--sampler', default=None, help='dpmsolver++ | ddim (default: the --opt file)')
    parser.add_argument('--conditions', action='store_true', help='AMF magnitudes and x0 errors with / without AMF')
    args = parser.parse_args(argv)

    opt = load_options(osp.join(ROOT, args.opt) if not osp.isabs(args.opt) else args.opt)
    opt['model_type'] = 'SSRModel'
    opt['path']['pretrain_network_g'] = osp.join(ROOT, args.ckpt) if not osp.isabs(args.ckpt) else args.ckpt
    opt['path']['param_key_g'] = args.key
    if args.prediction_type:
        opt['diffusion']['prediction_type'] = args.prediction_type
    if args.sampler:
        opt['diffusion']['sampler'] = args.sampler
    if args.maps == 'gt' or not (opt['path'].get('pretrain_network_svkr')
                                 and osp.isfile(osp.join(ROOT, opt['path']['pretrain_network_svkr']))):
        args.maps = 'gt'
        opt.pop('network_svkr', None)
        opt['path'].pop('pretrain_network_svkr', None)
        opt['conditions'] = {'source': 'gt', 'val_source': 'gt'}
    os.chdir(ROOT)
    opt = prepare_options(opt)
    torch.set_grad_enabled(False)
    pipe = pipeline_from_options(opt)
    net = pipe.unet
    items = load_val(osp.join(ROOT, args.data))
    print(f'{args.ckpt} [{args.key}], prediction {pipe.scheduler.config.prediction_type}, '
          f'sampler {pipe.sampler}, maps: {args.maps}, {len(items)} images')

    def condition_maps(lq, depth, kernel):
        if args.maps == 'gt':
            return depth, kernel
        out = pipe.svkr(lq)
        return out.get('depth'), out['kernel']

    bic, svkr, vae_gt, vae_gt_fix, vae_bic = [], [], [], [], []
    for _, gt, lq, _, _ in items:
        up = F.interpolate(lq, scale_factor=pipe.scale, mode='bicubic', align_corners=False).clamp(0, 1)
        bic.append(score(up, gt))
        if pipe.svkr is not None:
            svkr.append(score(pipe.svkr(lq)['sr'].clamp(0, 1), gt))
        rec = net.decode_latent(net.encode_image(gt))
        vae_gt.append(score(rec, gt))
        vae_gt_fix.append(score(color_fix(rec, up, 'wavelet'), gt))
        vae_bic.append(score(net.decode_latent(net.encode_image(up)), gt))
    report('bicubic', bic)
    if svkr:
        report('SVKR (I^T)', svkr)
    report('VAE(HR)', vae_gt)
    report('VAE(HR) + wavelet colour fix to bicubic', vae_gt_fix)
    report('VAE(bicubic)', vae_bic)

    if args.conditions:
        sched = pipe.scheduler
        errs = {t: [[], [], []] for t in (50, 250, 500, 750, 999)}
        for i, (_, gt, lq, depth, kernel) in enumerate(items):
            up = F.interpolate(lq, scale_factor=pipe.scale, mode='bicubic', align_corners=False).clamp(0, 1)
            z_lr, z0 = net.encode_image(up), net.encode_image(gt)
            depth, kernel = condition_maps(lq, depth, kernel)
            code = net.kernel_code(kernel) if kernel is not None else None
            conds = net.encode_conditions(z_lr, depth, code, size=z_lr.shape[-2:])
            if i == 0:
                print('AMF modulations on the first image, mean |M_alpha| / |M_beta| per point and modality:')
                for point, mods in conds.items():
                    print(f'  {point:<6}' + '  '.join(f'{m}: {a.abs().mean():.3f} / {b.abs().mean():.3f}'
                                                       for m, a, b in mods))
            noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(i))
            for t, (with_c, without_c, lr_err) in errs.items():
                tt = torch.tensor([t])
                zt = sched.add_noise(z0, noise, tt)
                with_c.append(F.mse_loss(x0_estimate(sched, zt, net(zt, tt, conditions=conds), t), z0).item())
                without_c.append(F.mse_loss(x0_estimate(sched, zt, net(zt, tt, conditions={}), t), z0).item())
                lr_err.append(F.mse_loss(z_lr, z0).item())
        print('MSE of the x0 estimate vs the HR latent (HR latent noised to t), with / without AMF '
              f'(MSE of the LR latent itself: {np.mean(errs[50][2]):.3f}):')
        for t, (with_c, without_c, _) in errs.items():
            print(f'  t = {t:3d}: {np.mean(with_c):.3f} / {np.mean(without_c):.3f}')

    for steps in [int(s) for s in args.steps.split(',')]:
        for strength in [float(s) for s in args.strength.split(',')]:
            res = []
            for _, gt, lq, depth, kernel in items:
                depth, kernel = condition_maps(lq, depth, kernel)
                out = pipe(lq, num_inference_steps=steps, strength=strength, depth=depth, kernel=kernel).images
                res.append(score(out, gt))
            run = pipe.strength_steps(steps, strength)[1] if strength < 1 else steps
            report(f'SSR {steps:2d} steps, strength {strength:.2f} ({run} run)', res)
    return 0


if __name__ == '__main__':
    sys.exit(main())
