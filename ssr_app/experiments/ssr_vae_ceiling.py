"""What the autoencoder of a trained SSR network lets it reach: the PSNR / SSIM (Y) of its VAE's reconstruction of
the ground-truth images of a test option file's data set. SSR's output is a decoded latent, so an autoencoder that
reconstructs the HR image itself at X dB caps SSR near X dB, whatever its UNet and conditions do.

    python scripts/experiments/ssr_vae_ceiling.py -opt options/test_ssr_demo.yml options/test_ssr_scratch_demo.yml \
        [--output results/ssr_vae_ceiling]

Each option file's SSR network is built as inference builds it (``network_g`` + ``path:pretrain_network_g``,
``ssr_pipelines.builder.load_ssr_unet``): a frozen prior's autoencoder (``pretrained_path``) or the one the SSR
stage trained itself. Images: ``<dataroot>/gt/*.png`` of the option file's first test set; the reconstruction is
the decoded mean latent; metrics as the option file's ``val: metrics: psnr`` (its ``crop_border``, Y channel),
and the mean error per channel (a colour cast; SSR's ``color_fix`` removes one from its outputs, this does not).
Writes ``<output>/ssr_vae_ceiling.{md,csv}``.
"""
import argparse
import csv
import glob
import os
import os.path as osp

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils import img2tensor, tensor2img  # noqa: E402

from ssr_pipelines.builder import load_options, load_ssr_unet, ssr_unet_options  # noqa: E402
from ssr_utils.atomic_file import atomic_write  # noqa: E402
from ssr_utils.errors import OptionError  # noqa: E402


def gt_images(opt, opt_path):
    """``[(name, BGR uint8 image)]`` of the first test set's ``<dataroot>/gt``."""
    datasets = opt.get('datasets') or {}
    if not datasets:
        raise OptionError('datasets', opt_path, 'the option file names no test set')
    dataroot = next(iter(datasets.values())).get('dataroot')
    paths = sorted(glob.glob(osp.join(dataroot or '', 'gt', '*.png')))
    if not paths:
        raise OptionError('datasets:<test>:dataroot', dataroot, 'no gt/*.png under it')
    return [(osp.splitext(osp.basename(p))[0], cv2.imread(p, cv2.IMREAD_COLOR)) for p in paths]


@torch.no_grad()
def vae_round_trip(unet, img_bgr):
    """The SSR network's VAE reconstruction (mean latent) of one BGR uint8 image, as BGR uint8."""
    x = img2tensor(img_bgr.astype(np.float32) / 255., bgr2rgb=True, float32=True)[None]
    out = unet.decode_latent(unet.encode_image(x))
    return tensor2img(out, rgb2bgr=True, min_max=(0, 1))


def run(opt_paths, output=None):
    rows = []
    for opt_path in opt_paths:
        opt = load_options(opt_path)
        border = ((opt.get('val') or {}).get('metrics') or {}).get('psnr', {}).get('crop_border', opt.get('scale', 0))
        unet = load_ssr_unet(ssr_unet_options(opt), opt.get('path') or {})
        base = opt['network_g'].get('pretrained_path') or 'trained by the SSR stage'
        psnr, ssim, colour = [], [], []
        for _, img in gt_images(opt, opt_path):
            rec = vae_round_trip(unet, img)
            psnr.append(calculate_psnr(rec, img, crop_border=border, test_y_channel=True))
            ssim.append(calculate_ssim(rec, img, crop_border=border, test_y_channel=True))
            # a colour cast: the mean error per channel, RGB, in levels of 255
            colour.append((rec.astype(np.float64) - img).mean((0, 1))[::-1])
        r, g, b = np.mean(colour, 0)
        rows.append(dict(option_file=opt_path, name=opt.get('name'), autoencoder=base, images=len(psnr),
                         psnr=float(np.mean(psnr)), ssim=float(np.mean(ssim)), mean_error_r=float(r),
                         mean_error_g=float(g), mean_error_b=float(b)))
        print(f'{opt_path}: VAE reconstruction of {len(psnr)} GT images {rows[-1]["psnr"]:.2f} dB / '
              f'{rows[-1]["ssim"]:.4f} (Y, crop {border}), mean error R {r:+.1f} G {g:+.1f} B {b:+.1f}; '
              f'autoencoder: {base}', flush=True)
    if output:
        os.makedirs(output, exist_ok=True)
        lines = ['# The SSR networks\' autoencoder ceiling: VAE reconstruction of the test set\'s HR images', '',
                 '| option file | autoencoder | images | PSNR (dB, Y) | SSIM (Y) | mean error R, G, B (of 255) |',
                 '| --- | --- | --- | --- | --- | --- |']
        lines += [f'| `{r["option_file"]}` | {r["autoencoder"]} | {r["images"]} | {r["psnr"]:.2f} | {r["ssim"]:.4f} | '
                  f'{r["mean_error_r"]:+.1f}, {r["mean_error_g"]:+.1f}, {r["mean_error_b"]:+.1f} |' for r in rows]
        with atomic_write(osp.join(output, 'ssr_vae_ceiling.md'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
        with atomic_write(osp.join(output, 'ssr_vae_ceiling.csv'), 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-opt', nargs='+', default=['options/test_ssr_demo.yml', 'options/test_ssr_scratch_demo.yml'],
                        help='SSR test option files (their network_g, path:pretrain_network_g and first test set)')
    parser.add_argument('--output', default='results/ssr_vae_ceiling')
    args = parser.parse_args(argv)
    run(args.opt, args.output)


if __name__ == '__main__':
    main()
