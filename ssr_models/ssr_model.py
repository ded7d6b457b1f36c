"""SSRModel: latent diffusion SR constrained by AMF on LR image, depth and kernel maps (paper 3.3).

Training (``compute_losses``): the LR image is upsampled (bicubic) to the output size and
VAE-encoded; depth and kernel maps come from the sample (``conditions: source: gt``) or from a frozen
SVKR (``source: svkr``); the kernel map is reduced to its PCA code. Loss, Eq. (5):
``l_eps`` (MSE on the DDPM noise, or on v for ``prediction_type: v_prediction``) plus
``lambda_i * C_i`` where ``C_i`` is the MSE of a light head that reconstructs modality i's input
(kernel code, depth, LR latent) from its deepest encoder feature (``lambda_i = 0`` switches it off).
A VAE built from scratch (no pretrained weights, not frozen) is trained alongside with an L1
reconstruction + KL loss; the diffusion target uses its latents without gradient. With
``train: vae_warmup_iter: N`` the first N iterations train the VAE alone, then it is frozen
(``vae_freeze_after_warmup``, default true) and the diffusion part trains on its latents.
Optimizer, AMP, gradient clipping, non-finite steps, EMA, checkpoints, resume and the validation loop
are the training base's (``ssr_models/ssr_base_model.py``).

Sampling (``sr`` / validation): through ``self.pipeline`` (an ``SSRPipeline`` on the same modules):
DDIM or DPM-Solver++ from diffusers, the condition features and AMF modulations computed once per
image, a fixed seed, optional AdaIN / wavelet colour correction. ``diffusion: strength`` < 1 starts
from the noised LR latent and runs only the last steps (diffusers' img2img rule); 1 (default) starts
from pure noise.
"""
import json
import os.path as osp
from collections import OrderedDict

import torch
from torch.nn import functional as F

from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from ssr_data.batch_degradation import maybe_degrade_batch
from ssr_arch.depth_arch import depth_sources
from ssr_arch.ssr_unet_arch import check_pretrained_folder
from ssr_models.ssr_base_model import SSRBaseModel
from ssr_pipelines.builder import (SVKR_WEIGHTS_HINT, assemble_pipeline, build_svkr_from_options, prediction_target,
                                   ssr_unet_options, svkr_has_weights)
from ssr_pipelines.pipeline_ssr import (check_color_fix, check_sampler, check_strength, check_vae_residual,
                                        upsample_lr)
from ssr_utils.errors import OptionError

CONDITION_SOURCES = ('gt', 'svkr')


def _area_resize(x, size):
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.adaptive_avg_pool2d(x, size) if x.shape[-2] >= size[0] and x.shape[-1] >= size[1] else \
        F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


