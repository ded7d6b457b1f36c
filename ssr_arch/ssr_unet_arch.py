"""SSRUNet: a diffusers ``UNet2DConditionModel`` constrained by AMF (paper section 3.3), plus its VAE.

Structure (all one registered network, saved and loaded together):

* ``unet``: a plain ``UNet2DConditionModel``; loaded from ``<pretrained_path>/unet`` (diffusers
  layout, e.g. a Stable Diffusion 2.1-base download) or built from the ``unet`` option dict.
* ``vae``: an ``AutoencoderKL`` from ``<pretrained_path>/vae`` or the ``vae`` option dict.
* ``encoders``: ``lr`` (half-UNet ``SSRLREncoder`` of the VAE latent of the upsampled LR image),
  ``depth`` and ``kernel`` (small ``SSRMapEncoder`` of the depth map and of the kernel map's PCA
  code). Each gives one feature map per UNet level.
* the fusion method (``fusion``, ``ssr_arch/fusion_arch.py``), kept under its own name: ``amf`` (default,
  the paper's) is one ``AMF`` per injection point and modality. Injection points are the output of every
  down block (``down0``...), of the mid block (``mid``) and of every up block (``up0``...). At each
  point the modalities are applied one after another in the order of ``modalities``; the default
  ``[kernel, depth, lr]`` is the paper's index order (f1 = kernel, f2 = depth, f3 = LR image), so the
  primary modality acts last, closest to the UNet's next layer. ``sft``: one SFT layer per point on the
  concatenated features, no normalisation (StableSR); ``concat``: the raw conditions concatenated at the
  UNet input through a zero-initialised extension of ``conv_in`` (SR3 / ResShift; no encoders).
* ``recon_heads``: light heads for the constraint terms C_i of Eq. (5) (see ``reconstruct``).
* the null text embedding (``null_text``: ``zeros`` = fixed zeros, ``learned`` = a trained
  parameter; ``null_text_path`` initialises it from a saved tensor, e.g. the text encoder's
  embedding of the empty prompt computed once offline).

The UNet's own modules and parameter names are untouched (the fusion acts through forward hooks), so the
base weights load and save in the diffusers layout and a bare UNet call (``conditions=None``)
behaves exactly like the original model. With ``pretrained_path`` the UNet and the VAE are frozen by
default (``freeze_unet`` / ``freeze_vae``); without it everything is trainable.

Save / load follow diffusers: the constructor is ``@register_to_config``, so ``net.config`` rebuilds the
network (``SSRUNet.from_config(net.config)``); ``save_pretrained(folder)`` writes ``config.json`` and
``diffusion_pytorch_model.safetensors``; ``SSRUNet.from_pretrained(folder)`` reads them back. A base part
that is loaded from ``pretrained_path`` and frozen is referenced by that path, not copied (its weights
are the Stable Diffusion folder's); every other weight is in the safetensors file.
"""
import functools
import json
import os
import os.path as osp

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ssr_arch.amf_arch import FOLDED  # noqa: F401  (re-exported: the tag of a folded AMF point)
from ssr_arch.fusion_arch import BLOCK_GROUPS, fusion_class
from ssr_arch.ssr_encoders_arch import SSRLREncoder, SSRMapEncoder
from ssr_data.degradations import kernel_code_spread
from ssr_data.kernels import KernelPCA, fill_missing_code_scale
from ssr_utils.atomic_file import atomic_write
from ssr_utils.compat import own_weights
from ssr_utils.errors import OptionError

MODALITIES = ('kernel', 'depth', 'lr')
# what the LR encoder (and the img2img start) reads: the bicubic-upsampled LR image (the paper), or the
# SVKR's refined image I^T (restoration, then generation)
LR_INPUTS = ('bicubic', 'svkr')
WEIGHTS_NAME = 'diffusion_pytorch_model.safetensors'
_BASE_PARTS = ('unet', 'vae')
_WEIGHT_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin',
                 'diffusion_pytorch_model.safetensors.index.json', 'diffusion_pytorch_model.bin.index.json')


