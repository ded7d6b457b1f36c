"""LPIPS, MUSIQ and CLIP-IQA through pyiqa (``type: calculate_pyiqa``, ``metric: lpips|musiq|clipiqa``),
registered in BasicSR's METRIC_REGISTRY (``ssr_utils/*_metrics.py`` modules are imported by
:func:`ssr_utils.registry_scan.import_losses_and_metrics`). Weights come from disk only: a metric that cannot
run raises :class:`MetricUnavailable` with the reason (``ssr_utils.evaluation.MetricSuite`` reports it as
n/a)."""
import importlib.util
import os
import os.path as osp

import numpy as np
import torch

from basicsr.utils.registry import METRIC_REGISTRY

PYIQA_METRICS = {'lpips': 'FR', 'musiq': 'NR', 'clipiqa': 'NR'}
_PYIQA_CACHE = {}


class MetricUnavailable(RuntimeError):
    """A metric that cannot run here; the message says why."""


def pyiqa_cache_dirs():
    """Where pyiqa keeps downloaded weights (its default, and the torch hub checkpoints folder)."""
    dirs = []
    try:
        from pyiqa.utils.download_util import DEFAULT_CACHE_DIR
        dirs.append(DEFAULT_CACHE_DIR)
    except Exception:  # older/newer pyiqa: fall back to the documented default
        dirs.append(osp.join(osp.expanduser('~'), '.cache', 'torch', 'hub', 'pyiqa'))
    dirs.append(osp.join(torch.hub.get_dir(), 'checkpoints'))
    return dirs


def _has_cached_weights(metric):
    for d in pyiqa_cache_dirs():
        if osp.isdir(d) and any(metric.replace('_', '').lower() in f.replace('_', '').lower() for f in os.listdir(d)):
            return True
    return False


def load_pyiqa_metric(metric, device='cpu', pretrained_model_path=None, **kwargs):
    """A pyiqa metric built from LOCAL weights only; raises MetricUnavailable with the reason."""
    metric = metric.lower()
    if metric not in PYIQA_METRICS:
        raise MetricUnavailable(f'unknown pyiqa metric {metric!r} (known here: {", ".join(PYIQA_METRICS)})')
    key = (metric, str(device), pretrained_model_path)
    if key in _PYIQA_CACHE:
        return _PYIQA_CACHE[key]
    if importlib.util.find_spec('pyiqa') is None:
        raise MetricUnavailable('pyiqa is not installed (pip install pyiqa, or the [iqa] extra)')
    if pretrained_model_path is not None and not osp.isfile(pretrained_model_path):
        raise MetricUnavailable(f'pretrained_model_path {pretrained_model_path} does not exist')
    if pretrained_model_path is None and not _has_cached_weights(metric):
        raise MetricUnavailable(f'no {metric} weights on disk (set pretrained_model_path to a local file, or put '
                                f'them in {pyiqa_cache_dirs()[0]}); nothing is downloaded at run time')
    # weights must come from disk: make any hub access fail instead of downloading
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    try:
        import pyiqa
        extra = dict(kwargs)
        if pretrained_model_path is not None:
            extra['pretrained_model_path'] = pretrained_model_path
        net = pyiqa.create_metric(metric, device=torch.device(device), as_loss=False, **extra)
    except Exception as err:
        raise MetricUnavailable(f'pyiqa could not build {metric} from local weights: {type(err).__name__}: {err}') \
            from None
    _PYIQA_CACHE[key] = net
    return net


def _bgr_uint8_to_tensor(img):
    rgb = img[..., ::-1].astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]


@METRIC_REGISTRY.register()
def calculate_pyiqa(img, img2=None, metric='lpips', crop_border=0, device='cpu', pretrained_model_path=None,
                    **kwargs):
    """LPIPS (full reference, lower is better), MUSIQ / CLIP-IQA (no reference) through pyiqa.

    ``img`` / ``img2``: H×W×3 BGR uint8 (BasicSR's convention). Raises MetricUnavailable when it cannot run.
    """
    kwargs.pop('test_y_channel', None)
    kwargs.pop('better', None)
    kwargs.pop('input_order', None)
    net = load_pyiqa_metric(metric, device, pretrained_model_path, **kwargs)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        img2 = None if img2 is None else img2[crop_border:-crop_border, crop_border:-crop_border]
    x = _bgr_uint8_to_tensor(img).to(device)
    with torch.no_grad():
        if PYIQA_METRICS[metric.lower()] == 'FR':
            if img2 is None:
                raise MetricUnavailable(f'{metric} needs a ground truth image')
            score = net(x, _bgr_uint8_to_tensor(img2).to(device))
        else:
            score = net(x)
    return float(score.item())
