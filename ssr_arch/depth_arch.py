"""Monocular depth (the paper's DE) behind one interface: RGB [0, 1] in, normalised inverse depth out.

Backends:
- ``prior`` (default, weight-free): a deterministic heuristic for users without depth weights; see
  :func:`depth_prior`. Its use is logged once per process.
- ``dpt``: DPT / MiDaS v3.x (``DPTForDepthEstimation``) through ``transformers``.
- ``depth_anything``: Depth Anything (v1/v2) through ``transformers``.
Network weights load from a LOCAL directory (``model_path``, a ``save_pretrained`` folder); nothing is
fetched from a hub. Every backend predicts relative inverse depth, min-max normalised per image to
[0, 1] with 1 = near (the MiDaS/DPT convention), at the input's H×W. No gradients; always frozen.
"""
import json
import math
import os.path as osp
from copy import deepcopy

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY
from ssr_data.depth_prior import depth_prior, minmax_normalise  # noqa: F401  (the prior lives below the archs)
from ssr_utils.atomic_file import atomic_directory
from ssr_utils.compat import own_weights
from ssr_utils.errors import OptionError
from ssr_utils.extras import require

BACKENDS = ('prior', 'dpt', 'depth_anything')
# (input size, multiple, mean, std, keep aspect ratio) when the folder has no preprocessor_config.json;
# transformers' ViT DPT needs a square input (its reassemble stage assumes a square patch grid)
_BACKEND_DEFAULTS = {
    'dpt': (384, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), False),
    'depth_anything': (518, 14, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True),
}
_PRIOR_LOGGED = False
PRIOR_SOURCE = 'prior'
PRIOR_NOTE = ('depth: the weight-free PRIOR (backend: prior; vertical position + local sharpness), not a depth '
              'network')


def network_input_size(hh, ww, input_size, multiple, keep_aspect_ratio):
    """(H', W') a depth network sees for an H×W image: a square ``input_size``, or the shorter side at
    ``input_size`` keeping the aspect ratio; each side rounded to a multiple of ``multiple`` (the
    ``ensure_multiple_of`` of transformers' DPT image processor)."""
    m, s = int(multiple), int(input_size)
    if keep_aspect_ratio:
        f = s / min(hh, ww)
        th, tw = hh * f, ww * f
    else:
        th = tw = s
    return max(m, int(math.ceil(th / m - 0.5)) * m), max(m, int(math.ceil(tw / m - 0.5)) * m)


def to_network_input(img, size, mean, std):
    """RGB [0, 1] B×3×H×W -> the network's ``pixel_values``: resized to ``size`` (bicubic with antialiasing,
    i.e. PIL's / torchvision's resize as transformers' image processors do it) and normalised."""
    x = img
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode='bicubic', align_corners=False, antialias=True)
    return (x.clamp(0, 1) - mean.to(x)) / std.to(x)


def predicted_inverse_depth(net, pixel_values):
    """B×1×h×w relative inverse depth of a transformers depth model (its ``predicted_depth``)."""
    pred = net(pixel_values=pixel_values).predicted_depth
    return pred.unsqueeze(1) if pred.dim() == 3 else pred


def to_image_size(pred, size):
    """A network's prediction back at the image's H×W (bicubic, as transformers'
    ``post_process_depth_estimation``)."""
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred.float()
    return F.interpolate(pred.float(), size=tuple(size), mode='bicubic', align_corners=False)


def _log_prior_once():
    global _PRIOR_LOGGED
    if not _PRIOR_LOGGED:
        _PRIOR_LOGGED = True
        get_root_logger().warning(
            'MonocularDepth: using the weight-free depth PRIOR (vertical position + local sharpness), '
            'not a depth network. Give backend: dpt or depth_anything and a local model_path for real depth.')


def _load_depth_network(backend, model_path):
    if model_path is None:
        raise OptionError('model_path', model_path, f'backend {backend!r} needs a local model directory')
    if not osp.isdir(model_path):
        raise OptionError('model_path', model_path, 'not an existing local directory (weights are never '
                          'downloaded at run time; save them with save_pretrained first)')
    if not osp.isfile(osp.join(model_path, 'config.json')):
        raise OptionError('model_path', model_path, 'no config.json in the folder (not a save_pretrained folder)')
    transformers = require('transformers', f'the {backend!r} depth backend')
    # own_weights: the loaded network computes exactly as the one that was saved (ssr_utils/compat.py, fix 9)
    net = own_weights(transformers.AutoModelForDepthEstimation.from_pretrained(model_path, local_files_only=True))
    model_type = getattr(net.config, 'model_type', '')
    expected = {'dpt': ('dpt', ), 'depth_anything': ('depth_anything', )}[backend]
    if model_type not in expected:
        raise OptionError('backend', backend, f'the model in {model_path} is a {model_type!r} model; '
                          f'use backend {"depth_anything" if model_type == "depth_anything" else "dpt"}')
    return net


