"""LatentDiffusionPrior: a small latent diffusion model in Stable Diffusion's parts, trained inside the project.

No diffusion weights can be downloaded here, so SSR's frozen base (paper 3.3, SPEC training stage 0) is
pretrained by the project itself, as the depth network is: an ``AutoencoderKL`` first, then an unconditional
(null-text) ``UNet2DConditionModel`` on its latents (``ssr_models/diffusion_prior_model.py``). The result is
written with ``save_pretrained`` in Stable Diffusion's folder layout::

    <folder>/model_index.json          # written last: a folder that has it is complete
    <folder>/unet/config.json, diffusion_pytorch_model.safetensors
    <folder>/vae/config.json, diffusion_pytorch_model.safetensors   # scaling_factor: 1 / std of the latents
    <folder>/scheduler/scheduler_config.json                        # the training noise schedule

so that ``SSRUNet(pretrained_path=<folder>)`` loads it exactly as it loads SD 2.1, and so do diffusers' own
``UNet2DConditionModel.from_pretrained(folder, subfolder='unet')``, ``AutoencoderKL.from_pretrained(folder,
subfolder='vae')`` and ``StableDiffusionPipeline.from_pretrained(folder)`` (no text encoder: pass a zero
``prompt_embeds``, the null text the UNet was trained with).
"""
import json
import os.path as osp

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY
from diffusers import AutoencoderKL, UNet2DConditionModel

from ssr_utils.atomic_file import atomic_directory, atomic_write
from ssr_utils.compat import own_weights, save_scheduler
from ssr_utils.errors import OptionError

PARTS = ('unet', 'vae', 'scheduler')
MODEL_INDEX = 'model_index.json'
PHASES = ('autoencoder', 'denoise')


def model_index(scheduler_class):
    """Stable Diffusion's ``model_index.json`` for a folder with a UNet, a VAE and a scheduler only: the text
    parts are ``[null, null]``, as diffusers writes a pipeline component that is absent."""
    import diffusers
    return {
        '_class_name': 'StableDiffusionPipeline',
        '_diffusers_version': diffusers.__version__,
        'feature_extractor': [None, None],
        'image_encoder': [None, None],
        'requires_safety_checker': False,
        'safety_checker': [None, None],
        'scheduler': ['diffusers', scheduler_class],
        'text_encoder': [None, None],
        'tokenizer': [None, None],
        'unet': ['diffusers', 'UNet2DConditionModel'],
        'vae': ['diffusers', 'AutoencoderKL'],
    }


