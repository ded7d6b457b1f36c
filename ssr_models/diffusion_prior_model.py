"""DiffusionPriorModel: pretrains SSR's diffusion prior (SPEC training stage 0) and writes it in Stable
Diffusion's folder layout, for ``SSRUNet(pretrained_path=...)`` to load and keep frozen as it would SD 2.1.

Two phases in one BasicSR run, as a latent diffusion model is trained:

1. iterations 1 ... ``train: vae_iter``: the autoencoder alone (L1 reconstruction through a sampled latent
   + ``vae_kl_weight`` x KL);
2. then the autoencoder is frozen (its EMA weights, when ``ema_decay`` is on, become its weights), the latent
   scale is set to 1 / std of the latents of that batch (Stable Diffusion's ``scaling_factor`` rule), and the
   UNet trains on its latents: unconditional (null text), DDPM noise at uniform timesteps, MSE on the noise or
   on v (``diffusion: prediction_type``).

At every checkpoint and at the end the evaluation weights (EMA when on) are also written as the prior folder
``experiments/<name>/prior_model`` (``path: prior_model_folder``), atomically. Validation scores the
autoencoder's reconstructions of held-out crops (``val: metrics``), the UNet's noise error on them at
``val: noise_timesteps``, and saves a grid of unconditional samples.
"""
import math
import os.path as osp
from collections import OrderedDict

import numpy as np
import torch
from torch.nn import functional as F

from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.registry import MODEL_REGISTRY

from ssr_models.ssr_base_model import SSRBaseModel, all_finite
from ssr_pipelines.builder import prediction_target, scheduler_from_options
from ssr_utils.errors import OptionError
from ssr_utils.visualize import add_tb_image

PRETRAINED_FOLDER = 'prior_model'  # experiments/<name>/prior_model/: Stable Diffusion's layout
SAMPLERS = ('ddim', 'dpmsolver++')


