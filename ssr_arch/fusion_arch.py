"""How the encoded conditions enter the diffusion UNet: interchangeable fusion methods (``SSRUNet: fusion``).

A fusion method is one class registered in :data:`FUSION_REGISTRY` (discovered, like every registered part,
by importing the ``*_arch.py`` files of this package) with its option name in ``option_name``:

* ``amf`` (default, the paper's Eq. 3; ``ssr_arch/amf_arch.py``): one AMF layer per injection point and
  modality, the modalities one after another, each normalising the feature (batch norm) before modulating it;
* ``sft`` (``ssr_arch/sft_arch.py``): one spatial feature transform per injection point on the concatenated
  features of all modalities, no normalisation (StableSR's modulation);
* ``concat`` (``ssr_arch/concat_fusion_arch.py``): the raw conditions concatenated to the noisy latent at the
  UNet input (SR3 / ResShift), as a zero-initialised extension of the input convolution.

A method is an ``nn.ModuleDict`` of its layers; SSRUNet keeps it under the attribute ``module_name`` (so
AMF's weights keep their names, ``amf.<point>_<modality>.*``) and hooks ``fuse`` onto the output of every
module of ``injection_points``. The contract (docs/interfaces.md, "Where to add a fusion method"):

* ``__init__(unet, modalities, inject, feature_channels, input_channels, **options)``: ``feature_channels``
  ``{modality: [channels per UNet level]}`` of the condition encoders (``uses_encoders``), ``input_channels``
  ``{modality: channels}`` of the raw inputs at latent size; ``options`` are the method's own
  (``network_g: fusion_opt``; for ``amf`` the ``amf:`` block). ``resolved_options`` are written to the config.
* ``conditions(feats)``: everything that depends on the conditions only (computed once per image when
  sampling): ``{point name: [(tag, tensor, ...), ...]}``. ``feats[m]`` is modality ``m``'s list of encoder
  features per level, or ``[raw input at latent size]`` when ``uses_encoders`` is False.
* ``fold(conds)``: the same conditions in a cheaper form for inference (eval mode), or unchanged.
* ``fuse(name, hidden, point_conds)``: the point's output with the conditions applied.

Every method starts as the identity (zero-initialised output layers), so a frozen pretrained UNet predicts
exactly as before at step 0, and touches no base weight.
"""
import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import Registry

from ssr_utils.errors import OptionError

FUSION_REGISTRY = Registry('fusion')
BLOCK_GROUPS = ('down', 'mid', 'up')


def resize_to(feat, size):
    """Bilinearly resize ``feat`` to spatial ``size`` (no-op when it already matches)."""
    if tuple(feat.shape[-2:]) == tuple(size):
        return feat
    return F.interpolate(feat, size=tuple(size), mode='bilinear', align_corners=False)


def apply_affine(hidden, gain, shift):
    """``h + (h * gain + shift)`` with ``gain`` / ``shift`` resized to ``h`` (a folded AMF point, an SFT): two
    elementwise passes."""
    gain, shift = resize_to(gain, hidden.shape[-2:]), resize_to(shift, hidden.shape[-2:])
    return torch.addcmul(shift.to(hidden.dtype), hidden, gain.to(hidden.dtype)).add_(hidden)


def fusion_names():
    """The option names of the registered fusion methods."""
    return sorted(cls.option_name for _, cls in FUSION_REGISTRY)


def fusion_class(name):
    """The registered fusion class whose ``option_name`` is ``name`` (``network_g: fusion``)."""
    for _, cls in FUSION_REGISTRY:
        if cls.option_name == name:
            return cls
    raise OptionError('fusion', name, f'expected one of {fusion_names()}')


def block_output_points(unet, inject):
    """``[(name, module, feature channels, UNet level of its output)]``: the outputs of every down block
    (``down0``...), of the mid block (``mid``) and of every up block (``up0``...) of the groups in ``inject``,
    in forward order. A down block's output level is the next one when it downsamples."""
    levels = list(unet.config.block_out_channels)
    n = len(levels)
    points = []
    if 'down' in inject:
        for i, block in enumerate(unet.down_blocks):
            level = i + 1 if getattr(block, 'downsamplers', None) is not None else i
            points.append((f'down{i}', block, levels[i], level))
    if 'mid' in inject:
        if unet.mid_block is None:
            raise OptionError('inject', list(inject), 'the UNet has no mid block')
        points.append(('mid', unet.mid_block, levels[-1], n - 1))
    if 'up' in inject:
        rev = levels[::-1]
        for j, block in enumerate(unet.up_blocks):
            level = n - 1 - j - (1 if getattr(block, 'upsamplers', None) is not None else 0)
            points.append((f'up{j}', block, rev[j], level))
    return points


class ConditionFusion(nn.ModuleDict):
    """Base of the fusion methods (module docstring). Not registered itself."""
    option_name = None
    module_name = None  # attribute of SSRUNet that holds the method (its state-dict prefix); default option_name
    uses_encoders = True  # reads the condition encoders' per-level features (else the raw inputs)
    foldable = False  # conditions() has a cheaper inference form (fold)

    def __init__(self, unet, modalities, inject):
        super().__init__()
        self.modalities = list(modalities)
        self.points = self.build_points(unet, inject)
        self.resolved_options = {}

    @classmethod
    def attribute(cls):
        return cls.module_name or cls.option_name

    def build_points(self, unet, inject):
        """Where the method acts (default: the block outputs of ``inject``)."""
        return block_output_points(unet, inject)

    def injection_points(self):
        """``[(name, module, feature channels, UNet level), ...]`` where the method acts, in forward order."""
        return list(self.points)

    def conditions(self, feats):
        raise NotImplementedError

    def fold(self, conds):
        return conds

    def fuse(self, name, hidden, point_conds):
        raise NotImplementedError