def tiny_config(cross_attention_dim=32, null_text_length=4):
    """Options of a tiny random SSRUNet (UNet widths 32/64, 2-block VAE): tests, CPU benchmark, demo."""
    unet = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=[32, 64],
        layers_per_block=1,
        down_block_types=['CrossAttnDownBlock2D', 'DownBlock2D'],
        up_block_types=['UpBlock2D', 'CrossAttnUpBlock2D'],
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8)
    vae = dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=[16, 32],
        down_block_types=['DownEncoderBlock2D'] * 2,
        up_block_types=['UpDecoderBlock2D'] * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=32)
    return dict(
        unet=unet,
        vae=vae,
        null_text_length=null_text_length,
        lr_encoder=dict(block_out_channels=[16, 32]),
        map_encoder=dict(block_out_channels=[8, 16]),
        amf=dict(hidden=16))


def check_pretrained_folder(path, key='pretrained_path'):
    """A local diffusers-layout folder with what SSRUNet reads from it: ``unet/`` and ``vae/``, each with its
    ``config.json`` and weights. Stops with an ``OptionError`` naming ``key`` and the first missing file."""
    if not osp.isdir(path):
        raise OptionError(key, path, 'not an existing local folder (a diffusers-layout Stable Diffusion folder with '
                          'unet/ and vae/; nothing is downloaded)')
    for part in _BASE_PARTS:
        folder = osp.join(path, part)
        if not osp.isfile(osp.join(folder, 'config.json')):
            raise OptionError(key, path, f'incomplete: no {part}/config.json (diffusers layout: unet/, vae/, '
                              'scheduler/)')
        if not any(osp.isfile(osp.join(folder, name)) for name in _WEIGHT_FILES):
            raise OptionError(key, path, f'incomplete: no weights in {part}/ (expected {_WEIGHT_FILES[0]} or '
                              f'{_WEIGHT_FILES[1]})')


def _public_config(config):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith('_')}


def _count(params):
    return sum(p.numel() for p in params)


def _jsonable(value):
    return json.loads(json.dumps(value))


