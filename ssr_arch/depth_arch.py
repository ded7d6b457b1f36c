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

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY
from ssr_data.depth_prior import depth_prior, minmax_normalise  # noqa: F401  (the prior lives below the archs)
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
    net = transformers.AutoModelForDepthEstimation.from_pretrained(model_path, local_files_only=True)
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

    def _net_size(self, hh, ww):
        m, s = self.multiple, self.input_size
        if self.keep_aspect_ratio:
            f = s / min(hh, ww)
            th, tw = hh * f, ww * f
        else:
            th = tw = s
        return max(m, int(math.ceil(th / m - 0.5)) * m), max(m, int(math.ceil(tw / m - 0.5)) * m)

    @torch.no_grad()
    def forward(self, img):
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f'MonocularDepth expects B×3×H×W RGB in [0, 1], got {tuple(img.shape)}')
        hh, ww = img.shape[-2:]
        if self.backend == 'prior':
            _log_prior_once()
            return depth_prior(img, work_size=self.input_size).to(img.dtype)
        param = next(self.net.parameters())
        x = F.interpolate(img.to(param.dtype), size=self._net_size(hh, ww), mode='bicubic', align_corners=False)
        x = (x.clamp(0, 1) - self.img_mean.to(x.dtype)) / self.img_std.to(x.dtype)
        pred = self.net(pixel_values=x).predicted_depth  # B×h'×w' relative inverse depth
        if pred.dim() == 3:
            pred = pred.unsqueeze(1)
        pred = F.interpolate(pred.float(), size=(hh, ww), mode='bicubic', align_corners=False)
        return minmax_normalise(pred).to(img.dtype)
