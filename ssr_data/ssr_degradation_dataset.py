"""``SSRDegradationDataset``: HR (+ depth) from LMDB or folders, degraded on the fly (SPEC pipeline step 1)."""
import os
import os.path as osp

import cv2
import numpy as np
import torch
from torch.utils import data

from basicsr.utils import FileClient, get_root_logger, imfrombytes
from basicsr.utils.registry import DATASET_REGISTRY
from ssr_data.batch_degradation import (DEGRADATION_KEY, NOISE_SEED_KEY, OPTIONS_KEY, BatchDegradation,
                                        check_degrade_on)
from ssr_data.degradations import SVDegradation
from ssr_data.depth_prior import depth_prior
from ssr_utils.errors import OptionError
from ssr_utils.image_io import IMAGE_EXTENSIONS


# -------------------------------------------------------------------------------------------------
# helpers shared with SSRPairedDataset
# -------------------------------------------------------------------------------------------------
def is_lmdb(path):
    return isinstance(path, str) and path.rstrip('/').endswith('.lmdb')


def list_images(folder, key):
    if not osp.isdir(folder):
        raise OptionError(key, folder, 'folder does not exist')
    names = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise OptionError(key, folder, 'no images in the folder')
    return names


def lmdb_keys(lmdb_path, key, meta_info_file=None):
    meta = meta_info_file or osp.join(lmdb_path, 'meta_info.txt')
    if not osp.isdir(lmdb_path):
        raise OptionError(key, lmdb_path, 'LMDB folder does not exist')
    if not osp.isfile(meta):
        raise OptionError(key, lmdb_path, f'no meta_info.txt ({meta}) in the LMDB (not a BasicSR LMDB?)')
    with open(meta) as f:
        # lines are '<key>.png (h,w,c) level'; BasicSR recovers the key with split('.')[0]
        keys = [line.split(' ')[0].split('.')[0] for line in f if line.strip()]
    if not keys:
        raise OptionError(key, lmdb_path, 'meta_info.txt lists no images')
    return keys


class ImageSource:
    """Bytes of named images from an LMDB (BasicSR FileClient, keys without extension) or a folder."""

    def __init__(self, root, client_key, option_key):
        self.root = root
        self.client_key = client_key
        self.option_key = option_key
        self.lmdb = is_lmdb(root)
        self.client = None
        if not self.lmdb and not osp.isdir(root):
            raise OptionError(option_key, root, 'folder does not exist')
        if self.lmdb and not osp.isdir(root):
            raise OptionError(option_key, root, 'LMDB folder does not exist')
        self._stems = None

    def _folder_index(self):
        if self._stems is None:
            self._stems = {osp.splitext(n)[0]: n for n in list_images(self.root, self.option_key)}
        return self._stems

    def path_of(self, name):
        """Where the image is, for messages: ``<lmdb>:<key>`` or the file path."""
        return f'{self.root}:{name}' if self.lmdb else osp.join(self.root, self._folder_index().get(name, name))

    def sample_path(self, name):
        """``lq_path``/``gt_path`` of a sample, as BasicSR's datasets give them: the key for an LMDB (its
        validation names results by the stem of this path), the file path for a folder."""
        return name if self.lmdb else self.path_of(name)

    def has(self, name):
        if self.lmdb:
            return self._get(name) is not None
        return name in self._folder_index()

    def _get(self, name):
        if self.client is None:  # opened lazily: one environment per worker process
            if self.lmdb:
                self.client = FileClient('lmdb', db_paths=[self.root], client_keys=[self.client_key])
            else:
                self.client = FileClient('disk')
        if self.lmdb:
            return self.client.get(name, self.client_key)
        path = osp.join(self.root, self._folder_index().get(name, ''))
        if not osp.isfile(path):
            return None
        return self.client.get(path)

    def get(self, name):
        buf = self._get(name)
        if buf is None:
            where = f'LMDB {self.root}' if self.lmdb else f'folder {self.root}'
            raise KeyError(f'{self.option_key}: key {name!r} not found in {where}')
        return buf


def decode_image(buf, path, float32=True):
    """BGR H×W×3 image (float32 [0, 1], or uint8 with ``float32=False`` to crop before converting)."""
    try:
        img = imfrombytes(buf, float32=float32)
    except Exception as err:  # cv2 returns None on garbage and basicsr then fails obscurely
        raise ValueError(f'cannot decode image {path}: {err}') from err
    if img is None:
        raise ValueError(f'cannot decode image {path}')
    return img