@ARCH_REGISTRY.register()
class SSRUNet(ModelMixin, ConfigMixin):
    """See the module docstring. Options (``network_g`` in the YAML):

    Args:
        pretrained_path (str | None): local diffusers-layout folder with ``unet/`` and ``vae/``.
        unet (dict | None): ``UNet2DConditionModel`` config (without ``pretrained_path``).
        vae (dict | None): ``AutoencoderKL`` config (without ``pretrained_path``).
        freeze_unet, freeze_vae (bool | None): default: True with ``pretrained_path``, else False.
        modalities (list[str]): subset of kernel / depth / lr, in the order AMF applies them.
        kernel_code_channels (int): channels of the kernel PCA code (docs/interfaces.md §2: L = 10).
        kernel_size (int): k of the k x k kernels in the kernel maps.
        pca_path (str | None): ``KernelPCA`` file (``KernelPCA.save``); the basis is kept as submodule
            ``pca`` and saved with the network, so later loads need no file.
        scale (int), kernel_distribution (dict | None): the SR scale (default 4, the paper's) and the distribution
            of the kernels SSR is trained on (``ssr_data.degradations.KERNEL_DISTRIBUTION_KEYS``; None: the default for the
            scale); with a basis from ``pca_path`` they give ``code_scale`` (below). SSRModel fills both from
            ``scale`` and ``datasets:train`` when the option file leaves them out.
        lr_encoder (dict): ``SSRLREncoder`` options (``block_out_channels`` one per UNet level...).
        map_encoder (dict): ``SSRMapEncoder`` options, shared by the depth and kernel encoders.
        amf (dict): ``AMF`` options (hidden, norm, residual, zero_init), for ``fusion: amf``.
        inject (list[str]): which groups of points get AMF / SFT: down, mid, up (concat: the input only).
        fusion (str): how the conditions enter the UNet: ``amf`` (paper), ``sft``, ``concat``, or any method
            registered in ``FUSION_REGISTRY`` (ssr_arch/fusion_arch.py).
        fusion_opt (dict | None): options of a fusion method other than ``amf`` (e.g. ``sft``: hidden).
        lr_input (str): what the LR encoder reads, ``bicubic`` (the upsampled LR image, paper) or ``svkr``
            (the SVKR's refined image I^T; training and sampling then need the SVKR). Also the img2img start.
        null_text (str): zeros | learned. null_text_length (int): tokens. null_text_path (str | None).
        recon_heads (bool): build the reconstruction heads of the constraint terms.
        gradient_checkpointing (bool): diffusers' gradient checkpointing in the UNet blocks.

    The kernel modality reads the PCA code divided by ``code_scale`` (``kernel_code``), the spread of each
    component over the training distribution's kernels (``kernel_code_spread``), as NBSR does: the raw codes'
    spread is 0.075 down to 0.0006 on the demo's SVKR maps, and with them trained SSRs ignored their kernel maps
    (removing them changed the output by less than 0.01 grey levels; docs/diffusion.md). A basis taken from the
    SVKR brings its NBSR's ``code_scale``; a checkpoint saved without one loads with ones (the raw codes it was
    trained on).
    """

    @register_to_config
    def __init__(self,
                 pretrained_path=None,
                 unet=None,
                 vae=None,
                 freeze_unet=None,
                 freeze_vae=None,
                 modalities=MODALITIES,
                 kernel_code_channels=10,
                 kernel_size=21,
                 pca_path=None,
                 lr_encoder=None,
                 map_encoder=None,
                 amf=None,
                 inject=('down', 'mid', 'up'),
                 null_text='zeros',
                 null_text_length=77,
                 null_text_path=None,
                 recon_heads=True,
                 gradient_checkpointing=False,
                 fusion='amf',
                 fusion_opt=None,
                 lr_input='bicubic',
                 scale=4,
                 kernel_distribution=None):
        super().__init__()
        self.modalities, self.inject = self._check_choices(modalities, inject, null_text)
        fusion_cls = fusion_class(fusion)
        if lr_input not in LR_INPUTS:
            raise OptionError('lr_input', lr_input, f'expected one of {list(LR_INPUTS)}')
        self.lr_input = lr_input
        self._build_base(pretrained_path, unet, vae, freeze_unet, freeze_vae, gradient_checkpointing)
        self._build_kernel_pca(pca_path, kernel_code_channels, kernel_size, scale, kernel_distribution)
        lr_encoder, map_encoder = self._build_encoders(lr_encoder, map_encoder, kernel_code_channels,
                                                       fusion_cls.uses_encoders)
        amf, fusion_opt = self._build_fusion(fusion_cls, amf, fusion_opt, kernel_code_channels)
        self._build_recon_heads(recon_heads and fusion_cls.uses_encoders, kernel_code_channels)
        self._build_null_text(null_text, null_text_length, null_text_path)
        self._active = None
        self._hook_handles = [
            module.register_forward_hook(functools.partial(self._fusion_hook, name))
            for name, module, _, _ in self._points
        ]
        # the config rebuilds this architecture: resolved lists and dicts, an absolute base path, and no
        # pca_path / null_text_path (the basis and the embedding are part of the weights)
        self.register_to_config(
            pretrained_path=None if pretrained_path is None else osp.abspath(pretrained_path),
            modalities=list(self.modalities),
            inject=list(self.inject),
            lr_encoder=_jsonable(lr_encoder),
            map_encoder=_jsonable(map_encoder),
            amf=_jsonable(amf),
            fusion_opt=_jsonable(fusion_opt),
            null_text_length=int(self.null_text_embedding.shape[1]),
            pca_path=None,
            null_text_path=None)
        n_train, n_total = self.parameter_counts()
        get_root_logger().info(
            f'SSRUNet: {n_train:,} trainable of {n_total:,} parameters ({100.0 * n_train / max(n_total, 1):.2f}%); '
            f'UNet {"frozen" if self.frozen["unet"] else "trainable"}, '
            f'VAE {"frozen" if self.frozen["vae"] else "trainable"}, modalities {self.modalities}, '
            f'fusion {fusion} at {len(self._points)} points' + (', LR encoder reads the SVKR\'s I^T'
                                                               if lr_input == 'svkr' else ''))

    def __getattr__(self, name):
        # config keys unet / vae / amf / recon_heads share their names with submodules: the submodules win
        # (diffusers' ModelMixin would hand out the config value)
        for store in ('_modules', '_parameters', '_buffers'):
            values = self.__dict__.get(store)
            if values is not None and name in values:
                return values[name]
        return super().__getattr__(name)

    # ------------------------------------------------------------------ construction steps
    @staticmethod
    def _check_choices(modalities, inject, null_text):
        modalities = list(modalities)
        if not modalities or any(m not in MODALITIES for m in modalities) or len(set(modalities)) != len(modalities):
            raise OptionError('modalities', modalities, f'expected distinct entries from {list(MODALITIES)}')
        inject = list(inject)
        if not inject or any(g not in BLOCK_GROUPS for g in inject):
            raise OptionError('inject', inject, 'expected a non-empty subset of [down, mid, up]')
        if null_text not in ('zeros', 'learned'):
            raise OptionError('null_text', null_text, 'expected zeros or learned')
        return modalities, inject

    def _build_base(self, pretrained_path, unet, vae, freeze_unet, freeze_vae, gradient_checkpointing):
        """The diffusers UNet and VAE: from ``pretrained_path`` (frozen by default) or from their configs."""
        if pretrained_path is not None:
            check_pretrained_folder(pretrained_path)
            if unet is not None or vae is not None:
                raise OptionError('unet' if unet is not None else 'vae', 'dict',
                                  'give either pretrained_path or the unet/vae configs, not both')
            # own_weights: the same numbers as the saved networks (ssr_utils/compat.py, fix 9); accelerate is no
            # dependency, and diffusers warns at every load that defaults low_cpu_mem_usage to True without it
            self.unet = own_weights(UNet2DConditionModel.from_pretrained(osp.join(pretrained_path, 'unet'),
                                                                         low_cpu_mem_usage=False))
            self.vae = own_weights(AutoencoderKL.from_pretrained(osp.join(pretrained_path, 'vae'),
                                                                 low_cpu_mem_usage=False))
        else:
            if unet is None or vae is None:
                raise OptionError('unet' if unet is None else 'vae', None,
                                  'required when pretrained_path is not given (config of the model to build)')
            self.unet = UNet2DConditionModel(**unet)
            self.vae = AutoencoderKL(**vae)
        self.frozen = {
            'unet': pretrained_path is not None if freeze_unet is None else bool(freeze_unet),
            'vae': pretrained_path is not None if freeze_vae is None else bool(freeze_vae),
        }
        # base parts whose weights are the pretrained folder's: referenced by path, never saved
        self.referenced_parts = tuple(p for p in _BASE_PARTS if pretrained_path is not None and self.frozen[p])
        self.unet.requires_grad_(not self.frozen['unet'])
        self.vae.requires_grad_(not self.frozen['vae'])
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        if not isinstance(self.unet.config.cross_attention_dim, int):
            raise OptionError('unet:cross_attention_dim', self.unet.config.cross_attention_dim,
                              'SSRUNet needs a single integer')

    def _build_kernel_pca(self, pca_path, kernel_code_channels, kernel_size, scale, kernel_distribution):
        if pca_path is not None:
            self.pca = KernelPCA.load(pca_path)
            if self.pca.dim != kernel_code_channels or self.pca.kernel_size != kernel_size:
                raise OptionError(
                    'pca_path', pca_path, f'holds a dim {self.pca.dim}, k {self.pca.kernel_size} basis; '
                    f'kernel_code_channels is {kernel_code_channels}, kernel_size {kernel_size}')
        else:  # filled from the weights, or by SSRModel from the SVKR's basis
            self.pca = KernelPCA(kernel_size=kernel_size, dim=kernel_code_channels)
        spread = torch.ones(self.pca.dim)
        if 'kernel' in self.modalities and pca_path is not None:
            spread = kernel_code_spread(self.pca, scale, kernel_distribution)
        self.register_buffer('code_scale', spread)

    def set_kernel_pca(self, pca, code_scale=None):
        """Take the basis of ``pca`` (a ``KernelPCA`` of the same shape) and its code spread: ``code_scale`` (e.g.
        the NBSR's that used the same basis), else computed from ``scale`` / ``kernel_distribution``."""
        if pca.components.shape != self.pca.components.shape:
            raise OptionError('network_g:kernel_code_channels', self.pca.dim,
                              f'the kernel basis given is {tuple(pca.components.shape)}')
        with torch.no_grad():
            self.pca.components.copy_(pca.components)
            self.pca.mean.copy_(pca.mean)
            if code_scale is None:
                code_scale = kernel_code_spread(self.pca, self.config['scale'], self.config['kernel_distribution'])
            self.code_scale.copy_(code_scale)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        fill_missing_code_scale(state_dict, prefix, self.code_scale)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _build_encoders(self, lr_encoder, map_encoder, kernel_code_channels, build=True):
        """One encoder per modality, each giving one feature map per UNet level (none when the fusion method
        reads the raw conditions)."""
        levels = list(self.unet.config.block_out_channels)
        lr_encoder = dict(lr_encoder or {})
        map_encoder = dict(map_encoder or {})
        lr_encoder.setdefault('block_out_channels', levels)
        map_encoder.setdefault('block_out_channels', [max(c // 4, 8) for c in levels])
        for key, enc in (('lr_encoder', lr_encoder), ('map_encoder', map_encoder)):
            if len(enc['block_out_channels']) != len(levels):
                raise OptionError(f'{key}:block_out_channels', enc['block_out_channels'],
                                  f'needs one entry per UNet level ({len(levels)})')
        self.encoders = nn.ModuleDict()
        for m in (self.modalities if build else ()):
            if m == 'lr':
                self.encoders[m] = SSRLREncoder(in_channels=self.vae.config.latent_channels, **lr_encoder)
            else:
                in_ch = 1 if m == 'depth' else kernel_code_channels
                self.encoders[m] = SSRMapEncoder(in_channels=in_ch, **map_encoder)
        return lr_encoder, map_encoder

    def _build_fusion(self, fusion_cls, amf, fusion_opt, kernel_code_channels):
        """The fusion method (``ssr_arch/fusion_arch.py``), kept under its own attribute name (``amf`` for AMF,
        so its weights keep their names), and its injection points. Returns the resolved ``amf`` and
        ``fusion_opt`` for the config."""
        amf, fusion_opt = dict(amf or {}), dict(fusion_opt or {})
        if fusion_cls.option_name == 'amf' and fusion_opt:
            raise OptionError('fusion_opt', fusion_opt, 'AMF takes its options from the amf: block')
        options = amf if fusion_cls.option_name == 'amf' else fusion_opt
        feature_channels = {m: list(enc.out_channels) for m, enc in self.encoders.items()}
        input_channels = {'lr': self.vae.config.latent_channels, 'depth': 1, 'kernel': kernel_code_channels}
        try:
            method = fusion_cls(self.unet, self.modalities, self.inject, feature_channels, input_channels, **options)
        except TypeError as err:  # an option the method does not take
            key = 'amf' if fusion_cls.option_name == 'amf' else 'fusion_opt'
            raise OptionError(key, options, f'not options of fusion {fusion_cls.option_name}: {err}') from None
        self._fusion_attr = fusion_cls.attribute()
        setattr(self, self._fusion_attr, method)
        self._points = method.injection_points()
        self.point_levels = {name: level for name, _, _, level in self._points}
        if fusion_cls.option_name == 'amf':
            return method.resolved_options, fusion_opt
        return amf, method.resolved_options

    def _build_recon_heads(self, recon_heads, kernel_code_channels):
        self.recon_heads = nn.ModuleDict()
        if recon_heads:
            for m in self.modalities:
                deep = self.encoders[m].out_channels[-1]
                target_ch = {'lr': self.vae.config.latent_channels, 'depth': 1, 'kernel': kernel_code_channels}[m]
                self.recon_heads[m] = nn.Sequential(
                    nn.Conv2d(deep, deep, 3, 1, 1), nn.SiLU(), nn.Conv2d(deep, target_ch, 1))

    def _build_null_text(self, null_text, null_text_length, null_text_path):
        cross_dim = self.unet.config.cross_attention_dim
        if null_text_path is not None:
            if not osp.isfile(null_text_path):
                raise FileNotFoundError(f'null_text_path: no such file: {null_text_path}')
            emb = torch.load(null_text_path, map_location='cpu', weights_only=True).float()
            emb = emb.reshape(1, -1, cross_dim) if emb.dim() != 3 else emb[:1]
        else:
            emb = torch.zeros(1, int(null_text_length), cross_dim)
        if null_text == 'learned':
            self.null_text_embedding = nn.Parameter(emb)
        else:
            self.register_buffer('null_text_embedding', emb)

    # ------------------------------------------------------------------ save / load
    @property
    def fusion_method(self):
        """The fusion module (``AMFFusion``, ``SFTFusion``, ``ConcatFusion``...; ``ssr_arch/fusion_arch.py``)."""
        return getattr(self, self._fusion_attr)

    def injection_points(self):
        """``[(name, module, feature channels, UNet level), ...]`` where the fusion acts, in forward order."""
        return list(self._points)

    def parameter_counts(self):
        params = list(self.parameters())
        return _count(p for p in params if p.requires_grad), _count(params)

    def adapter_state_dict(self):
        """Everything but the base UNet and VAE (encoders, fusion layers, heads, null embedding)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(('unet.', 'vae.'))}

    def saved_state_dict(self, state=None):
        """``state`` (default: this network's) without the base parts referenced by ``pretrained_path``."""
        state = self.state_dict() if state is None else state
        skip = tuple(f'{p}.' for p in self.referenced_parts)
        return {k: v for k, v in state.items() if not (skip and k.startswith(skip))}

    def load_saved_state_dict(self, state, source='state dict'):
        """Load a ``saved_state_dict``: every key but those of the referenced base parts must be there."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        skip = tuple(f'{p}.' for p in self.referenced_parts)
        missing = [k for k in missing if not (skip and k.startswith(skip))]
        if missing or unexpected:
            raise KeyError(f'{source} does not fit this SSRUNet: missing {missing[:5]} ({len(missing)}), '
                           f'unexpected {unexpected[:5]} ({len(unexpected)})')

    def referenced_bytes(self):
        """The size of the weights of the referenced base parts (what ``include_referenced`` would add)."""
        return sum(p.numel() * p.element_size() for part in self.referenced_parts
                   for p in getattr(self, part).parameters())

    def save_pretrained(self, save_directory, include_referenced=False, **_):
        """``config.json`` and ``diffusion_pytorch_model.safetensors`` (diffusers' file names) in
        ``save_directory``. Base parts loaded from ``pretrained_path`` and frozen are referenced, not copied,
        unless ``include_referenced``; when nothing is referenced the config carries the UNet / VAE configs and no
        path (and the freeze flags), so the folder stands alone."""
        from safetensors.torch import save as safetensors_bytes
        os.makedirs(save_directory, exist_ok=True)
        config = {k: v for k, v in dict(self.config).items() if not k.startswith('_')}
        if config['pretrained_path'] is not None and (include_referenced or not self.referenced_parts):
            config.update(pretrained_path=None, unet=_public_config(self.unet.config),
                          vae=_public_config(self.vae.config), freeze_unet=self.frozen['unet'],
                          freeze_vae=self.frozen['vae'])
        config = dict(_class_name=type(self).__name__, **_jsonable(config))
        with atomic_write(osp.join(save_directory, self.config_name), 'w') as f:
            json.dump(config, f, indent=2, sort_keys=True)
        state = self.state_dict() if include_referenced else self.saved_state_dict()
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        with atomic_write(osp.join(save_directory, WEIGHTS_NAME)) as f:
            f.write(safetensors_bytes(tensors, metadata={'format': 'pt'}))

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """Load a folder written by ``save_pretrained`` (local paths only). ``overrides`` replace config keys."""
        from safetensors.torch import load_file
        cfg_path, weights = osp.join(path, cls.config_name), osp.join(path, WEIGHTS_NAME)
        for needed in (cfg_path, weights):
            if not osp.isfile(needed):
                raise FileNotFoundError(f'SSRUNet.from_pretrained: no {osp.basename(needed)} in {path}')
        with open(cfg_path) as f:
            config = json.load(f)
        config = {k: v for k, v in config.items() if not k.startswith('_')}
        config.update(overrides)
        net = cls(**config)
        net.load_saved_state_dict(load_file(weights), source=weights)
        return net

    # ------------------------------------------------------------------ VAE
    @property
    def vae_scale_factor(self):
        return 2**(len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self):
        """Output sizes must be multiples of this (VAE and UNet downsampling)."""
        return self.vae_scale_factor * 2**(len(self.unet.config.block_out_channels) - 1)

    def encode_image(self, img, sample=False, generator=None):
        """RGB [0, 1] image -> scaled latent (``scaling_factor`` from the VAE config)."""
        dist = self.vae.encode(img * 2 - 1).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.vae.config.scaling_factor

    def decode_latent(self, z):
        """Scaled latent -> RGB image in [0, 1]."""
        img = self.vae.decode(z / self.vae.config.scaling_factor).sample
        return ((img + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------ conditioning
    def encode_features(self, lr_latent=None, depth=None, kernel_code=None, size=None):
        """Encoder features per modality (list over UNet levels; ``[the input]`` when the fusion method reads
        the raw conditions). Depth / kernel maps are resized to the latent size (``size``, default: the LR
        latent's)."""
        inputs = {'lr': lr_latent, 'depth': depth, 'kernel': kernel_code}
        if size is None and lr_latent is not None:
            size = lr_latent.shape[-2:]
        feats = {}
        for m in self.modalities:
            x = inputs[m]
            if x is None:
                raise ValueError(f'SSRUNet: modality "{m}" is enabled but its input is missing')
            if m != 'lr' and size is not None and tuple(x.shape[-2:]) != tuple(size):
                # in float32: antialiased bilinear has no half-precision kernel everywhere (bf16 on CPU, torch 2.14)
                x = F.interpolate(x.float(), size=tuple(size), mode='bilinear', align_corners=False,
                                  antialias=True).to(x.dtype)
            feats[m] = self.encoders[m](x) if m in self.encoders else [x]
        return feats

    def modulations(self, feats):
        """Per injection point, the fusion method's list ``[(tag, tensor, ...), ...]`` (AMF: ``(modality, alpha,
        beta)`` in application order)."""
        return self.fusion_method.conditions(feats)

    def fold_modulations(self, conds):
        """The conditions in the fusion method's inference form: for AMF each injection point's layers composed
        into one per-pixel affine map where they can be (``AMFFusion.fold``: ``[(FOLDED, gain, shift)]``, the
        same prediction up to rounding in two elementwise passes); other methods as they are."""
        return self.fusion_method.fold(conds)

    def encode_conditions(self, lr_latent=None, depth=None, kernel_code=None, size=None, return_features=False,
                          fold=None):
        """Everything that depends on the conditions only: computed once per image when sampling.

        ``fold`` (default: in eval mode) composes each point's AMFs into one affine map
        (:meth:`fold_modulations`); training keeps them apart (BatchNorm then uses the batch's statistics)."""
        feats = self.encode_features(lr_latent, depth, kernel_code, size)
        conds = self.modulations(feats)
        if (not self.training) if fold is None else fold:
            conds = self.fold_modulations(conds)
        return (conds, feats) if return_features else conds

    @property
    def has_pca(self):
        return bool(self.pca.components.abs().sum() > 0)

    def kernel_code(self, kernel_map):
        """Kernel map B x k^2 x h x w -> standardised PCA code B x L x h x w (divided by ``code_scale``)."""
        if kernel_map.shape[1] != self.pca.kernel_size**2:
            raise ValueError(f'SSRUNet: kernel map has {kernel_map.shape[1]} channels, expected '
                             f'{self.pca.kernel_size**2} (kernel_size {self.pca.kernel_size})')
        code = self.pca.encode(kernel_map)
        return code / self.code_scale.to(code.dtype).view(1, -1, 1, 1)

    def reconstruct(self, feats):
        """C_i heads: each modality's deepest feature -> its own input, at that feature's size."""
        return {m: self.recon_heads[m](feats[m][-1]) for m in self.modalities if m in self.recon_heads}

    def _fusion_hook(self, name, module, args, output):
        """Forward hook of injection point ``name``. Registered as a bound method (through ``partial``), not a
        closure: ``copy.deepcopy`` rebinds it to the copy (an EMA copy, a half-precision copy), where a closure
        would keep reading the original network's conditions and the copy would silently run unconditioned."""
        conds = self._active
        if conds is None or name not in conds:
            return output
        fuse = self.fusion_method.fuse
        if isinstance(output, tuple):  # down block: (hidden, res_samples); res_samples[-1] is hidden
            hidden, states = output[0], output[1]
            if states[-1] is not hidden:
                raise RuntimeError(f'SSRUNet: unsupported down block {type(module).__name__} at {name}')
            fused = fuse(name, hidden, conds[name])
            return (fused, states[:-1] + (fused, )) + tuple(output[2:])
        return fuse(name, output, conds[name])

    def null_embedding(self, batch, dtype=None):
        emb = self.null_text_embedding.expand(batch, -1, -1)
        return emb.to(dtype) if dtype is not None else emb

    def forward(self,
                sample,
                timestep,
                lr_latent=None,
                depth=None,
                kernel_code=None,
                conditions=None,
                return_recon=False):
        """Noise prediction. Pass either the modality inputs or ``conditions`` from ``encode_conditions``;
        ``conditions={}`` runs the bare UNet (same null text embedding). ``return_recon=True`` returns
        ``(prediction, reconstructions of the C_i heads)`` from the same call (one DDP forward)."""
        feats = None
        if conditions is None:
            conditions, feats = self.encode_conditions(
                lr_latent, depth, kernel_code, size=sample.shape[-2:], return_features=True)
        self._active = conditions
        try:
            out = self.unet(
                sample,
                timestep,
                encoder_hidden_states=self.null_embedding(sample.shape[0], sample.dtype),
                return_dict=False)[0]
        finally:
            self._active = None
        if return_recon:
            return out, (self.reconstruct(feats) if feats is not None else {})
        return out
