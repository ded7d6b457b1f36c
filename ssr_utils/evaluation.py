"""Benchmark metrics (paper Table 1), result tables and side-by-side crops.

* PSNR / SSIM: BasicSR's ``calculate_psnr`` / ``calculate_ssim`` (options as in BasicSR: Y channel,
  ``crop_border = scale``).
* NIQE: BasicSR's ``calculate_niqe`` (its parameters ship with BasicSR).
* LPIPS, MUSIQ, CLIP-IQA: through ``pyiqa`` (``type: calculate_pyiqa``, ``metric: lpips|musiq|clipiqa``)
  only when pyiqa is installed and the weights are on disk (``pretrained_model_path`` in the metric's
  options, or already in pyiqa's cache). Otherwise the metric is reported once, with the reason, as not
  run, and its column reads ``n/a`` -- never a silent zero.
* Kernel PSNR over every pixel of the kernel map (``calculate_kernel_psnr``) where ground-truth kernels
  exist.

``MetricSuite`` scores one image for one method; ``ResultTable`` collects rows and writes
``<dataset>_metrics.csv`` (every image, every method) and ``<dataset>_metrics.md`` (means per method).
"""
import csv
import math
import os
import os.path as osp
from collections import OrderedDict
from copy import deepcopy

import cv2
import numpy as np

from basicsr.utils import get_root_logger

from ssr_utils.atomic_file import atomic_write
from ssr_utils.kernel_metrics import KERNEL_METRICS
from ssr_utils.pyiqa_metrics import MetricUnavailable, calculate_pyiqa, load_pyiqa_metric
from ssr_utils.registry_scan import import_losses_and_metrics

NO_REFERENCE = {'calculate_niqe'}
NIQE_BLOCK = 96  # BasicSR's NIQE block size