def decode_depth_raw(buf, path):
    """Depth PNG bytes -> H×W array as stored (uint16, or uint8)."""
    try:
        arr = imfrombytes(buf, flag='unchanged', float32=False)
    except Exception as err:
        raise ValueError(f'cannot decode depth map {path}: {err}') from err
    if arr is None:
        raise ValueError(f'cannot decode depth map {path}')
    return arr[:, :, 0] if arr.ndim == 3 else arr


def depth_to_float(arr):
    """Stored depth (16-bit 0..65535 or 8-bit 0..255 ↔ 0..1) -> float32 in [0, 1]."""
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) * np.float32(1.0 / 65535.0)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1.0 / 255.0)
    return np.clip(arr.astype(np.float32), 0, 1)


def decode_depth(buf, path):
    """Depth PNG bytes (16-bit 0..65535 or 8-bit 0..255 ↔ 0..1) -> H×W float32."""
    return depth_to_float(decode_depth_raw(buf, path))


def rng_for(seed, index):
    """Per-sample generator: fixed by (seed, index) when a seed is given, else fresh OS entropy (which also
    keeps forked DataLoader workers from repeating each other's draws)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([int(seed), int(index)])


def draw_flips(rng, hflip=True, rot=True):
    """BasicSR's augmentation draws (hflip, vflip, transpose); three draws always, so the stream stays aligned."""
    draws = rng.uniform(size=3)
    return bool(hflip and draws[0] < 0.5), bool(rot and draws[1] < 0.5), bool(rot and draws[2] < 0.5)


def apply_flips(arrays, flips):
    """Apply (hflip, vflip, transpose) to H×W or H×W×C arrays alike."""
    do_h, do_v, do_t = flips
    out = []
    for a in arrays:
        if do_h:
            a = a[:, ::-1]
        if do_v:
            a = a[::-1]
        if do_t:
            a = a.transpose(1, 0, 2) if a.ndim == 3 else a.T
        out.append(np.ascontiguousarray(a))
    return out


def augment_arrays(arrays, rng, hflip=True, rot=True):
    """BasicSR's flips/rotations drawn from ``rng`` and applied to all arrays alike (HR and its depth)."""
    return apply_flips(arrays, draw_flips(rng, hflip, rot))


def check_scale_and_size(opt, gt_size_key='gt_size'):
    scale = opt.get('scale', 4)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise OptionError('scale', scale, 'expected a positive integer')
    gt_size = opt.get(gt_size_key)
    if gt_size is not None:
        if isinstance(gt_size, bool) or not isinstance(gt_size, int) or gt_size < 1:
            raise OptionError(gt_size_key, gt_size, 'expected a positive integer')
        if gt_size % scale:
            raise OptionError(gt_size_key, gt_size, f'the crop size must be divisible by scale {scale}')
    return scale, gt_size


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
            self.keys = [osp.splitext(n)[0] for n in list_images(self.gt_src.root, 'dataroot_gt')]
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
        gt = decode_image(self.gt_src.get(key), where, float32=False)  # crop first, convert the crop only
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


def depth_to_uint16(depth):
    """H×W float depth in [0, 1] -> uint16 (0..65535)."""
    return np.round(np.clip(np.asarray(depth, dtype=np.float64), 0, 1) * 65535.0).astype(np.uint16)


def encode_depth_png(depth16, compact=False):
    """16-bit depth PNG bytes. Default: stored (zlib level 0) and unfiltered, which decodes ~7x faster than
    OpenCV's default PNG (measured 0.5 ms vs 3.5 ms for 480×480) at the raw size (2 bytes a pixel);
    ``compact=True``: level 1 with filters, ~1/3 smaller, slower to decode."""
    if depth16.dtype != np.uint16 or depth16.ndim != 2:
        raise ValueError(f'depth must be an H×W uint16 array, got {depth16.dtype} {depth16.shape}')
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if compact else \
        [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, buf = cv2.imencode('.png', depth16, params)
    if not ok:
        raise ValueError(f'cannot PNG-encode a depth map of shape {depth16.shape}')
    return buf.tobytes()


def write_depth_png(path, depth):
    """H×W float depth in [0, 1] -> 16-bit PNG file (0..65535)."""
    with open(path, 'wb') as f:
        f.write(encode_depth_png(depth_to_uint16(depth)))