@ARCH_REGISTRY.register()
class LatentDiffusionPrior(nn.Module):
    """An ``AutoencoderKL`` (``vae``) and an unconditional ``UNet2DConditionModel`` (``unet``) on its scaled latents.

    Args:
        unet (dict): the UNet's diffusers config (built with random weights).
        vae (dict): the autoencoder's diffusers config.
        pretrained_path (str): a diffusers-layout folder (``unet/``, ``vae/``) to start from instead of the two
            configs (to continue training a prior, or to train a UNet on a given autoencoder).
        null_text_length (int): tokens of the all-zero text embedding the UNet is given; ``SSRUNet`` with
            ``null_text: zeros`` gives the same (with zeros, the attention output does not depend on the length).
        gradient_checkpointing (bool): diffusers' gradient checkpointing in the UNet blocks (GPU sizes).

    ``latent_scale`` (a buffer, saved with the weights) is the factor the latents are multiplied by, Stable
    Diffusion's ``scaling_factor``: 0 until the autoencoder is trained (``DiffusionPriorModel`` then sets it to
    1 / std of the latents, as Stable Diffusion's 0.18215 was chosen), the VAE config's value when loaded.
    """

    def __init__(self, unet=None, vae=None, pretrained_path=None, null_text_length=4, gradient_checkpointing=False):
        super().__init__()
        if pretrained_path is not None:
            if unet is not None or vae is not None:
                raise OptionError('network_g:pretrained_path', pretrained_path,
                                  'give either pretrained_path or the unet / vae configs, not both')
            for part in ('unet', 'vae'):
                if not osp.isfile(osp.join(pretrained_path, part, 'config.json')):
                    raise OptionError('network_g:pretrained_path', pretrained_path, f'incomplete: no {part}/config.json')
            # own_weights: the same numbers as the saved networks (ssr_utils/compat.py, fix 9)
            self.unet = own_weights(UNet2DConditionModel.from_pretrained(osp.join(pretrained_path, 'unet')))
            self.vae = own_weights(AutoencoderKL.from_pretrained(osp.join(pretrained_path, 'vae')))
            scale = float(self.vae.config.scaling_factor)
        else:
            for key, cfg in (('unet', unet), ('vae', vae)):
                if not isinstance(cfg, dict):
                    raise OptionError(f'network_g:{key}', cfg, 'a diffusers config dict is required (or pretrained_path)')
            self.unet = UNet2DConditionModel(**unet)
            self.vae = AutoencoderKL(**vae)
            scale = 0.0
        if self.unet.config.in_channels != self.vae.config.latent_channels:
            raise OptionError('network_g:unet:in_channels', self.unet.config.in_channels,
                              f'the autoencoder has {self.vae.config.latent_channels} latent channels')
        if not isinstance(self.unet.config.cross_attention_dim, int):
            raise OptionError('network_g:unet:cross_attention_dim', self.unet.config.cross_attention_dim,
                              'expected one integer (the null text embedding width)')
        self.null_text_length = int(null_text_length)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.register_buffer('latent_scale', torch.tensor(scale))

    # ------------------------------------------------------------------ pieces
    @property
    def vae_scale_factor(self):
        return 2**(len(self.vae.config.block_out_channels) - 1)

    @property
    def has_latent_scale(self):
        return float(self.latent_scale) > 0

    def set_latent_scale(self, value):
        with torch.no_grad():
            self.latent_scale.fill_(float(value))

    def null_embedding(self, batch, dtype=None, device=None):
        return torch.zeros(batch, self.null_text_length, self.unet.config.cross_attention_dim,
                           dtype=dtype or self.latent_scale.dtype, device=device or self.latent_scale.device)

    def encode(self, img, scale=None):
        """RGB [0, 1] -> scaled latent (the posterior's mode, as SSRUNet encodes)."""
        scale = self.latent_scale if scale is None else scale
        return self.vae.encode(img * 2 - 1).latent_dist.mode() * scale

    def decode(self, z):
        """Scaled latent -> RGB [0, 1]."""
        return ((self.vae.decode(z / self.latent_scale).sample + 1) / 2).clamp(0, 1)

    def reconstruct(self, img):
        """RGB [0, 1] -> the autoencoder's reconstruction through the posterior's mode (any latent scale)."""
        z = self.vae.encode(img * 2 - 1).latent_dist.mode()
        return ((self.vae.decode(z).sample + 1) / 2).clamp(0, 1)

    def predict(self, z_t, t):
        """The UNet's prediction (noise or v) for noisy latents ``z_t`` at timesteps ``t``, null text."""
        return self.unet(z_t, t, encoder_hidden_states=self.null_embedding(z_t.shape[0], z_t.dtype, z_t.device),
                         return_dict=False)[0]

    def forward(self, phase, x, t=None, generator=None):
        """One training forward, through the (possibly DDP-wrapped) module so that gradients are synchronised.

        ``phase='autoencoder'``: ``x`` RGB [0, 1] -> ``(reconstruction in [-1, 1] through a sampled latent, KL per
        sample)``; ``phase='denoise'``: ``x`` noisy scaled latents, ``t`` timesteps -> the UNet's prediction."""
        if phase == 'autoencoder':
            post = self.vae.encode(x * 2 - 1).latent_dist
            return self.vae.decode(post.sample(generator)).sample, post.kl()
        if phase == 'denoise':
            return self.predict(x, t)
        raise ValueError(f'LatentDiffusionPrior: phase must be one of {PHASES}, got {phase!r}')

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def noise_error(self, z0, t, noise, scheduler):
        """Mean squared error of the noise the UNet implies at timesteps ``t`` (a B-vector) for clean latents
        ``z0`` and ``noise``, per sample. A v-prediction is turned into its noise,
        ``eps = sqrt(a) v + sqrt(1 - a) z_t``, so that models of either prediction type compare."""
        z_t = scheduler.add_noise(z0, noise, t)
        pred = self.predict(z_t, t).float()
        if scheduler.config.prediction_type == 'v_prediction':
            a = scheduler.alphas_cumprod.to(z0.device)[t].float().view(-1, 1, 1, 1)
            pred = a.sqrt() * pred + (1 - a).sqrt() * z_t
        return F.mse_loss(pred, noise, reduction='none').flatten(1).mean(1)

    @torch.no_grad()
    def sample(self, sampling_scheduler, shape, num_inference_steps=25, generator=None):
        """Unconditional samples: ``shape`` = latent B×C×h×w, denoised from seeded noise with a diffusers sampler
        (``DDIMScheduler`` / ``DPMSolverMultistepScheduler`` on the training schedule) -> RGB [0, 1]."""
        device = self.latent_scale.device
        z = torch.randn(shape, generator=generator, device=generator.device if generator else device).to(device)
        sampling_scheduler.set_timesteps(num_inference_steps, device=device)
        z = z * sampling_scheduler.init_noise_sigma
        for t in sampling_scheduler.timesteps:
            pred = self.predict(sampling_scheduler.scale_model_input(z, t), t.expand(shape[0]).to(device))
            z = sampling_scheduler.step(pred, t, z).prev_sample
        return self.decode(z)

    # ------------------------------------------------------------------ folder
    def save_pretrained(self, folder, scheduler, latent_scale=None):
        """Stable Diffusion's layout (module docstring) in ``folder``, built beside it and renamed into place
        (a reader sees the old complete folder or the new one). ``scheduler``: the training noise schedule.
        ``latent_scale``: the VAE config's ``scaling_factor`` (default: this network's)."""
        scale = float(self.latent_scale if latent_scale is None else latent_scale)
        if not scale > 0:
            raise ValueError('LatentDiffusionPrior.save_pretrained: no latent scale yet (the autoencoder is not trained)')
        with atomic_directory(folder, overwrite=True) as tmp:
            self.unet.save_pretrained(osp.join(tmp, 'unet'))
            self.vae.save_pretrained(osp.join(tmp, 'vae'))
            vae_config = osp.join(tmp, 'vae', 'config.json')
            with open(vae_config) as f:
                config = json.load(f)
            config['scaling_factor'] = scale
            with atomic_write(vae_config, 'w') as f:
                json.dump(config, f, indent=2, sort_keys=True)
            save_scheduler(scheduler, osp.join(tmp, 'scheduler'))
            with atomic_write(osp.join(tmp, MODEL_INDEX), 'w') as f:
                json.dump(model_index(type(scheduler).__name__), f, indent=2, sort_keys=True)
        return osp.abspath(folder)