class MetricSuite:
    """The ``val.metrics`` block of an option file, applied per image and method.

    ``score(img, img2=None, kernel=None, kernel2=None)`` -> OrderedDict name -> float or None (None: not
    applicable or not available; the reason is logged once per metric)."""

    def __init__(self, metrics_opt, device='cpu', logger=None):
        import_losses_and_metrics()  # the SSR metrics the block may name
        self.metrics = OrderedDict((name, dict(opt)) for name, opt in (metrics_opt or {}).items())
        self.device = device
        self.logger = logger or get_root_logger()
        self.unavailable = OrderedDict()
        self.failed = OrderedDict()
        for name, opt in self.metrics.items():
            if opt.get('type') == 'calculate_pyiqa':
                try:
                    load_pyiqa_metric(opt.get('metric', name), device, opt.get('pretrained_model_path'),
                                      **{k: v for k, v in opt.items()
                                         if k not in ('type', 'metric', 'pretrained_model_path', 'crop_border',
                                                      'test_y_channel', 'better', 'device')})
                except MetricUnavailable as err:
                    self._mark_unavailable(name, str(err))

    def _mark_unavailable(self, name, reason):
        if name not in self.unavailable:
            self.unavailable[name] = reason
            self.logger.warning(f'Metric {name} cannot run: {reason}. Reported as n/a.')

    @property
    def names(self):
        return list(self.metrics)

    def is_kernel_metric(self, name):
        return self.metrics[name].get('type') in KERNEL_METRICS

    def score(self, img=None, img2=None, kernel=None, kernel2=None):
        from basicsr.metrics import calculate_metric
        out = OrderedDict()
        for name, opt in self.metrics.items():
            out[name] = None
            if name in self.unavailable:
                continue
            mtype = opt.get('type')
            try:
                if mtype in KERNEL_METRICS:
                    if kernel is not None and kernel2 is not None:
                        out[name] = float(calculate_metric({'kernel': kernel, 'kernel2': kernel2}, deepcopy(opt)))
                elif img is None:
                    continue
                elif mtype in NO_REFERENCE:
                    crop = int(opt.get('crop_border', 0))
                    h, w = img.shape[0] - 2 * crop, img.shape[1] - 2 * crop
                    if mtype == 'calculate_niqe' and (h // NIQE_BLOCK) * (w // NIQE_BLOCK) < 2:
                        # one 96×96 block gives a degenerate covariance (NaN / SVD failure), not a score
                        self._mark_failed(name, f'image smaller than two {NIQE_BLOCK}×{NIQE_BLOCK} NIQE blocks '
                                          f'after cropping ({h}×{w})')
                        continue
                    value = float(calculate_metric({'img': img}, deepcopy(opt)))
                    if not math.isfinite(value):
                        self._mark_failed(name, f'non-finite value {value}')
                        continue
                    out[name] = value
                elif mtype == 'calculate_pyiqa':
                    o = {k: v for k, v in opt.items() if k != 'type'}
                    o.setdefault('metric', name)
                    o['device'] = self.device
                    out[name] = calculate_pyiqa(img, img2, **o)
                elif img2 is not None:
                    out[name] = float(calculate_metric({'img': img, 'img2': img2}, deepcopy(opt)))
            except MetricUnavailable as err:
                self._mark_unavailable(name, str(err))
            except Exception as err:  # a metric that fails on one image: n/a for that image, reported
                self._mark_failed(name, f'{type(err).__name__}: {err}')
        return out

    def _mark_failed(self, name, reason):
        if reason not in self.failed.setdefault(name, OrderedDict()):
            self.logger.warning(f'Metric {name} is n/a for an image: {reason}')
        self.failed[name][reason] = self.failed[name].get(reason, 0) + 1

    def na_notes(self):
        """One line per metric that was n/a on some images, with the reasons and counts."""
        return [f'- {name}: n/a on {sum(r.values())} image(s): ' + '; '.join(f'{k} ({v}×)' for k, v in r.items())
                for name, r in self.failed.items()]

def _fmt(v, digits=4):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return 'n/a'
    if isinstance(v, float) and math.isinf(v):
        return 'inf'
    return f'{v:.{digits}f}'


class ResultTable:
    """Rows ``(image, method, {metric: value})``; means per method; CSV + Markdown output.

    ``depth``: optional ``{method: label}`` saying where the depth behind a method's results came from (e.g.
    ``prior``); with it the CSV gets a ``depth`` column (empty for methods without depth) and ``depth_note``
    a line under the Markdown table's title (the caller words it, e.g. ``depth_arch.depth_note``)."""

    def __init__(self, metric_names, methods, depth=None, depth_note=''):
        self.metric_names = list(metric_names)
        self.methods = list(methods)
        self.depth = dict(depth or {})
        self.depth_note = depth_note
        self.rows = []

    def add(self, image, method, values):
        self.rows.append((image, method, OrderedDict((m, values.get(m)) for m in self.metric_names)))

    def means(self):
        out = OrderedDict()
        for method in self.methods:
            vals = OrderedDict()
            for m in self.metric_names:
                xs = [r[2][m] for r in self.rows if r[1] == method and r[2][m] is not None]
                vals[m] = float(np.mean(xs)) if xs else None
            out[method] = vals
        return out

    def write(self, folder, dataset, unavailable=None, notes=()):
        """Writes ``<folder>/<dataset>_metrics.csv`` and ``.md``; returns their paths."""
        os.makedirs(folder, exist_ok=True)
        csv_path = osp.join(folder, f'{dataset}_metrics.csv')
        md_path = osp.join(folder, f'{dataset}_metrics.md')
        with atomic_write(csv_path, 'w', newline='') as f:
            writer = csv.writer(f)
            depth_col = (lambda method: [self.depth.get(method) or '']) if self.depth else (lambda method: [])
            writer.writerow(['image', 'method'] + self.metric_names + (['depth'] if self.depth else []))
            for image, method, vals in self.rows:
                writer.writerow([image, method] + ['' if vals[m] is None else repr(float(vals[m]))
                                                   for m in self.metric_names] + depth_col(method))
            for method, vals in self.means().items():
                writer.writerow(['MEAN', method] + ['' if vals[m] is None else repr(float(vals[m]))
                                                   for m in self.metric_names] + depth_col(method))
        n_images = len({r[0] for r in self.rows})
        lines = [f'# {dataset}: {n_images} image(s), mean per method', '']
        if self.depth_note:
            lines += [f'**{self.depth_note}**', '']
        lines += ['| method | ' + ' | '.join(self.metric_names) + ' |',
                  '| --- | ' + ' | '.join('---' for _ in self.metric_names) + ' |']
        for method, vals in self.means().items():
            lines.append(f'| {method} | ' + ' | '.join(_fmt(vals[m]) for m in self.metric_names) + ' |')
        if unavailable:
            lines += ['', 'Not run:']
            lines += [f'- {name}: {reason}' for name, reason in unavailable.items()]
        if notes:
            lines += [''] + [f'{n}' for n in notes]
        with atomic_write(md_path, 'w') as f:
            f.write('\n'.join(lines).rstrip() + '\n')
        return csv_path, md_path

    def markdown(self):
        rows = ['| method | ' + ' | '.join(self.metric_names) + ' |']
        for method, vals in self.means().items():
            rows.append(f'| {method} | ' + ' | '.join(_fmt(vals[m]) for m in self.metric_names) + ' |')
        return '\n'.join(rows)


def side_by_side(panels, crop=None, label_height=18):
    """``panels``: list of ``(label, H×W×3 uint8 BGR)`` at the same size. ``crop``: (y, x, size) HR window
    (default: a centred square of at most 128 pixels). Returns one labelled uint8 BGR strip."""
    h, w = panels[0][1].shape[:2]
    for label, img in panels:
        if img.shape[:2] != (h, w):
            raise ValueError(f'side_by_side: panel {label!r} is {img.shape[:2]}, expected {(h, w)}')
    if crop is None:
        size = min(128, h, w)
        crop = ((h - size) // 2, (w - size) // 2, size)
    y, x, size = crop
    size = min(size, h - y, w - x)
    scale = max(1, 128 // max(size, 1))  # tiny crops are enlarged (nearest) to stay readable
    tiles = []
    for label, img in panels:
        tile = img[y:y + size, x:x + size]
        if img.dtype != np.uint8:
            tile = (tile.astype(np.float32) / 257.0).round().astype(np.uint8)
        if scale > 1:
            tile = cv2.resize(tile, (size * scale, size * scale), interpolation=cv2.INTER_NEAREST)
        bar = np.full((label_height, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, label[:max(1, tile.shape[1] // 7)], (2, label_height - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([bar, tile], axis=0))
        tiles.append(np.full((tiles[-1].shape[0], 2, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)
