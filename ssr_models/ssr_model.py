"""SSRModel: latent diffusion SR constrained by AMF on LR image, depth and kernel maps (paper 3.3).

Training (``optimize_parameters``): the LR image is upsampled (bicubic) to the output size and
VAE-encoded; depth and kernel maps come from the sample (``conditions: source: gt``) or from a frozen
SVKR (``source: svkr``); the kernel map is reduced to its PCA code. Loss, Eq. (5):
``l_eps`` (MSE on the DDPM noise, or on v for ``prediction_type: v_prediction``) plus
``lambda_i * C_i`` where ``C_i`` is the MSE of a light head that reconstructs modality i's input
(kernel code, depth, LR latent) from its deepest encoder feature (``lambda_i = 0`` switches it off).
A VAE built from scratch (no pretrained weights, not frozen) is trained alongside with an L1
reconstruction + KL loss; the diffusion target uses its latents without gradient. With
``train: vae_warmup_iter: N`` the first N iterations train the VAE alone, then it is frozen
(``vae_freeze_after_warmup``, default true) and the diffusion part trains on its latents.

Sampling (``sr`` / validation): DDIM or DPM-Solver++ from diffusers, the condition features and AMF
modulations computed once per image, a fixed seed, optional AdaIN / wavelet colour correction.
``diffusion: strength`` < 1 starts from the noised LR latent and runs only the last steps (diffusers'
img2img rule); 1 (default) starts from pure noise.
"""
import os.path as osp
from collections import OrderedDict
from contextlib import contextmanager, nullcontext

import torch
from torch.nn import functional as F
from tqdm import tqdm

from basicsr.archs import build_network
from basicsr.metrics import calculate_metric
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import MODEL_REGISTRY

from ssr_arch.depth_arch import depth_note, depth_sources
from ssr_utils.color_fix import color_fix
from ssr_utils.atomic_file import atomic_torch_save
from ssr_utils.errors import OptionError
from ssr_utils.visualize import add_tb_image, depth_image, kernel_variance_image

_SAMPLERS = ('ddim', 'dpmsolver++')


def _area_resize(x, size):
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.adaptive_avg_pool2d(x, size) if x.shape[-2] >= size[0] and x.shape[-1] >= size[1] else \
        F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


