"""Is the project's diffusion prior a prior? Its noise error on held-out photographs against the same UNet untrained
and against its own error on pixel-shuffled photographs, its autoencoder's reconstruction, and a sample grid.

    python scripts/experiments/prior_evidence.py --prior experiments/train_Prior_demo/prior_model \
        [--size 64] [--crops 4] [--timesteps 100,300,500,700,900] [--samples 16] [--steps 25] [--seed 0] \
        [--output results/prior_evidence]

The folder is read the way a Stable Diffusion download is: its parts with diffusers' own
``UNet2DConditionModel.from_pretrained(folder, subfolder='unet')`` / ``AutoencoderKL...(subfolder='vae')``
(through ``LatentDiffusionPrior(pretrained_path=folder)``) and its noise schedule from ``scheduler/``.

Held-out crops: ``--crops`` square crops of ``--size`` pixels of every held-out photograph (scikit-image's
chelsea and coffee, the held-out McMaster photographs when ``../shared/data`` is present; never in the prior's
training data), drawn as the prior stage's validation draws them (``HRCropDataset``, ``photos: {split: test}``,
``aug_seed: 0``). For each timestep t, with the same seeded noise for every row:

- ``trained``: the prior's noise error, mean over crops of ``mean((eps_hat - eps)^2)`` (a v-prediction turned
  into its noise), on the latents of the held-out crops;
- ``untrained``: the same UNet architecture with its initial random weights (``UNet2DConditionModel.from_config``,
  seed ``--seed``), on the same latents and noise;
- ``pixel-shuffled``: the prior on the same crops with their pixels randomly permuted (the same colours, no
  structure), encoded by the same autoencoder.

A prior has learnt natural images when ``trained`` is clearly below both (a ratio at most ``CLEAR_RATIO``) at most of
the timesteps (a ``DEFECT`` line otherwise; each timestep where it is not is noted). The autoencoder caps what SSR can reach on its latents, so its reconstruction PSNR / SSIM (Y, as
the SR tables score) of the same crops is reported beside the bicubic x4 round trip of those crops. Writes
``<output>/prior_evidence.{md,csv}`` and ``<output>/samples.png`` (``--samples`` unconditional samples, DDIM,
``--steps`` steps, seeded).
"""
import argparse
import csv
import math
import os
import os.path as osp
import sys

from ssr_utils.install import project_root  # noqa: E402

ROOT = project_root()  # relative paths of the options are the checkout's

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402

from ssr_arch.diffusion_prior_arch import LatentDiffusionPrior  # noqa: E402
from ssr_data.hr_crop_dataset import HRCropDataset  # noqa: E402
from ssr_models.diffusion_prior_model import image_grid, sampling_scheduler  # noqa: E402
from ssr_utils.atomic_file import atomic_write  # noqa: E402
from ssr_utils.errors import OptionError  # noqa: E402

# the trained error must be at most this fraction of the other rows' to count as clearly below
CLEAR_RATIO = 0.9
ROWS = ('trained', 'untrained', 'pixel-shuffled')


def heldout_crops(size, crops, shared_dir='auto'):
    """``(names, B×3×S×S RGB [0, 1])``: the prior stage's validation crops of the held-out photographs."""
    dataset = HRCropDataset(dict(photos=dict(split='test', shared_dir=shared_dir), repeat=dict(photos=crops),
                                 gt_size=size, scale_range=[1, 2], use_hflip=False, use_rot=False, aug_seed=0))
    samples = [dataset[i] for i in range(len(dataset))]
    return [s['gt_path'] for s in samples], torch.stack([s['gt'] for s in samples])


def pixel_shuffled(images, seed):
    """Each image with its pixels randomly permuted (one permutation per image, the channels kept together)."""
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = images.shape
    flat = images.flatten(2)
    out = torch.stack([flat[i][:, torch.randperm(h * w, generator=gen)] for i in range(b)])
    return out.view(b, c, h, w)


@torch.no_grad()
def noise_errors(prior, unet, latents, timesteps, scheduler, seed):
    """Mean noise error of ``unet`` (used through ``prior``'s null text and conversion) per timestep."""
    saved = prior.unet
    prior.unet = unet
    try:
        out = []
        for i, t in enumerate(timesteps):
            gen = torch.Generator().manual_seed(seed * 1000 + i)  # the same noise for every row
            noise = torch.randn(latents.shape, generator=gen)
            tt = torch.full((latents.shape[0], ), int(t), dtype=torch.long)
            out.append(float(prior.noise_error(latents, tt, noise, scheduler).mean()))
        return out
    finally:
        prior.unet = saved


