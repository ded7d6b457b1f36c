"""``SSRDegradationDataset``: HR (+ depth) from LMDB or folders, degraded on the fly (SPEC pipeline step 1)."""
import os.path as osp

import numpy as np
import torch
from torch.utils import data

from basicsr.utils import get_root_logger
from basicsr.utils.registry import DATASET_REGISTRY
from ssr_data.batch_degradation import (DEGRADATION_KEY, NOISE_SEED_KEY, OPTIONS_KEY, BatchDegradation,
                                        check_degrade_on)
from ssr_data.dataset_io import (ImageSource, augment_arrays, check_scale_and_size, decode_bgr, decode_depth_raw,
                                 depth_to_float, list_image_names, lmdb_keys, rng_for)
from ssr_data.degradations import SVDegradation
from ssr_data.depth_prior import depth_prior
from ssr_utils.errors import OptionError


@DATASET_REGISTRY.register()
class SSRDegradationDataset(data.Dataset):
    """HR crops degraded on the fly by the depth-informed spatially variant model of SSR.

    Options (besides the degradation keys of :class:`ssr_data.degradations.SVDegradation`: ``degradation_stages``
    and each stage's keys):
        dataroot_gt: HR LMDB (``*.lmdb``, BasicSR format) or folder of images.
        dataroot_depth: depth LMDB / folder with the same keys / stems (16-bit PNG, 1 = near); made by
            ``scripts/make_depth_lmdb.py``. Without it the weight-free prior runs on each full HR image.
        meta_info_file: optional list of keys (first token per line) to use from the LMDB.
        gt_size: HR crop size (divisible by ``scale``); None = the whole image (cropped to a multiple of s).
        scale, use_hflip (true), use_rot (true), seed (None: a new draw every time; an int: sample i is
        fixed, e.g. for a validation set), return_kernel (true).
        degrade_on: ``dataset`` (default; the sample is degraded here) or ``model`` (the sample carries the
            degradation's numbers and the model synthesises the batch on its device, see
            :mod:`ssr_data.batch_degradation`; needs a model whose ``feed_data`` calls
            ``maybe_degrade_batch``). jpeg_backend (``opencv`` | ``torch``, ``degrade_on: model`` only).

    Sample: ``lq`` 3×h×w, ``gt`` 3×H×W (RGB [0, 1]), ``depth`` 1×H×W, ``depth_lq`` 1×h×w (area average),
    ``kernel`` k²×h×w, ``lq_path``/``gt_path`` (the LMDB key or the file path) and ``params``. With
    ``degrade_on: model``: no ``lq`` / ``kernel`` but a ``degradation`` entry (``kernel_params`` 3×h×w,
    ``noise_sigma``, ``gray_noise``, ``poisson_scale``, ``jpeg_quality``, ``noise_seed``, ``options``).
    """

    @classmethod
    def check_options(cls, opt):
        """The degradation options (every stage's, ``degrade_on``): what the constructor checks first, run by
        ``ssr_utils.option_check`` at start-up. Returns ``(SVDegradation, synthesis options JSON or None)``."""
        check_scale_and_size(opt)
        degradation = SVDegradation(opt)
        if check_degrade_on(opt) == 'model':
            return degradation, BatchDegradation(opt).options()  # checked now, not in the model
        if opt.get('jpeg_backend', 'opencv') != 'opencv':
            raise OptionError('jpeg_backend', opt['jpeg_backend'], 'only degrade_on: model has a choice of JPEG '
                              'backend (the per-sample path uses OpenCV)')
        return degradation, None

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.scale, self.gt_size = check_scale_and_size(opt)
        self.degradation, self.synthesis_options = self.check_options(opt)
        self.degrade_on = check_degrade_on(opt)
        if 'dataroot_gt' not in opt or opt['dataroot_gt'] is None:
            raise OptionError('dataroot_gt', None, 'missing')
        self.gt_src = ImageSource(opt['dataroot_gt'], 'gt', 'dataroot_gt')
        self.depth_src = None
        if opt.get('dataroot_depth'):
            self.depth_src = ImageSource(opt['dataroot_depth'], 'depth', 'dataroot_depth')
        self.seed = opt.get('seed')
        self.use_hflip = opt.get('use_hflip', True)
        self.use_rot = opt.get('use_rot', True)
        self.return_kernel = opt.get('return_kernel', True)
        if self.gt_src.lmdb:
            self.keys = lmdb_keys(self.gt_src.root, 'dataroot_gt', opt.get('meta_info_file'))
        elif opt.get('meta_info_file'):
            with open(opt['meta_info_file']) as f:
                self.keys = [osp.splitext(line.split(' ')[0])[0] for line in f if line.strip()]
        else:
            self.keys = [osp.splitext(n)[0] for n in list_image_names(self.gt_src.root, 'dataroot_gt')]
        self.depth_source = None if self.depth_src is not None else 'prior'
        if self.depth_src is None:
            get_root_logger().warning('SSRDegradationDataset: no dataroot_depth; the weight-free depth prior runs '
                                      'on every HR image (see scripts/make_depth_lmdb.py for real depth).')

    def __len__(self):
        return len(self.keys)

    def _depth_of(self, key, gt):
        """The stored depth (as stored: uint16 / uint8) or, without a depth source, the prior (float)."""
        if self.depth_src is not None:
            depth = decode_depth_raw(self.depth_src.get(key), self.depth_src.path_of(key))
            if depth.shape != gt.shape[:2]:
                raise ValueError(f'depth map {self.depth_src.path_of(key)} is {depth.shape[0]}×{depth.shape[1]} '
                                 f'but HR image {key!r} is {gt.shape[0]}×{gt.shape[1]} (dataroot_depth)')
            return depth
        rgb = torch.from_numpy(np.ascontiguousarray(gt[:, :, ::-1].transpose(2, 0, 1))).float().div_(255.0)[None]
        with torch.no_grad():
            return depth_prior(rgb)[0, 0].numpy()

    def __getitem__(self, index):
        key = self.keys[index]
        where = self.gt_src.path_of(key)
        gt = decode_bgr(self.gt_src.get(key), where, float32=False)  # crop first, convert the crop only
        depth = self._depth_of(key, gt)
        rng = rng_for(self.seed, index)
        h, w = gt.shape[:2]
        s = self.scale
        if self.gt_size is not None:
            size = self.gt_size
            if h < size or w < size:
                raise ValueError(f'HR image {where} is {h}×{w}, smaller than the crop gt_size = {size}')
            top = int(rng.integers(0, h - size + 1))
            left = int(rng.integers(0, w - size + 1))
            gt = gt[top:top + size, left:left + size]
            depth = depth[top:top + size, left:left + size]
        else:
            hh, ww = h - h % s, w - w % s
            if hh < s or ww < s:
                raise ValueError(f'HR image {where} ({h}×{w}) is smaller than the scale {s}')
            gt, depth = gt[:hh, :ww], depth[:hh, :ww]
        gt, depth = augment_arrays([gt, depth], rng, self.use_hflip, self.use_rot)
        gt_t = torch.from_numpy(gt[:, :, ::-1].transpose(2, 0, 1).copy()).float().div_(255.0)  # BGR -> RGB
        depth_t = torch.from_numpy(depth_to_float(depth))[None]
        gt_path = self.gt_src.sample_path(key)
        if self.degrade_on == 'model':
            draw = self.degradation.draw_params(depth_t, rng)
            numbers = {**draw['numbers'], NOISE_SEED_KEY: draw['noise_seed'], OPTIONS_KEY: self.synthesis_options}
            return {'gt': gt_t, 'depth': depth_t, 'depth_lq': draw['depth_lq'], 'lq_path': gt_path,
                    'gt_path': gt_path, 'params': draw['params'], DEGRADATION_KEY: numbers}
        out = self.degradation(gt_t, depth_t, rng)
        sample = {'lq': out['lq'], 'gt': gt_t, 'depth': depth_t, 'depth_lq': out['depth_lq'],
                  'lq_path': gt_path, 'gt_path': gt_path, 'params': out['params']}
        if self.return_kernel and out['kernel'] is not None:
            sample['kernel'] = out['kernel']
        return sample