@MODEL_REGISTRY.register()
class SSRModel(BaseModel):
    """Options beyond BasicSR's (see options/train_ssr.yml for every key with comments):

    ``network_g`` (type SSRUNet), optional ``network_svkr`` (type SVKR, frozen; weights from its own
    options or ``path: pretrain_network_svkr``), ``network_g: pca_path`` (KernelPCA file), ``diffusion``
    (scheduler and sampling), ``conditions`` (source of depth / kernel maps), ``train`` (optimiser,
    ``lambda_kernel`` / ``lambda_depth`` / ``lambda_lr``, ``ema_decay``, ``amp``, ``grad_clip`` ...).
    """

    def __init__(self, opt):
        super().__init__(opt)
        logger = get_root_logger()
        self.scale = int(opt.get('scale', 4))
        self.net_g = build_network(opt['network_g'])
        bare = self.net_g
        if type(bare).__name__ != 'SSRUNet':
            raise OptionError('network_g:type', opt['network_g'].get('type'), 'SSRModel needs an SSRUNet')
        self._base_from_disk = {
            'unet': opt['network_g'].get('pretrained_path') is not None and bare.config['freeze_unet'],
            'vae': opt['network_g'].get('pretrained_path') is not None and bare.config['freeze_vae'],
        }
        self.net_g = self.model_to_device(self.net_g)

        # conditions
        cond_opt = opt.get('conditions') or {}
        self.cond_source = cond_opt.get('source', 'svkr')
        self.val_cond_source = cond_opt.get('val_source', self.cond_source)
        for key, value in (('conditions:source', self.cond_source), ('conditions:val_source', self.val_cond_source)):
            if value not in ('gt', 'svkr'):
                raise OptionError(key, value, 'expected gt or svkr')
        self.net_svkr = None
        if opt.get('network_svkr') is not None:
            self.net_svkr = build_network(opt['network_svkr']).to(self.device)
            svkr_path = opt['path'].get('pretrain_network_svkr')
            if svkr_path is not None:
                self.load_network(self.net_svkr, svkr_path, opt['path'].get('strict_load_svkr', True),
                                  opt['path'].get('param_key_svkr', 'params_ema'))
            self.net_svkr.requires_grad_(False)
            self.net_svkr.eval()
        elif 'svkr' in (self.cond_source, self.val_cond_source):
            raise OptionError('network_svkr', None, 'needed by conditions: source/val_source svkr')
        # diffusion
        self.diff_opt = dict(opt.get('diffusion') or {})
        self.noise_scheduler = self._build_train_scheduler()
        sampler = self.diff_opt.get('sampler', 'dpmsolver++')
        if sampler not in _SAMPLERS:
            raise OptionError('diffusion:sampler', sampler, f'expected one of {list(_SAMPLERS)}')
        color = self.diff_opt.get('color_fix', 'wavelet')
        if color not in (None, 'none', 'adain', 'wavelet'):
            raise OptionError('diffusion:color_fix', color, 'expected adain, wavelet or none')
        self.amp_dtype = None
        amp = (opt.get('train') or {}).get('amp', self.diff_opt.get('amp', 'none'))
        if amp not in ('none', None, 'bf16', 'fp16'):
            raise OptionError('train:amp', amp, 'expected none, bf16 or fp16')
        if amp in ('bf16', 'fp16'):
            if self.device.type == 'cuda':
                self.amp_dtype = torch.bfloat16 if amp == 'bf16' else torch.float16
            else:
                logger.info(f'SSRModel: amp {amp} ignored on {self.device.type} (GPU only); running in float32')
        self.ema = None

        load_path = opt['path'].get('pretrain_network_g')
        if load_path is not None:
            self._load_net_g(load_path, opt['path'].get('param_key_g', 'params'))
        self._check_pca()
        if self.is_train:
            self.init_training_settings()

    # ------------------------------------------------------------------ set-up helpers
    def _check_pca(self):
        net = self.bare_g
        if 'kernel' not in net.modalities or net.has_pca:
            return
        svkr_pca = getattr(getattr(self.net_svkr, 'sr_net', None), 'pca', None)
        if svkr_pca is not None and bool(svkr_pca.components.abs().sum() > 0):
            if svkr_pca.components.shape != net.pca.components.shape:
                raise OptionError('network_g:kernel_code_channels', net.config['kernel_code_channels'],
                                  f'the SVKR kernel basis is {tuple(svkr_pca.components.shape)}')
            with torch.no_grad():
                net.pca.components.copy_(svkr_pca.components)
                net.pca.mean.copy_(svkr_pca.mean)
            get_root_logger().info('SSRModel: kernel PCA basis taken from the SVKR')
            return
        raise OptionError(
            'network_g:pca_path', None, 'the kernel modality needs a KernelPCA file '
            '(or a network_svkr / pretrain_network_g that holds one)')

    def _build_train_scheduler(self):
        from diffusers import DDPMScheduler
        d = self.diff_opt
        base = self.opt['network_g'].get('pretrained_path')
        keys = ('num_train_timesteps', 'beta_schedule', 'beta_start', 'beta_end', 'prediction_type', 'timestep_spacing',
                'steps_offset', 'rescale_betas_zero_snr', 'clip_sample')
        overrides = {k: d[k] for k in keys if k in d}
        if base is not None and osp.isdir(osp.join(base, 'scheduler')):
            sched = DDPMScheduler.from_pretrained(osp.join(base, 'scheduler'), **overrides)
        else:
            # latents are not images in [-1, 1]: no x0 clipping (diffusers' DDPMScheduler defaults to
            # clip_sample=True, which DDIM sampling inherits; Stable Diffusion's scheduler sets it false)
            overrides.setdefault('clip_sample', False)
            sched = DDPMScheduler(**overrides)
        if sched.config.prediction_type not in ('epsilon', 'v_prediction'):
            raise OptionError('diffusion:prediction_type', sched.config.prediction_type,
                              'expected epsilon or v_prediction')
        return sched

    def _sampling_scheduler(self):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
        cfg = self.noise_scheduler.config
        if self.diff_opt.get('sampler', 'dpmsolver++') == 'ddim':
            return DDIMScheduler.from_config(cfg)
        return DPMSolverMultistepScheduler.from_config(
            cfg, algorithm_type='dpmsolver++', solver_order=self.diff_opt.get('solver_order', 2))

    @property
    def bare_g(self):
        return self.get_bare_model(self.net_g)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type='cuda', dtype=self.amp_dtype)

    def init_training_settings(self):
        self.net_g.train()
        train_opt = self.opt['train']
        self.lambdas = {m: float(train_opt.get(f'lambda_{m}', 0.0)) for m in ('kernel', 'depth', 'lr')}
        self.vae_weight = float(train_opt.get('vae_weight', 1.0))
        self.vae_kl_weight = float(train_opt.get('vae_kl_weight', 1e-6))
        self.grad_clip = train_opt.get('grad_clip')
        self.max_nonfinite = int(train_opt.get('max_nonfinite', 20))
        self.nonfinite_count = 0
        self.train_vae = any(p.requires_grad for p in self.bare_g.vae.parameters())
        if self.train_vae and self.opt['dist']:
            raise OptionError(
                'network_g:freeze_vae', False, 'a trainable VAE is not supported with DDP; '
                'train it single-process or use a pretrained frozen VAE')
        # VAE pre-training inside the stage (latent diffusion's first stage): the first vae_warmup_iter
        # iterations train the VAE alone; then (vae_freeze_after_warmup) it is frozen for the diffusion part
        self.vae_warmup_iter = int(train_opt.get('vae_warmup_iter', 0))
        self.vae_freeze_after_warmup = bool(train_opt.get('vae_freeze_after_warmup', True))
        if self.vae_warmup_iter < 0:
            raise OptionError('train:vae_warmup_iter', self.vae_warmup_iter, 'expected an integer >= 0')
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
        self.ema_decay = float(train_opt.get('ema_decay', 0))
        if self.ema_decay > 0 and self.ema is None:
            self.ema = {k: p.detach().clone() for k, p in self.bare_g.named_parameters() if p.requires_grad}
        self.scaler = torch.amp.GradScaler('cuda') if self.amp_dtype == torch.float16 else None
        self.setup_optimizers()
        self.setup_schedulers()

    def setup_optimizers(self):
        train_opt = self.opt['train']
        params = [p for p in self.net_g.parameters() if p.requires_grad]
        if not params:
            raise OptionError('network_g', 'SSRUNet', 'no trainable parameters')
        optim_opt = dict(train_opt['optim_g'])
        optim_type = optim_opt.pop('type')
        self.optimizer_g = self.get_optimizer(optim_type, params, **optim_opt)
        self.optimizers.append(self.optimizer_g)

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        # basicsr 1.4.2 knows Adam only; take any torch.optim class by name (AdamW for diffusion)
        cls = getattr(torch.optim, optim_type, None)
        if not isinstance(cls, type) or not issubclass(cls, torch.optim.Optimizer):
            raise OptionError('train:optim_g:type', optim_type, 'not a torch.optim optimizer')
        return cls(params, lr, **kwargs)

    # ------------------------------------------------------------------ data and conditions
    def feed_data(self, data):
        self.lq = data['lq'].to(self.device)
        self.gt = data['gt'].to(self.device) if 'gt' in data else None
        self.depth_in = data['depth_lq'].to(self.device) if 'depth_lq' in data else None
        self.kernel_in = data['kernel'].to(self.device) if 'kernel' in data else None

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
            with self._autocast():
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

    def _lr_up(self, lq, size):
        return F.interpolate(lq, size=tuple(size), mode='bicubic', align_corners=False).clamp(0, 1)

    # ------------------------------------------------------------------ training
    def _training_loss(self):
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
        lr_up = self._lr_up(self.lq, self.gt.shape[-2:])
        with torch.no_grad(), self._autocast():
            z0 = net.encode_image(self.gt).float()
            z_lr = net.encode_image(lr_up).float()
        noise = torch.randn(z0.shape, generator=self.train_gen, device=self.device)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (z0.shape[0], ), generator=self.train_gen, device=self.device)
        zt = self.noise_scheduler.add_noise(z0, noise, t)
        if self.noise_scheduler.config.prediction_type == 'v_prediction':
            target = self.noise_scheduler.get_velocity(z0, noise, t)
        else:
            target = noise
        with self._autocast():
            pred, recon = self.net_g(zt, t, lr_latent=z_lr, depth=depth, kernel_code=code, return_recon=True)
        total = F.mse_loss(pred.float(), target)
        losses['l_eps'] = total.detach()
        inputs = {'lr': z_lr, 'depth': depth, 'kernel': code}
        for m, r in recon.items():
            if self.lambdas[m] > 0:
                c = F.mse_loss(r.float(), _area_resize(inputs[m], r.shape[-2:]))
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

    def _vae_loss(self):
        """L1 reconstruction of the HR image through a sampled latent + ``vae_kl_weight`` x KL."""
        vae = self.bare_g.vae
        post = vae.encode(self.gt * 2 - 1).latent_dist
        rec = (vae.decode(post.sample(self.train_gen)).sample + 1) / 2
        return F.l1_loss(rec, self.gt) + self.vae_kl_weight * post.kl().mean()

    def _set_vae_phase(self, current_iter):
        """VAE-only iterations up to ``vae_warmup_iter``; at the first iteration after them the VAE is
        frozen (``vae_freeze_after_warmup``) and leaves the EMA: the diffusion part is trained on this VAE's
        latents, so the EMA weights (validation, ``sr``, ``params_ema``) must use this same VAE."""
        self.vae_only = self.train_vae and 0 < self.vae_warmup_iter and current_iter <= self.vae_warmup_iter
        if self.train_vae and self.vae_warmup_iter and self.vae_freeze_after_warmup and \
                current_iter > self.vae_warmup_iter:
            vae = self.bare_g.vae
            vae.requires_grad_(False)
            self.train_vae = False
            if self.ema is not None:  # a frozen part needs no average: EMA weights then use the VAE itself
                for k in [k for k in self.ema if k.startswith('vae.')]:
                    del self.ema[k]
            get_root_logger().info(f'SSRModel: VAE warm-up done ({self.vae_warmup_iter} iterations); VAE frozen '
                                   f'from iteration {current_iter}')

    def optimize_parameters(self, current_iter):
        self._set_vae_phase(current_iter)
        self.optimizer_g.zero_grad(set_to_none=True)
        # a non-finite batch would also poison the AMF batch-norm running statistics in the forward pass
        bn_state = {k: v.clone() for k, v in self.bare_g.named_buffers() if k.startswith('amf.')}
        total, losses = self._training_loss()
        self.last_loss = total.detach()
        if not torch.isfinite(total):
            self.nonfinite_count += 1
            buffers = dict(self.bare_g.named_buffers())
            with torch.no_grad():
                for k, v in bn_state.items():
                    buffers[k].copy_(v)
            get_root_logger().warning(f'SSRModel: non-finite loss {total.item()} at iter {current_iter} '
                                      f'({dict((k, float(v)) for k, v in losses.items())}); step skipped '
                                      f'({self.nonfinite_count} in a row)')
            if self.nonfinite_count >= self.max_nonfinite:
                raise RuntimeError(
                    f'SSRModel: {self.nonfinite_count} non-finite losses in a row (iter {current_iter}); '
                    'stopping before the weights are poisoned')
            self.log_dict = self.reduce_loss_dict(OrderedDict(l_nonfinite=torch.ones((), device=self.device)))
            return
        self.nonfinite_count = 0
        params = [p for p in self.net_g.parameters() if p.requires_grad]
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer_g)
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, float(self.grad_clip))
            self.scaler.step(self.optimizer_g)
            self.scaler.update()
        else:
            total.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, float(self.grad_clip))
            self.optimizer_g.step()
        if self.ema is not None:
            self._update_ema()
        self.log_dict = self.reduce_loss_dict(losses)

    @torch.no_grad()
    def _update_ema(self):
        params = dict(self.bare_g.named_parameters())
        shadow = list(self.ema.values())
        torch._foreach_mul_(shadow, self.ema_decay)
        torch._foreach_add_(shadow, [params[k].detach() for k in self.ema], alpha=1 - self.ema_decay)

    @contextmanager
    def ema_weights(self):
        """Swap the EMA weights in (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        params = dict(self.bare_g.named_parameters())
        backup = {k: params[k].detach().clone() for k in self.ema}
        with torch.no_grad():
            for k, v in self.ema.items():
                params[k].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in backup.items():
                    params[k].copy_(v)

    # ------------------------------------------------------------------ sampling
    def _pad_lr(self, lq):
        mult = self.bare_g.size_multiple
        h, w = lq.shape[-2:]

        def padded(n):
            m = n
            while (m * self.scale) % mult:
                m += 1
            return m

        ph, pw = padded(h) - h, padded(w) - w
        if ph or pw:
            mode = 'reflect' if ph < h and pw < w else 'replicate'
            lq = F.pad(lq, (0, pw, 0, ph), mode=mode)
        return lq, (h, w)

    def sampling_strength(self, strength=None):
        """``diffusion: strength`` (or the given value), checked: a float in (0, 1]."""
        strength = self.diff_opt.get('strength', 1.0) if strength is None else strength
        try:
            value = float(strength)
        except (TypeError, ValueError):
            raise OptionError('diffusion:strength', strength, 'expected a number in (0, 1]') from None
        if not 0 < value <= 1:
            raise OptionError('diffusion:strength', strength, 'expected a number in (0, 1]')
        return value

    @staticmethod
    def strength_steps(num_steps, strength):
        """Index of the first sampler step and the number of steps run for ``strength`` (diffusers' img2img
        rule: ``int(num_steps * strength)`` steps, at least one)."""
        run = min(max(int(num_steps * strength), 1), num_steps)
        return num_steps - run, run

    @torch.no_grad()
    def denoise(self, latent_shape, eps_fn, num_steps=None, seed=None, show_progress=False, init_latent=None,
                strength=None):
        """The sampling loop: ``eps_fn(model_input, t)`` is the network's prediction (the noise, or v with
        ``prediction_type: v_prediction``; whole latent or tiled); returns the final latent (float32). Steps,
        seed and strength default to the ``diffusion`` options.

        ``strength`` 1 (default) starts from seeded pure noise. ``strength`` < 1 is diffusers' img2img
        start: only the last ``int(num_steps * strength)`` steps of the schedule run, from ``init_latent``
        (the VAE latent of the upsampled LR image) noised with the same seeded noise to the first of them.
        """
        steps = int(num_steps or self.diff_opt.get('num_inference_steps', 50))
        strength = self.sampling_strength(strength)
        seed = self.diff_opt.get('seed', 0) if seed is None else seed
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed))
        scheduler = self._sampling_scheduler()
        scheduler.set_timesteps(steps, device=self.device)
        z = torch.randn(latent_shape, generator=gen, device=self.device, dtype=torch.float32)
        timesteps = scheduler.timesteps
        if strength < 1:
            if init_latent is None:
                raise ValueError(f'SSRModel.denoise: strength {strength} < 1 needs init_latent (the LR latent)')
            if tuple(init_latent.shape) != tuple(latent_shape):
                raise ValueError(f'SSRModel.denoise: init_latent {tuple(init_latent.shape)} does not match the '
                                 f'latent shape {tuple(latent_shape)}')
            start, _ = self.strength_steps(steps, strength)
            start *= scheduler.order
            timesteps = timesteps[start:]
            if hasattr(scheduler, 'set_begin_index'):
                scheduler.set_begin_index(start)
            t0 = timesteps[:1].repeat(latent_shape[0])
            z = scheduler.add_noise(init_latent.to(self.device, torch.float32), z, t0)
        else:
            z = z * scheduler.init_noise_sigma
        for t in tqdm(timesteps, desc='SSR sampling', disable=not show_progress, leave=False):
            eps = eps_fn(scheduler.scale_model_input(z, t), t)
            z = scheduler.step(eps.float(), t, z).prev_sample
        return z

    @torch.no_grad()
    def sample(self, lq, depth=None, kernel=None, num_steps=None, seed=None, show_progress=False):
        """Diffusion sampling for ``lq`` (B×3×h×w) with given maps (LR size). Returns B×3×sh×sw in [0, 1]."""
        net = self.bare_g
        lq, (h, w) = self._pad_lr(lq)
        hp, wp = lq.shape[-2:]
        if depth is not None and depth.shape[-2:] != (hp, wp):
            depth = F.pad(depth, (0, wp - depth.shape[-1], 0, hp - depth.shape[-2]), mode='replicate')
        if kernel is not None and kernel.shape[-2:] != (hp, wp):
            kernel = F.pad(kernel, (0, wp - kernel.shape[-1], 0, hp - kernel.shape[-2]), mode='replicate')
        out_size = (hp * self.scale, wp * self.scale)
        lr_up = self._lr_up(lq, out_size)
        with self._autocast():
            z_lr = net.encode_image(lr_up)
            code = net.kernel_code(kernel.to(z_lr.dtype)) if kernel is not None else None
            conds = net.encode_conditions(z_lr, depth, code, size=z_lr.shape[-2:])
            z = self.denoise(z_lr.shape, lambda inp, t: net(inp.to(z_lr.dtype), t, conditions=conds), num_steps,
                             seed, show_progress, init_latent=z_lr)
            img = net.decode_latent(z.to(z_lr.dtype)).float()
        img = color_fix(img, lr_up.float(), self.diff_opt.get('color_fix', 'wavelet'))
        return img[..., :h * self.scale, :w * self.scale]

    @torch.no_grad()
    def sr(self, lr, depth=None, kernel=None, num_steps=None, seed=None, show_progress=False):
        """docs/interfaces.md §8: ``lr`` B×3×h×w RGB [0, 1] -> ``dict(sr, depth, kernel)``. Depth and kernel maps
        (LR size) come from the frozen SVKR unless given."""
        lr = lr.to(self.device)
        was_training = self.net_g.training
        self.net_g.eval()
        try:
            source = 'gt' if (depth is not None or kernel is not None) else 'svkr'
            if source == 'svkr' and self.net_svkr is None and any(m != 'lr' for m in self.bare_g.modalities):
                raise OptionError('network_svkr', None, 'sr() needs an SVKR (or depth= / kernel= maps)')
            depth, kernel = self.condition_maps(lr, source, depth, kernel)
            with self.ema_weights():
                out = self.sample(lr, depth, kernel, num_steps, seed, show_progress)
        finally:
            self.net_g.train(was_training)
        return dict(sr=out, depth=depth, kernel=kernel)

    def test(self):
        depth, kernel = (self.depth_in, self.kernel_in) if self.val_cond_source == 'gt' else (None, None)
        steps = self.diff_opt.get('val_num_inference_steps', self.diff_opt.get('num_inference_steps', 50))
        if self.val_cond_source == 'gt':
            depth, kernel = self.condition_maps(self.lq, 'gt', depth, kernel)
        out = self.sr(self.lq, depth=depth, kernel=kernel, num_steps=steps)
        self.output, self.cond_depth, self.cond_kernel = out['sr'], out['depth'], out['kernel']

    # ------------------------------------------------------------------ validation
    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        if self.opt['rank'] == 0:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        dataset_name = dataloader.dataset.opt['name']
        with_metrics = self.opt['val'].get('metrics') is not None
        if with_metrics:
            if not hasattr(self, 'metric_results'):
                self.metric_results = {metric: 0 for metric in self.opt['val']['metrics'].keys()}
            self._initialize_best_metric_results(dataset_name)
            self.metric_results = {metric: 0 for metric in self.metric_results}
        count = 0
        for val_data in tqdm(dataloader, desc=f'Validating {dataset_name}', unit='image'):
            self.feed_data(val_data)
            self.test()
            for b in range(self.output.shape[0]):
                img_name = osp.splitext(osp.basename(val_data['lq_path'][b]))[0]
                sr_img = tensor2img(self.output[b:b + 1].detach().cpu(), rgb2bgr=True, min_max=(0, 1))
                metric_data = {'img': sr_img}
                if self.gt is not None:
                    metric_data['img2'] = tensor2img(self.gt[b:b + 1].detach().cpu(), rgb2bgr=True, min_max=(0, 1))
                side_images = self._condition_images(b, sr_img.shape[:2])
                if save_img:
                    suffix = self.opt['val'].get('suffix') or (self.opt['name'] if not self.is_train else current_iter)
                    folder = osp.join(self.opt['path']['visualization'], dataset_name) if not self.is_train else \
                        osp.join(self.opt['path']['visualization'], img_name)
                    imwrite(sr_img, osp.join(folder, f'{img_name}_{suffix}.png'))
                    for kind, img in side_images.items():
                        imwrite(img, osp.join(folder, f'{img_name}_{suffix}_{kind}.png'))
                if count < self.opt['val'].get('tb_images', 2):
                    add_tb_image(tb_logger, f'val/{dataset_name}/{img_name}/sr', sr_img, current_iter)
                    for kind, img in side_images.items():
                        add_tb_image(tb_logger, f'val/{dataset_name}/{img_name}/{kind}', img, current_iter)
                if with_metrics and 'img2' in metric_data:
                    for name, opt_ in self.opt['val']['metrics'].items():
                        self.metric_results[name] += calculate_metric(metric_data, opt_)
                count += 1
        if with_metrics and count:
            for metric in self.metric_results:
                self.metric_results[metric] /= count
                self._update_best_metric_result(dataset_name, metric, self.metric_results[metric], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger,
                                               depth_note(self.depth_sources(dataloader.dataset)))

    def depth_sources(self, dataset=None):
        """Where the depth behind validation outputs came from (log lines, tables): the SVKR's depth estimator
        when the conditions come from the SVKR (its kernels depend on depth too), the data set's depth maps
        (its ``depth_source`` when it knows it) when they come from the data."""
        sources = depth_sources(self.net_svkr) if self.val_cond_source == 'svkr' else []
        if self.val_cond_source == 'gt' and 'depth' in self.bare_g.modalities:
            sources.append(getattr(dataset, 'depth_source', None) or 'the data set\'s depth maps')
        return sources

    def _condition_images(self, index, size):
        """The depth map and kernel-variance heat map that conditioned output ``index``, at output size."""
        images = {}
        depth, kernel = getattr(self, 'cond_depth', None), getattr(self, 'cond_kernel', None)
        if depth is not None:
            images['depth'] = depth_image(depth[index:index + 1], size=size)
        if kernel is not None:
            images['kvar'] = kernel_variance_image(kernel[index:index + 1], size=size)
        return images

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger, note=''):
        """The validation log line; ``note`` (where the depth came from, loud for the prior) joins its header."""
        log_str = f'Validation {dataset_name}' + (f' [{note}]' if note else '') + '\n'
        for metric, value in self.metric_results.items():
            log_str += f'\t # {metric}: {value:.4f}'
            if hasattr(self, 'best_metric_results'):
                best = self.best_metric_results[dataset_name][metric]
                log_str += f'\tBest: {best["val"]:.4f} @ {best["iter"]} iter'
            log_str += '\n'
        get_root_logger().info(log_str)
        if tb_logger:
            for metric, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}', value, current_iter)

    def get_current_visuals(self):
        out = OrderedDict(lq=self.lq.detach().cpu(), result=self.output.detach().cpu())
        if self.gt is not None:
            out['gt'] = self.gt.detach().cpu()
        return out

    # ------------------------------------------------------------------ save / load / resume
    def _saved_keys(self, state):
        skip = tuple(f'{m}.' for m, from_disk in self._base_from_disk.items() if from_disk)
        return {k: v for k, v in state.items() if not (skip and k.startswith(skip))}

    def _net_state(self, use_ema):
        state = self.bare_g.state_dict()
        if use_ema and self.ema is not None:
            state = dict(state)
            state.update(self.ema)
        return {k: v.detach().cpu() for k, v in self._saved_keys(state).items()}

    def save(self, epoch, current_iter):
        from basicsr.utils.dist_util import get_dist_info
        if get_dist_info()[0] == 0:
            label = 'latest' if current_iter == -1 else current_iter
            path = osp.join(self.opt['path']['models'], f'net_g_{label}.pth')
            atomic_torch_save({'params': self._net_state(False), 'params_ema': self._net_state(True)}, path)
        self.save_training_state(epoch, current_iter)

    def _load_net_g(self, path, param_key='params'):
        if not osp.isfile(path):
            raise OptionError('path:pretrain_network_g', path, 'file does not exist')
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        key = param_key if param_key in ckpt else 'params'
        state = {(k[7:] if k.startswith('module.') else k): v for k, v in ckpt[key].items()}
        missing, unexpected = self.bare_g.load_state_dict(state, strict=False)
        allowed = tuple(f'{m}.' for m, from_disk in self._base_from_disk.items() if from_disk)
        missing = [k for k in missing if not (allowed and k.startswith(allowed))]
        if missing or unexpected:
            raise KeyError(
                f'{path} [{key}] does not fit network_g: missing {missing[:5]}..., unexpected {unexpected[:5]}')
        if 'params_ema' in ckpt and (self.opt.get('train') or {}).get('ema_decay', 0) > 0:
            params = dict(self.bare_g.named_parameters())
            self.ema = {
                k: ckpt['params_ema'][k].to(self.device).clone() if k in ckpt['params_ema'] else p.detach().clone()
                for k, p in params.items() if p.requires_grad
            }
        get_root_logger().info(f'SSRModel: loaded network_g from {path} [{key}]')

    def extra_training_state(self):
        state = {'ssr_train_gen': self.train_gen.get_state(), 'ssr_nonfinite_count': self.nonfinite_count}
        if self.ema is not None:
            state['ssr_ema'] = {k: v.detach().cpu() for k, v in self.ema.items()}
        if self.scaler is not None:
            state['ssr_grad_scaler'] = self.scaler.state_dict()
        return state

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        if 'ssr_train_gen' in resume_state:
            self.train_gen.set_state(resume_state['ssr_train_gen'].cpu())
        self.nonfinite_count = resume_state.get('ssr_nonfinite_count', 0)
        if resume_state.get('ssr_ema') is not None and self.ema is not None:
            for k, v in resume_state['ssr_ema'].items():
                self.ema[k] = v.to(self.device).clone()
        if resume_state.get('ssr_grad_scaler') is not None and self.scaler is not None:
            self.scaler.load_state_dict(resume_state['ssr_grad_scaler'])