def y_scores(pred, ref):
    """Mean PSNR / SSIM on Y (BasicSR's, no crop) of two B×3×H×W RGB [0, 1] batches."""
    psnr, ssim = [], []
    for a, b in zip(pred, ref):
        ia = tensor2img(a[None], rgb2bgr=True, min_max=(0, 1))
        ib = tensor2img(b[None], rgb2bgr=True, min_max=(0, 1))
        psnr.append(calculate_psnr(ia, ib, crop_border=0, test_y_channel=True))
        ssim.append(calculate_ssim(ia, ib, crop_border=0, test_y_channel=True))
    return float(np.mean(psnr)), float(np.mean(ssim))


def bicubic_round_trip(images, scale=4):
    h, w = images.shape[-2:]
    lr = torch.nn.functional.interpolate(images, size=(h // scale, w // scale), mode='bicubic', antialias=True,
                                         align_corners=False)
    return torch.nn.functional.interpolate(lr, size=(h, w), mode='bicubic', align_corners=False).clamp(0, 1)


def run(prior_path, size=64, crops=4, timesteps=(100, 300, 500, 700, 900), samples=16, steps=25, seed=0,
        output=None, shared_dir='auto'):
    """The evidence (module docstring) as a dict; writes the table and the grid when ``output`` is given."""
    if not osp.isfile(osp.join(prior_path, 'model_index.json')):
        raise OptionError('--prior', prior_path, 'not a prior folder (no model_index.json: the prior stage, '
                          'python basicsr/train.py -opt options/train_prior_demo.yml, writes it)')
    prior = LatentDiffusionPrior(pretrained_path=prior_path).eval()
    scheduler = DDPMScheduler.from_pretrained(osp.join(prior_path, 'scheduler'))
    torch.manual_seed(seed)
    untrained = UNet2DConditionModel.from_config(prior.unet.config).eval()
    names, images = heldout_crops(size, crops, shared_dir)
    with torch.no_grad():
        z = prior.encode(images).float()
        z_shuffled = prior.encode(pixel_shuffled(images, seed)).float()
        recon = prior.reconstruct(images)
    errors = {
        'trained': noise_errors(prior, prior.unet, z, timesteps, scheduler, seed),
        'untrained': noise_errors(prior, untrained, z, timesteps, scheduler, seed),
        'pixel-shuffled': noise_errors(prior, prior.unet, z_shuffled, timesteps, scheduler, seed),
    }
    vae_psnr, vae_ssim = y_scores(recon, images)
    # a colour cast lowers PSNR on Y far more than SSIM: the mean error per channel shows it
    vae_colour = [float(v) for v in (recon - images).mean((0, 2, 3)) * 255]
    bic_psnr, bic_ssim = y_scores(bicubic_round_trip(images), images)
    # per comparison, the timesteps where the trained error is clearly below; a prior is clearly below at most
    # of them (at the highest t the noisy latent holds almost nothing of the image, so every predictor is
    # near the data's mean there and what differs is the data's variance: a tie is no defect)
    notes, defects = [], []
    for other in ('untrained', 'pixel-shuffled'):
        clear = [errors['trained'][i] <= CLEAR_RATIO * errors[other][i] for i in range(len(timesteps))]
        for i, t in enumerate(timesteps):
            if not clear[i]:
                notes.append(f'note: at t = {t} the trained noise error {errors["trained"][i]:.4f} is not clearly below '
                             f'the {other} one {errors[other][i]:.4f} (ratio > {CLEAR_RATIO})')
        if 2 * sum(clear) <= len(timesteps):
            defects.append(f'DEFECT: the trained noise error is clearly below the {other} one at only {sum(clear)} of '
                           f'{len(timesteps)} timesteps: not a prior of natural images')
    result = dict(prior=osp.abspath(prior_path), images=len(names), size=size, timesteps=list(timesteps),
                  errors=errors, vae=(vae_psnr, vae_ssim), vae_colour=vae_colour, bicubic=(bic_psnr, bic_ssim), notes=notes, defects=defects,
                  latent_scale=float(prior.latent_scale))
    gen = torch.Generator().manual_seed(seed)
    shape = (samples, prior.vae.config.latent_channels, size // prior.vae_scale_factor,
             size // prior.vae_scale_factor)
    grid = image_grid(prior.sample(sampling_scheduler(scheduler, 'ddim'), shape, steps, gen),
                      int(math.ceil(math.sqrt(samples))))
    if output:
        write(result, grid, output)
    return result, grid


def markdown(result):
    ts = result['timesteps']
    e = result['errors']
    lines = [f'# Diffusion prior evidence: {result["images"]} held-out photograph crops of {result["size"]} px',
             '', f'Prior: `{result["prior"]}` (latent scale {result["latent_scale"]:.4f})', '',
             '| t | trained | untrained (same UNet, initial weights) | trained, pixel-shuffled crops '
             '| trained / untrained | trained / shuffled |', '| --- | --- | --- | --- | --- | --- |']
    for i, t in enumerate(ts):
        lines.append(f'| {t} | {e["trained"][i]:.4f} | {e["untrained"][i]:.4f} | {e["pixel-shuffled"][i]:.4f} | '
                     f'{e["trained"][i] / e["untrained"][i]:.3f} | {e["trained"][i] / e["pixel-shuffled"][i]:.3f} |')
    lines += ['', 'Noise error: mean squared error of the implied noise (v turned into its noise), same noise per row.',
              f'Autoencoder reconstruction of the same crops: {result["vae"][0]:.2f} dB PSNR / {result["vae"][1]:.4f} '
              f'SSIM (Y), mean error per channel (R, G, B, of 255) '
              f'{", ".join(f"{v:+.1f}" for v in result["vae_colour"])}; '
              f'their bicubic x4 round trip: {result["bicubic"][0]:.2f} dB / {result["bicubic"][1]:.4f}.']
    verdict = result['defects'] or [f'The trained prior is clearly below both (ratio <= {CLEAR_RATIO}) at most timesteps: '
                                    'it has learnt natural images.']
    lines += [''] + result['notes'] + verdict
    return '\n'.join(lines) + '\n'


def write(result, grid, output):
    os.makedirs(output, exist_ok=True)
    with atomic_write(osp.join(output, 'prior_evidence.md'), 'w') as f:
        f.write(markdown(result))
    with atomic_write(osp.join(output, 'prior_evidence.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['t'] + list(ROWS))
        for i, t in enumerate(result['timesteps']):
            w.writerow([t] + [repr(result['errors'][r][i]) for r in ROWS])
        w.writerow(['vae_psnr_y', repr(result['vae'][0])])
        w.writerow(['vae_ssim_y', repr(result['vae'][1])])
        for channel, value in zip('rgb', result['vae_colour']):
            w.writerow([f'vae_mean_error_{channel}', repr(value)])
        w.writerow(['bicubic_x4_psnr_y', repr(result['bicubic'][0])])
    ok, buf = cv2.imencode('.png', grid)
    with atomic_write(osp.join(output, 'samples.png')) as f:
        f.write(buf.tobytes())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--prior', default='experiments/train_Prior_demo/prior_model', help='the prior folder')
    parser.add_argument('--size', type=int, default=64, help='crop side in pixels')
    parser.add_argument('--crops', type=int, default=4, help='crops per held-out photograph')
    parser.add_argument('--timesteps', default='100,300,500,700,900')
    parser.add_argument('--samples', type=int, default=16, help='unconditional samples in the grid')
    parser.add_argument('--steps', type=int, default=25, help='DDIM steps of the samples')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--output', default='results/prior_evidence')
    args = parser.parse_args(argv)
    prior = args.prior if osp.isabs(args.prior) or osp.exists(args.prior) else osp.join(ROOT, args.prior)
    output = args.output if osp.isabs(args.output) else osp.join(ROOT, args.output)
    result, _ = run(prior, args.size, args.crops, [int(t) for t in args.timesteps.split(',')], args.samples,
                    args.steps, args.seed, output)
    print(markdown(result))
    print(f'Table: {osp.join(output, "prior_evidence.md")} (and .csv); samples: {osp.join(output, "samples.png")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