@MODEL_REGISTRY.register()
class SSRModel(SSRBaseModel):
    """Options beyond BasicSR's (see options/train_ssr.yml for every key with comments):

    ``network_g`` (type SSRUNet), optional ``network_svkr`` (type SVKR, frozen; weights from
    ``path: pretrain_network_svkr`` or its own sub-network checkpoints), ``network_g: pca_path`` (KernelPCA
    file), ``diffusion`` (scheduler and sampling), ``conditions`` (source of depth / kernel maps), ``train``
    (``lambda_kernel`` / ``lambda_depth`` / ``lambda_lr``, ``vae_warmup_iter``, and the base's keys:
    ``optim_g``, ``amp``, ``grad_clip``, ``ema_decay``, ``max_nonfinite_steps``).
    """
    print_network_g = False  # SSRUNet logs its trainable / total parameter counts itself

    # ------------------------------------------------------------------ options
    @classmethod
    def condition_sources(cls, opt):
        cond_opt = opt.get('conditions') or {}
        source = cond_opt.get('source', 'svkr')
        val_source = cond_opt.get('val_source', source)
        for key, value in (('conditions:source', source), ('conditions:val_source', val_source)):
            if value not in CONDITION_SOURCES:
                raise OptionError(key, value, 'expected gt or svkr')
        return source, val_source

    @classmethod
    def svkr_use(cls, opt):
        """What the SVKR is used for in this option file ('' when it is not)."""
        uses = [f'{key}: svkr' for key, value in zip(('conditions:source', 'conditions:val_source'),
                                                     cls.condition_sources(opt)) if value == 'svkr']
        if (opt.get('network_g') or {}).get('lr_input', 'bicubic') == 'svkr':
            uses.append('network_g:lr_input: svkr')
        return ' and '.join(uses)

    @classmethod
    def check_options(cls, opt):
        super().check_options(opt)
        net_opt = opt.get('network_g') or {}
        if net_opt.get('type') != 'SSRUNet':
            raise OptionError('network_g:type', net_opt.get('type'), f'{cls.__name__} needs an SSRUNet')
        if net_opt.get('pretrained_path') is not None:
            check_pretrained_folder(net_opt['pretrained_path'], 'network_g:pretrained_path')
            cls.check_frozen_prediction_type(opt)
        use = cls.svkr_use(opt)
        if opt.get('network_svkr') is None:
            if use:
                raise OptionError('network_svkr', None, f'needed by {use}')
        elif not svkr_has_weights(opt['network_svkr'], opt.get('path')):
            raise OptionError('path:pretrain_network_svkr', None, SVKR_WEIGHTS_HINT)
        diff_opt = opt.get('diffusion') or {}
        check_sampler(diff_opt.get('sampler', 'dpmsolver++'))
        check_color_fix(diff_opt.get('color_fix', 'wavelet'))
        check_strength(diff_opt.get('strength', 1.0))
        check_vae_residual(diff_opt.get('vae_residual', False))
        warmup = (opt.get('train') or {}).get('vae_warmup_iter', 0)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise OptionError('train:vae_warmup_iter', warmup, 'expected an integer >= 0')

    @classmethod
    def check_frozen_prediction_type(cls, opt):
        """A frozen pretrained UNet predicts what it was trained to predict: a ``diffusion: prediction_type`` other
        than its folder's ``scheduler/scheduler_config.json`` would train the encoders and AMF against the wrong
        target and sample garbage, without any error."""
        net_opt = opt['network_g']
        wanted = (opt.get('diffusion') or {}).get('prediction_type')
        config = osp.join(net_opt['pretrained_path'], 'scheduler', 'scheduler_config.json')
        if wanted is None or net_opt.get('freeze_unet') is False or not osp.isfile(config):
            return
        with open(config) as f:
            trained = json.load(f).get('prediction_type', 'epsilon')  # diffusers' default
        if wanted != trained:
            raise OptionError('diffusion:prediction_type', wanted, f'the frozen UNet of network_g:pretrained_path was '
                              f'trained for {trained} ({config}); leave the key out to use it')

    # ------------------------------------------------------------------ networks
    def build_network_g(self):
        return build_network(ssr_unet_options(self.opt))

    def setup_model(self):
        opt = self.opt
        self.scale = int(opt.get('scale', 4))
        self.cond_source, self.val_cond_source = self.condition_sources(opt)
        self.net_svkr = None
        if opt.get('network_svkr') is not None:
            self.net_svkr = build_svkr_from_options(opt['network_svkr'], opt['path'], 'pretrain_network_svkr',
                                                    'param_key_svkr').to(self.device)
        self.diff_opt = dict(opt.get('diffusion') or {})
        # sampling (validation, sr(), the test tables) goes through the pipeline, on the same modules, assembled
        # as the CLI and the export assemble theirs; training draws its noise from the same schedule
        self.pipeline = assemble_pipeline(opt, self.bare_g, self.net_svkr, dtype=self.amp_dtype)
        self.noise_scheduler = self.pipeline.scheduler

    def load_network_g_state(self, state, source, strict=True):
        # the base parts referenced by pretrained_path (frozen) are not in checkpoints
        self.bare_g.load_saved_state_dict(state, source=source)

    def network_g_state_for_save(self, state):
        return self.bare_g.saved_state_dict(state)

    # ------------------------------------------------------------------ training settings
    def setup_losses(self, train_opt):
        self.lambdas = {m: float(train_opt.get(f'lambda_{m}', 0.0)) for m in ('kernel', 'depth', 'lr')}
        self.vae_weight = float(train_opt.get('vae_weight', 1.0))
        self.vae_kl_weight = float(train_opt.get('vae_kl_weight', 1e-6))
        self.train_vae = any(p.requires_grad for p in self.bare_g.vae.parameters())
        if self.train_vae and self.opt['dist']:
            raise OptionError(
                'network_g:freeze_vae', False, 'a trainable VAE is not supported with DDP; '
                'train it single-process or use a pretrained frozen VAE')
        # VAE pre-training inside the stage (latent diffusion's first stage): the first vae_warmup_iter
        # iterations train the VAE alone; then (vae_freeze_after_warmup) it is frozen for the diffusion part
        self.vae_warmup_iter = int(train_opt.get('vae_warmup_iter', 0))
        self.vae_freeze_after_warmup = bool(train_opt.get('vae_freeze_after_warmup', True))
        if self.vae_warmup_iter and not self.train_vae:
            raise OptionError('train:vae_warmup_iter', self.vae_warmup_iter,
                              'needs a trainable VAE (built from scratch, or network_g: freeze_vae: false)')
        self.vae_only = False
        seed = self.opt['manual_seed'] if self.opt.get('manual_seed') is not None else 0
        rank = self.opt.get('rank', 0)
        # own generator for noise and timesteps, saved with the training state so a resume continues
        # with the same draws
        self.train_gen = torch.Generator(device=self.device)
        self.train_gen.manual_seed(int(seed) + 1000 * int(rank))

    def extra_state(self):
        return {'train_gen': self.train_gen.get_state()}

    def load_extra_state(self, state):
        if state.get('train_gen') is not None:
            self.train_gen.set_state(state['train_gen'].cpu())

    # ------------------------------------------------------------------ data and conditions
    def feed_data(self, data):
        data = maybe_degrade_batch(data, self.device)  # degrade_on: model batches are synthesised here
        self.lq = data['lq'].to(self.device)
        self.gt = data['gt'].to(self.device) if 'gt' in data else None
        self.depth_in = data['depth_lq'].to(self.device) if 'depth_lq' in data else None
        self.kernel_in = data['kernel'].to(self.device) if 'kernel' in data else None
        # the SVKR's Iᵀ of the whole image the crop comes from, when the data carries it (lr_input: svkr)
        self.svkr_sr_in = data['svkr_sr'].to(self.device) if 'svkr_sr' in data else None

    @torch.no_grad()
    def condition_maps(self, lq, source, depth=None, kernel=None):
        """``(depth B×1×h×w | None, kernel map B×k²×h×w | None)`` for the enabled modalities.

        ``source: gt`` uses the given maps (the sample's ``depth_lq`` / ``kernel``) and falls back to the
        SVKR for a missing one when there is an SVKR; ``source: svkr`` uses the SVKR's estimates."""
        mods = self.bare_g.modalities
        need_depth, need_kernel = 'depth' in mods, 'kernel' in mods
        if source == 'svkr':
            depth, kernel = None, None
        missing = [
            key for key, need, value in (('depth_lq', need_depth, depth), ('kernel', need_kernel, kernel))
            if need and value is None
        ]
        if missing:
            if self.net_svkr is None:
                raise KeyError(f'SSRModel: no {missing} in the data and no network_svkr to estimate them')
            with self.autocast():
                out = self.net_svkr(lq)
            if need_depth and depth is None:
                depth = out.get('depth')
                if depth is None:
                    raise OptionError('network_svkr:use_depth', False, 'the depth modality needs an SVKR with depth')
            if need_kernel and kernel is None:
                kernel = out['kernel']
        depth = depth.float() if need_depth else None
        kernel = kernel.float() if need_kernel else None
        return depth, kernel

    # ------------------------------------------------------------------ training
    def compute_losses(self):
        net = self.bare_g
        depth, kernel = self.condition_maps(self.lq, self.cond_source, self.depth_in, self.kernel_in)
        code = net.kernel_code(kernel) if kernel is not None else None
        losses = OrderedDict()
        if self.vae_only:
            l_vae = self._vae_loss()
            losses['l_vae'] = l_vae.detach()
            total = self.vae_weight * l_vae
            losses['l_total'] = total.detach()
            return total, losses
        lr_up = self.lr_encoder_image(self.lq, self.gt.shape[-2:], self.svkr_sr_in)
        with torch.no_grad():
            z0 = net.encode_image(self.gt).float()
            z_lr = net.encode_image(lr_up).float()
        noise = torch.randn(z0.shape, generator=self.train_gen, device=self.device)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (z0.shape[0], ), generator=self.train_gen, device=self.device)
        zt = self.noise_scheduler.add_noise(z0, noise, t)
        target = prediction_target(self.noise_scheduler, z0, noise, t)
        pred, recon = self.net_g(zt, t, lr_latent=z_lr, depth=depth, kernel_code=code, return_recon=True)
        total = F.mse_loss(pred.float(), target)
        losses['l_eps'] = total.detach()
        inputs = {'lr': z_lr, 'depth': depth, 'kernel': code}
        for m, r in recon.items():
            if self.lambdas[m] > 0:
                c = F.mse_loss(r.float(), _area_resize(inputs[m], r.shape[-2:]).float())
                losses[f'l_c_{m}'] = c.detach()
                total = total + self.lambdas[m] * c
            elif m in net.recon_heads:  # keeps unused heads in the graph (DDP) without changing the loss
                total = total + 0.0 * r.sum()
        if self.train_vae:
            l_vae = self._vae_loss()
            losses['l_vae'] = l_vae.detach()
            total = total + self.vae_weight * l_vae
        losses['l_total'] = total.detach()
        return total, losses

    @torch.no_grad()
    def lr_encoder_image(self, lq, size, svkr_sr=None):
        """What the LR encoder reads, at the output ``size``: the bicubic-upsampled LR image (the paper), or with
        ``network_g: lr_input: svkr`` the frozen SVKR's refined image Iᵀ (restoration, then generation): the
        given ``svkr_sr`` (the sample's ``svkr_sr``: Iᵀ of the whole image a crop was cut from), else the SVKR's
        Iᵀ of ``lq``."""
        if self.bare_g.lr_input != 'svkr':
            return upsample_lr(lq, size)
        if svkr_sr is not None:
            sr = svkr_sr
        else:
            with self.autocast():
                sr = self.net_svkr(lq)['sr']
        sr = sr.float().clamp(0, 1)
        return sr if tuple(sr.shape[-2:]) == tuple(size) else upsample_lr(sr, size)

    def _vae_loss(self):
        """L1 reconstruction of the HR image through a sampled latent + ``vae_kl_weight`` x KL."""
        vae = self.bare_g.vae
        post = vae.encode(self.gt * 2 - 1).latent_dist
        rec = (vae.decode(post.sample(self.train_gen)).sample + 1) / 2
        return F.l1_loss(rec.float(), self.gt) + self.vae_kl_weight * post.kl().float().mean()

    def before_step(self, current_iter):
        """VAE-only iterations up to ``vae_warmup_iter``; at the first iteration after them the VAE is
        frozen (``vae_freeze_after_warmup``) and leaves the EMA: the diffusion part is trained on this VAE's
        latents, so the EMA weights (validation, ``sr``, ``params_ema``) must use this same VAE."""
        self.vae_only = self.train_vae and 0 < self.vae_warmup_iter and current_iter <= self.vae_warmup_iter
        if self.train_vae and self.vae_warmup_iter and self.vae_freeze_after_warmup and \
                current_iter > self.vae_warmup_iter:
            self.bare_g.vae.requires_grad_(False)
            self.train_vae = False
            self.drop_from_ema('vae.')
            get_root_logger().info(f'SSRModel: VAE warm-up done ({self.vae_warmup_iter} iterations); VAE frozen '
                                   f'from iteration {current_iter}')

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sr(self, lr, depth=None, kernel=None, num_steps=None, seed=None, show_progress=False):
        """docs/interfaces.md §8: ``lr`` B×3×h×w RGB [0, 1] -> ``dict(sr, depth, kernel)``, sampled by
        ``self.pipeline`` with the EMA weights. Depth and kernel maps (LR size) come from the frozen SVKR
        unless given."""
        lr = lr.to(self.device)
        source = 'gt' if (depth is not None or kernel is not None) else 'svkr'
        if source == 'svkr' and self.net_svkr is None and any(m != 'lr' for m in self.bare_g.modalities):
            raise OptionError('network_svkr', None, 'sr() needs an SVKR (or depth= / kernel= maps)')
        depth, kernel = self.condition_maps(lr, source, depth, kernel)
        with self.ema_weights():
            out = self.pipeline(lr, num_inference_steps=num_steps, seed=seed, depth=depth, kernel=kernel,
                                progress=show_progress)
        return dict(sr=out.images, depth=depth, kernel=kernel)

    def validation_steps(self):
        return self.diff_opt.get('val_num_inference_steps', self.diff_opt.get('num_inference_steps', 50))

    def run_network(self, net):
        depth, kernel = (self.depth_in, self.kernel_in) if self.val_cond_source == 'gt' else (None, None)
        if self.val_cond_source == 'gt':
            depth, kernel = self.condition_maps(self.lq, 'gt', depth, kernel)
        return self.sr(self.lq, depth=depth, kernel=kernel, num_steps=self.validation_steps())

    def depth_sources(self, dataset=None):
        """Where the depth behind validation outputs came from (log lines, tables): the SVKR's depth estimator
        when the conditions come from the SVKR (its kernels depend on depth too), the data set's depth maps
        (its ``depth_source`` when it knows it) when they come from the data."""
        sources = depth_sources(self.net_svkr) if self.val_cond_source == 'svkr' else []
        if self.val_cond_source == 'gt' and 'depth' in self.bare_g.modalities:
            sources.append(getattr(dataset, 'depth_source', None) or 'the data set\'s depth maps')
        return sources

    def scored_outputs(self, b):
        # a kernel is scored only where it is the SVKR's estimate, not the ground truth fed back
        kernel = self.output.get('kernel') if self.val_cond_source == 'svkr' else None
        return [('', self.output['sr'][b:b + 1], None if kernel is None else kernel[b:b + 1])]