def sampling_scheduler(train_scheduler, sampler='ddim'):
    """A diffusers sampler on the training noise schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    if sampler == 'ddim':
        return DDIMScheduler.from_config(train_scheduler.config)
    if sampler == 'dpmsolver++':
        return DPMSolverMultistepScheduler.from_config(train_scheduler.config, algorithm_type='dpmsolver++')
    raise OptionError('val:sampler', sampler, f'expected one of {", ".join(SAMPLERS)}')


def image_grid(images, nrow):
    """B×3×H×W RGB [0, 1] -> one H×W×3 uint8 BGR grid image with ``nrow`` images a row (2-pixel white gaps)."""
    b, _, h, w = images.shape
    ncol = int(math.ceil(b / nrow))
    grid = np.full((ncol * (h + 2) - 2, nrow * (w + 2) - 2, 3), 255, np.uint8)
    for i in range(b):
        r, c = divmod(i, nrow)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = tensor2img(
            images[i:i + 1].detach().float().cpu(), rgb2bgr=True, min_max=(0, 1))
    return grid


@MODEL_REGISTRY.register()
class DiffusionPriorModel(SSRBaseModel):
    """Options (``options/train_prior_demo.yml`` has every key with comments):

    ``network_g``: ``type: LatentDiffusionPrior`` (``unet`` / ``vae`` configs, or ``pretrained_path``).
    ``diffusion``: the noise schedule (``num_train_timesteps``, ``beta_schedule``, ``beta_start``, ``beta_end``,
    ``prediction_type``; ``<pretrained_path>/scheduler`` when continuing a prior) -- written as the folder's
    ``scheduler/``.
    ``train``: ``vae_iter`` (autoencoder iterations; 0 = the autoencoder of ``pretrained_path`` stays as it is),
    ``vae_kl_weight`` (1e-6), and the base's keys (``optim_g``, ``ema_decay``, ``amp``, ``grad_clip``...).
    ``val``: ``metrics`` (on the reconstructions), ``noise_timesteps`` ([100, 300, 500, 700, 900]),
    ``num_samples`` (16) / ``sample_steps`` (25) / ``sampler`` (ddim) of the sample grid.
    ``path: prior_model_folder`` (default ``experiments/<name>/prior_model``).
    Under DDP, ``find_unused_parameters: true`` (each phase uses only one of the two networks).
    """
    print_network_g = False  # a full printout of a diffusers UNet is thousands of lines

    @classmethod
    def check_options(cls, opt):
        super().check_options(opt)
        net_opt = opt.get('network_g') or {}
        if net_opt.get('type') != 'LatentDiffusionPrior':
            raise OptionError('network_g:type', net_opt.get('type'), f'{cls.__name__} needs a LatentDiffusionPrior')
        train_opt = opt.get('train') or {}
        vae_iter = train_opt.get('vae_iter', 0)
        if isinstance(vae_iter, bool) or not isinstance(vae_iter, int) or vae_iter < 0:
            raise OptionError('train:vae_iter', vae_iter, 'expected an integer >= 0')
        if vae_iter == 0 and net_opt.get('pretrained_path') is None:
            raise OptionError('train:vae_iter', vae_iter, 'an autoencoder built from its config must be trained first '
                              '(vae_iter > 0), or start from network_g:pretrained_path')
        total = train_opt.get('total_iter')
        if isinstance(total, int) and total < vae_iter:
            raise OptionError('train:vae_iter', vae_iter, f'larger than train:total_iter = {total}')
        if opt.get('dist') and opt.get('is_train', True) and not opt.get('find_unused_parameters', False):
            raise OptionError('find_unused_parameters', opt.get('find_unused_parameters'),
                              'must be true under DDP: each phase uses only one of the two networks')
        sampler = (opt.get('val') or {}).get('sampler', 'ddim')
        if sampler not in SAMPLERS:
            raise OptionError('val:sampler', sampler, f'expected one of {", ".join(SAMPLERS)}')

    # ------------------------------------------------------------------ networks
    def setup_model(self):
        self.noise_scheduler = scheduler_from_options(self.opt.get('diffusion'),
                                                      self.opt['network_g'].get('pretrained_path'))
        self.phase = None

    def setup_losses(self, train_opt):
        self.vae_iter = int(train_opt.get('vae_iter', 0))
        self.vae_kl_weight = float(train_opt.get('vae_kl_weight', 1e-6))
        if self.vae_iter == 0:
            self._freeze_autoencoder()
            if not self.bare_g.has_latent_scale:
                raise OptionError('network_g:pretrained_path', self.opt['network_g'].get('pretrained_path'),
                                  'the autoencoder has no scaling_factor in its config')
        seed = self.opt['manual_seed'] if self.opt.get('manual_seed') is not None else 0
        # own generator for noise, timesteps and latent samples, saved with the training state
        self.train_gen = torch.Generator(device=self.device)
        self.train_gen.manual_seed(int(seed) + 1000 * int(self.opt.get('rank', 0)))

    def extra_state(self):
        return {'train_gen': self.train_gen.get_state()}

    def load_extra_state(self, state):
        if state.get('train_gen') is not None:
            self.train_gen.set_state(state['train_gen'].cpu())

    @property
    def vae_trainable(self):
        return any(p.requires_grad for p in self.bare_g.vae.parameters())

    def _freeze_autoencoder(self):
        self.bare_g.vae.requires_grad_(False)
        self.drop_from_ema('vae.')

    # ------------------------------------------------------------------ phases
    def before_step(self, current_iter):
        """The autoencoder phase up to ``vae_iter``; at the first iteration after it the autoencoder is finished
        (``finish_autoencoder``). A resume past ``vae_iter`` freezes it again (its weights and latent scale come
        from the checkpoint)."""
        self.phase = 'autoencoder' if current_iter <= self.vae_iter else 'denoise'
        if self.phase == 'denoise' and self.vae_trainable:
            self.finish_autoencoder(current_iter)

    @torch.no_grad()
    def finish_autoencoder(self, current_iter):
        """The autoencoder's EMA weights become its weights (the UNet learns the latents of the VAE that is
        saved), it is frozen and leaves the EMA, and -- unless a checkpoint already holds it -- the latent
        scale is set to 1 / std of the fed batch's latents (averaged over the ranks)."""
        net = self.bare_g
        if self.ema is not None:
            params = dict(net.named_parameters())
            for k, v in self.ema.items():
                if k.startswith('vae.'):
                    params[k].copy_(v)
        self._freeze_autoencoder()
        logger = get_root_logger()
        if not net.has_latent_scale:
            net.set_latent_scale(self.latent_scale_of(self.gt))
            logger.info(f'DiffusionPriorModel: autoencoder done ({self.vae_iter} iterations); frozen from iteration '
                        f'{current_iter}; latent scale 1/std = {float(net.latent_scale):.5f}')
        else:
            logger.info(f'DiffusionPriorModel: autoencoder frozen from iteration {current_iter}; latent scale '
                        f'{float(net.latent_scale):.5f} (from the checkpoint)')

    @torch.no_grad()
    def latent_scale_of(self, images, all_ranks=True):
        """1 / std of the unscaled latents (posterior modes) of ``images``, over every rank's batch (``all_ranks``:
        every rank must call it)."""
        z = self.bare_g.encode(images, scale=1.0).float()
        moments = torch.stack([z.sum(), (z * z).sum(), torch.tensor(float(z.numel()), device=z.device)])
        if all_ranks and self.opt.get('dist', False):
            torch.distributed.all_reduce(moments)
        mean = moments[0] / moments[2]
        std = (moments[1] / moments[2] - mean * mean).clamp_min(1e-12).sqrt()
        return float(1.0 / std)

    # ------------------------------------------------------------------ training
    def feed_data(self, data):
        if 'gt' not in data:
            raise KeyError("DiffusionPriorModel: the data has no 'gt' entry (use type: HRCropDataset)")
        self.gt = data['gt'].to(self.device)
        self.lq = self.gt  # BasicSR's visuals and the validation's TensorBoard references show the input crop

    def compute_losses(self):
        losses = OrderedDict()
        if self.phase == 'autoencoder':
            rec, kl = self.net_g('autoencoder', self.gt, generator=self.train_gen)
            l_rec = F.l1_loss(rec.float(), self.gt * 2 - 1)
            l_kl = kl.float().mean()
            total = l_rec + self.vae_kl_weight * l_kl
            losses['l_rec'], losses['l_kl'] = l_rec.detach(), l_kl.detach()
        else:
            with torch.no_grad():
                z0 = self.bare_g.encode(self.gt).float()
            noise = torch.randn(z0.shape, generator=self.train_gen, device=self.device)
            steps = self.noise_scheduler.config.num_train_timesteps
            t = torch.randint(0, steps, (z0.shape[0], ), generator=self.train_gen, device=self.device)
            z_t = self.noise_scheduler.add_noise(z0, noise, t)
            target = prediction_target(self.noise_scheduler, z0, noise, t)
            pred = self.net_g('denoise', z_t, t)
            total = F.mse_loss(pred.float(), target)
            losses['l_diff'] = total.detach()
        losses['l_total'] = total.detach()
        return total, losses

    # ------------------------------------------------------------------ validation
    def run_network(self, net):
        return {'sr': net.reconstruct(self.gt)}

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """The base's validation of the reconstructions (``val: metrics``), then the UNet's noise error on the
        same held-out crops at ``val: noise_timesteps`` and a grid of unconditional samples."""
        super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        net = self.bare_g
        if not net.has_latent_scale:
            return  # the autoencoder phase: no latent space for the UNet yet
        val_opt = self.opt['val']
        dataset_name = dataloader.dataset.opt['name']
        timesteps = [int(t) for t in val_opt.get('noise_timesteps', [100, 300, 500, 700, 900])]
        sums, count = torch.zeros(len(timesteps)), 0
        gen = torch.Generator(device=self.device)
        gen.manual_seed(0)  # the same noise at every validation
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), self.ema_weights():
                for val_data in dataloader:
                    z0 = net.encode(val_data['gt'].to(self.device)).float()
                    for i, t in enumerate(timesteps):
                        noise = torch.randn(z0.shape, generator=gen, device=self.device)
                        tt = torch.full((z0.shape[0], ), t, device=self.device, dtype=torch.long)
                        sums[i] += float(net.noise_error(z0, tt, noise, self.noise_scheduler).sum())
                    count += z0.shape[0]
                grid = self.sample_grid(int(val_opt.get('num_samples', 16)), int(val_opt.get('sample_steps', 25)),
                                        val_opt.get('sampler', 'ddim'), z0.shape[-2:])
        finally:
            net.train(was_training)
        results = {f'noise_mse_t{t}': float(s) / max(count, 1) for t, s in zip(timesteps, sums)}
        self.log_validation_results(current_iter, f'{dataset_name} (UNet noise error, held-out crops)', results, None)
        if tb_logger is not None and isinstance(current_iter, int):
            for key, value in results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{key}', value, current_iter)
        # one image per validation, saved whatever val:save_img says (it is what shows the prior at a glance)
        imwrite(grid, osp.join(self.opt['path']['visualization'], 'samples', f'samples_{current_iter}.png'))
        add_tb_image(tb_logger, 'val/samples', grid, current_iter)

    @torch.no_grad()
    def sample_grid(self, num, steps, sampler, latent_size, seed=0):
        """``num`` unconditional samples (seeded) as one grid image (uint8 BGR)."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        net = self.bare_g
        shape = (num, net.vae.config.latent_channels, *latent_size)
        images = net.sample(sampling_scheduler(self.noise_scheduler, sampler), shape, steps, gen)
        return image_grid(images, int(math.ceil(math.sqrt(num))))

    # ------------------------------------------------------------------ the prior folder
    def pretrained_folder(self):
        folder = self.opt['path'].get('prior_model_folder')
        if folder is None:
            folder = osp.join(self.opt['path']['experiments_root'], PRETRAINED_FOLDER)
        return folder

    def save(self, epoch, current_iter):
        """BasicSR's checkpoint, then the prior folder of the evaluation weights (EMA when on). During the
        autoencoder phase the folder's latent scale is a provisional one, from the last batch."""
        super().save(epoch, current_iter)
        if get_dist_info()[0] != 0:
            return
        net = self.bare_g
        with torch.no_grad(), self.ema_weights():
            if not all_finite(net.state_dict()):
                return  # the base class has logged it; the previous folder stays
            scale = None
            if not net.has_latent_scale:
                if getattr(self, 'gt', None) is None:
                    return
                scale = self.latent_scale_of(self.gt, all_ranks=False)  # rank 0 only here
            folder = net.save_pretrained(self.pretrained_folder(), self.noise_scheduler, latent_scale=scale)
        get_root_logger().info(
            f'Diffusion prior ({"EMA" if self.ema is not None else "net_g"}, iter '
            f'{current_iter if current_iter >= 0 else "latest"}) written in Stable Diffusion\'s layout: {folder} '
            f'(SSRUNet: pretrained_path: {folder})')