def _preprocessor_stats(model_path, backend):
    size, multiple, mean, std, keep = _BACKEND_DEFAULTS[backend]
    path = osp.join(model_path, 'preprocessor_config.json')
    if osp.isfile(path):
        with open(path) as f:
            cfg = json.load(f)
        mean = tuple(cfg.get('image_mean', mean))
        std = tuple(cfg.get('image_std', std))
        multiple = int(cfg.get('ensure_multiple_of', multiple))
        keep = bool(cfg.get('keep_aspect_ratio', keep))
        sz = cfg.get('size')
        if isinstance(sz, dict):
            sz = sz.get('height', sz.get('shortest_edge'))
        if isinstance(sz, int):
            size = sz
    return size, multiple, mean, std, keep


@ARCH_REGISTRY.register()
class MonocularDepth(nn.Module):
    """Frozen monocular depth estimator: ``forward(img B×3×H×W RGB [0,1]) -> B×1×H×W`` in [0, 1], 1 = near.

    Args:
        backend (str): ``prior`` (default), ``dpt`` or ``depth_anything``.
        model_path (str): local ``save_pretrained`` directory of the network (dpt / depth_anything).
        input_size (int): the network's input size (shorter side; default from the folder's
            preprocessor_config.json, else 384 for DPT and 518 for Depth Anything). For ``prior``: the
            working resolution of the long side (default 256).
        keep_aspect_ratio (bool): resize the shorter side to ``input_size`` (True) or to a square
            (default from the folder's preprocessor config, else False for DPT, True for Depth Anything).
    """

    def __init__(self, backend='prior', model_path=None, input_size=None, keep_aspect_ratio=None):
        super().__init__()
        if backend not in BACKENDS:
            raise OptionError('backend', backend, f'expected one of {", ".join(BACKENDS)}')
        self.backend = backend
        self.model_path = model_path if backend != 'prior' else None
        self.keep_aspect_ratio = keep_aspect_ratio
        self.net = None
        if backend == 'prior':
            self.input_size = int(input_size or 256)
        else:
            self.net = _load_depth_network(backend, model_path)
            size, self.multiple, mean, std, keep = _preprocessor_stats(model_path, backend)
            self.input_size = int(input_size or size)
            self.keep_aspect_ratio = keep if keep_aspect_ratio is None else bool(keep_aspect_ratio)
            self.register_buffer('img_mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
            self.register_buffer('img_std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
            for p in self.net.parameters():
                p.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        # frozen: dropout / norm statistics never switch to training behaviour
        return super().train(False)

    @property
    def source(self):
        """What the depth comes from, for logs and tables: ``prior`` or ``<backend> (<model_path>)``."""
        return PRIOR_SOURCE if self.backend == 'prior' else f'{self.backend} ({self.model_path})'

    @torch.no_grad()
    def forward(self, img):
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f'MonocularDepth expects B×3×H×W RGB in [0, 1], got {tuple(img.shape)}')
        hh, ww = img.shape[-2:]
        if self.backend == 'prior':
            _log_prior_once()
            return depth_prior(img, work_size=self.input_size).to(img.dtype)
        param = next(self.net.parameters())
        size = network_input_size(hh, ww, self.input_size, self.multiple, self.keep_aspect_ratio)
        x = to_network_input(img.to(param.dtype), size, self.img_mean, self.img_std)
        pred = predicted_inverse_depth(self.net, x)
        return minmax_normalise(to_image_size(pred, (hh, ww))).to(img.dtype)


def depth_sources(*modules):
    """The distinct :attr:`MonocularDepth.source` labels of every MonocularDepth inside ``modules`` (in order;
    None entries are skipped)."""
    found = []
    for module in modules:
        if module is None:
            continue
        for sub in module.modules():
            if isinstance(sub, MonocularDepth) and sub.source not in found:
                found.append(sub.source)
    return found


def uses_prior(sources):
    """True when one of ``sources`` (labels as :func:`depth_sources` gives them) is the weight-free prior."""
    return any(s == PRIOR_SOURCE or str(s).startswith(PRIOR_SOURCE + ' ') for s in sources)


def depth_note(sources):
    """One line for log headers and result tables saying where the depth maps came from; it names the
    weight-free prior loudly (:data:`PRIOR_NOTE`). ``''`` when there are no sources."""
    sources = list(dict.fromkeys(s for s in sources if s))  # each source once, in order
    if not sources:
        return ''
    if uses_prior(sources):
        others = [s for s in sources if not uses_prior([s])]
        return PRIOR_NOTE + (f' (and {", ".join(others)})' if others else '')
    return 'depth: ' + ', '.join(sources)


# ------------------------------------------------------------------------------------------------------------
# a transformers depth model as a trainable BasicSR network
# ------------------------------------------------------------------------------------------------------------
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _config_classes(transformers, backend):
    if backend == 'dpt':
        return transformers.DPTConfig, transformers.DPTForDepthEstimation
    return transformers.DepthAnythingConfig, transformers.DepthAnythingForDepthEstimation


def _patch_size(cfg):
    backbone = getattr(cfg, 'backbone_config', None)
    if getattr(cfg, 'model_type', '') == 'depth_anything':
        return int(cfg.patch_size)
    if backbone is not None and not getattr(cfg, 'is_hybrid', False):
        return int(backbone.patch_size) * (4 if getattr(backbone, 'model_type', '') == 'swinv2' else 1)
    return int(cfg.patch_size)  # ViT patches; for DPT-hybrid the BiT stride (16)


def _image_size(cfg):
    backbone = getattr(cfg, 'backbone_config', None)
    size = getattr(cfg, 'image_size', None)
    if (size is None or getattr(cfg, 'model_type', '') == 'depth_anything') and backbone is not None:
        size = getattr(backbone, 'image_size', size)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


@ARCH_REGISTRY.register()
class TransformersDepthNet(nn.Module):
    """A ``transformers`` depth model (DPT / MiDaS v3.x or Depth Anything) as a trainable network.

    ``forward(img B×3×H×W RGB [0, 1]) -> B×1×h×w`` relative inverse depth (1/Z up to scale and shift, large =
    near) at the network's output size, after exactly the preprocessing :class:`MonocularDepth` applies
    (resize to the network size, normalise). In training mode :attr:`head_preactivation` holds the input of
    the head's final ReLU of the last forward pass (DPT and Depth Anything end in one): a pixel whose input is
    negative outputs 0 and gets no gradient, so a training loss can keep that input positive. :meth:`predict` gives what ``MonocularDepth`` gives (at H×W,
    min-max normalised) and :meth:`save_pretrained` writes a folder that ``MonocularDepth(backend,
    model_path=<folder>)`` loads like a downloaded MiDaS / Depth Anything model.

    Args:
        backend (str): ``dpt`` (``DPTForDepthEstimation``) or ``depth_anything``.
        config (dict): keyword arguments of ``DPTConfig`` / ``DepthAnythingConfig`` (a backbone as a dict
            with its ``model_type``, e.g. ``backbone_config: {model_type: dinov2, ...}``): a new network with
            random weights.
        model_path (str): instead of ``config``, start from a local ``save_pretrained`` folder (e.g. to
            fine-tune a downloaded MiDaS model).
        input_size (int): the network's input size (square for DPT, shorter side with
            ``keep_aspect_ratio``); default: the folder's preprocessor config, else the config's image size.
        ensure_multiple_of (int): default the patch size (the network's total stride for hybrid / Swin).
        keep_aspect_ratio (bool): default False (transformers' ViT DPT needs a square patch grid).
        image_mean, image_std: normalisation; default (0.5, 0.5, 0.5) for DPT (MiDaS), ImageNet's for Depth
            Anything.
    """

    def __init__(self, backend='dpt', config=None, model_path=None, input_size=None, ensure_multiple_of=None,
                 keep_aspect_ratio=None, image_mean=None, image_std=None):
        super().__init__()
        transformers = require('transformers', 'TransformersDepthNet')
        if backend not in BACKENDS[1:]:
            raise OptionError('backend', backend, f'expected one of {", ".join(BACKENDS[1:])}')
        if (config is None) == (model_path is None):
            raise OptionError('config', config, 'give either config (a new network) or model_path (a '
                              'save_pretrained folder to start from), not both')
        self.backend = backend
        if model_path is not None:
            self.model = _load_depth_network(backend, model_path)
            size, multiple, mean, std, keep = _preprocessor_stats(model_path, backend)
        else:
            if not isinstance(config, dict):
                raise OptionError('config', config, 'expected a dict of transformers config arguments')
            config_cls, model_cls = _config_classes(transformers, backend)
            try:
                cfg = config_cls(**deepcopy(config))
                self.model = model_cls(cfg)
            except Exception as err:  # transformers' strict configs raise their own validation errors
                raise OptionError('config', config, f'not a valid {config_cls.__name__}: {err}') from None
            self._init_new_network()
            size, multiple = _image_size(cfg), _patch_size(cfg)
            mean, std = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if backend == 'dpt' else (_IMAGENET_MEAN, _IMAGENET_STD)
            keep = False
        self.input_size = int(input_size or size)
        self.multiple = int(ensure_multiple_of or multiple)
        self.keep_aspect_ratio = bool(keep if keep_aspect_ratio is None else keep_aspect_ratio)
        mean = tuple(float(v) for v in (image_mean or mean))
        std = tuple(float(v) for v in (image_std or std))
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise OptionError('image_mean / image_std', (mean, std), 'expected three means and three positive stds')
        self.register_buffer('img_mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('img_std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        # the input of the head's final ReLU, kept during training (see head_preactivation)
        self.head_preactivation = None
        self._final_conv().register_forward_hook(self._keep_preactivation)

    def _final_conv(self):
        return [m for m in self.model.head.modules() if isinstance(m, nn.Conv2d)][-1]

    def _keep_preactivation(self, module, inputs, output):
        self.head_preactivation = output if self.training else None

    def _init_new_network(self):
        """Initialisation of a network trained from scratch. transformers initialises DPT / Depth Anything
        convolutions N(0, 0.02), meant to be overwritten by pretrained weights: from scratch the signal then
        shrinks through the random decoder to ~1e-8 at the output, and the first steps of a scale-invariant
        loss (which divides by the prediction's spread) drive the head's final ReLU dead for good. So the
        convolutions get PyTorch's default (Kaiming-uniform) initialisation and the last convolution of the
        head a bias of 1, which keeps that ReLU active everywhere at the start."""
        for m in self.model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.reset_parameters()
        nn.init.constant_(self._final_conv().bias, 1.0)

    def network_size(self, hh, ww):
        return network_input_size(hh, ww, self.input_size, self.multiple, self.keep_aspect_ratio)

    def forward(self, img):
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f'TransformersDepthNet expects B×3×H×W RGB in [0, 1], got {tuple(img.shape)}')
        x = to_network_input(img, self.network_size(*img.shape[-2:]), self.img_mean, self.img_std)
        return predicted_inverse_depth(self.model, x)

    @torch.no_grad()
    def predict(self, img):
        """What ``MonocularDepth`` loading this network's folder returns: B×1×H×W in [0, 1], 1 = near."""
        param = next(self.model.parameters())
        pred = self(img.to(param.dtype))
        return minmax_normalise(to_image_size(pred, img.shape[-2:])).to(img.dtype)

    def preprocessor_config(self):
        """transformers' ``DPTImageProcessor`` with this network's preprocessing (what ``MonocularDepth`` and
        ``AutoImageProcessor`` read from ``preprocessor_config.json``)."""
        transformers = require('transformers', 'TransformersDepthNet')
        size = {'height': self.input_size, 'width': self.input_size}
        return transformers.DPTImageProcessor(
            do_resize=True, size=size, keep_aspect_ratio=self.keep_aspect_ratio,
            ensure_multiple_of=self.multiple, resample=3, do_rescale=True, rescale_factor=1 / 255.0,
            do_normalize=True, image_mean=self.img_mean.flatten().tolist(), image_std=self.img_std.flatten().tolist(),
            do_pad=False)

    def save_pretrained(self, folder):
        """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` into ``folder`` (replacing
        it): a reader sees the old complete folder or the new complete one (``atomic_directory``)."""
        folder = osp.abspath(folder)
        with atomic_directory(folder, overwrite=True) as tmp:
            self.model.save_pretrained(tmp)
            self.preprocessor_config().save_pretrained(tmp)
        return folder
