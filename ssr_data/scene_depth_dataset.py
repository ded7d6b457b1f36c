"""``SceneDepthDataset``: images with exact depth, for training and validating a monocular depth network."""
import json
import os.path as osp

import cv2
import numpy as np
import torch
from torch.utils import data

from basicsr.utils.registry import DATASET_REGISTRY
from ssr_data.dataset_io import (ImageSource, decode_bgr, decode_depth_raw, depth_to_float, list_image_names,
                                 lmdb_keys, rng_for)
from ssr_utils.errors import OptionError


def _scene_key(index):
    return f'scene_{index:06d}'  # as scripts/make_scene_data.py names scene i


def _range_pair(opt, key, default, lo_bound, hi_bound):
    value = opt.get(key, default)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise OptionError(key, value, 'expected a [low, high] pair')
    lo, hi = float(value[0]), float(value[1])
    if not lo_bound < lo <= hi <= hi_bound:
        raise OptionError(key, value, f'expected {lo_bound} < low <= high <= {hi_bound}')
    return lo, hi


def _resize(arr, size, depth):
    if arr.shape[:2] == (size, size):
        return arr
    if depth:  # exact values of real surfaces (no blend of near and far across a silhouette), pixel centres kept
        interp = cv2.INTER_NEAREST_EXACT
    else:
        interp = cv2.INTER_AREA if arr.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(arr, (size, size), interpolation=interp)


@DATASET_REGISTRY.register()
class SceneDepthDataset(data.Dataset):
    """RGB images with exact normalised inverse depth (``ssr_data.scenes``), for a depth network.

    Two sources (give one):
        ``scenes``: generated on the fly by :class:`ssr_data.scenes.SceneGenerator`; a dict with ``num``
            (how many distinct scenes: the dataset length), ``seed`` (scene i is ``generate((seed, i))``,
            exactly scene ``scene_<i>`` of ``make_scene_data.py --seed <seed>``), ``size`` (rendered side or
            [H, W], default 256), ``split`` (``train`` | ``test`` | ``all``: the held-out photographs are
            only in ``test``), ``shared_dir`` (auto), ``exclude`` (photograph names) and ``config`` (a dict of
            ``SceneConfig`` overrides). Rendering costs about 20-30 ms per scene on one core.
        ``dataroot_gt`` + ``dataroot_depth``: an image LMDB / folder and a depth LMDB / folder with the same
            keys (``make_scene_data.py``, or ``make_depth_lmdb.py`` for your own RGB-D data). The true
            inverse depth comes from ``scenes_json`` (default: ``scenes.json`` beside ``dataroot_gt``'s
            folder, as make_scene_data.py writes it) when it exists.
    Options:
        gt_size: side of the square samples (None: the whole image as it is; batch size 1 then).
        crop_scale ([1, 1]): a square crop whose side is this fraction of the image's shorter side, drawn
            uniformly, at a random position, then resized to ``gt_size`` (area / cubic for the image, nearest
            for depth: every depth value stays that of a real surface).
        use_hflip (true): horizontal flips. No vertical flips or rotations: "down" is a depth cue.
        aug_seed: None (fresh random crops and flips every time) or an int (sample i is fixed).

    Sample: ``img`` 3×S×S RGB [0, 1]; ``depth`` 1×S×S normalised inverse depth (1 = near); ``disparity``
    1×S×S the true inverse depth 1/Z in 1/camera-heights (when the source knows it: always for ``scenes``);
    ``lq_path`` / ``gt_path`` the scene key.
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.gt_size = opt.get('gt_size')
        if self.gt_size is not None and (isinstance(self.gt_size, bool) or not isinstance(self.gt_size, int)
                                         or self.gt_size < 8):
            raise OptionError('gt_size', self.gt_size, 'expected an integer >= 8 or null (whole images)')
        self.crop_scale = _range_pair(opt, 'crop_scale', (1.0, 1.0), 0.0, 1.0)
        if self.gt_size is None and self.crop_scale != (1.0, 1.0):
            raise OptionError('crop_scale', list(self.crop_scale), 'crops need a gt_size to resize them to')
        self.use_hflip = bool(opt.get('use_hflip', True))
        self.aug_seed = opt.get('aug_seed')
        self.scenes_opt = opt.get('scenes')
        has_files = opt.get('dataroot_gt') is not None or opt.get('dataroot_depth') is not None
        if (self.scenes_opt is not None) == has_files:
            raise OptionError('scenes', self.scenes_opt, 'give either scenes (generated on the fly) or '
                              'dataroot_gt + dataroot_depth (stored), not both')
        self.ranges = {}
        if self.scenes_opt is not None:
            self._init_generated(self.scenes_opt)
        else:
            self._init_stored(opt)

    # ------------------------------------------------------------------------------------------ sources
    def _init_generated(self, sopt):
        from ssr_data.scenes import SPLITS, SceneConfig
        if not isinstance(sopt, dict):
            raise OptionError('scenes', sopt, 'expected a dict (num, seed, size, split, ...)')
        self.num = sopt.get('num')
        if isinstance(self.num, bool) or not isinstance(self.num, int) or self.num < 1:
            raise OptionError('scenes:num', self.num, 'expected a positive integer')
        self.scene_seed = sopt.get('seed', 0)
        if isinstance(self.scene_seed, bool) or not isinstance(self.scene_seed, int) or self.scene_seed < 0:
            raise OptionError('scenes:seed', self.scene_seed, 'expected an integer >= 0')
        self.split = sopt.get('split', 'train')
        if self.split not in SPLITS:
            raise OptionError('scenes:split', self.split, f'expected one of {", ".join(SPLITS)}')
        size = sopt.get('size', 256)
        self.scene_size = (size, size) if isinstance(size, int) else tuple(size)
        try:
            self.scene_config = SceneConfig.from_dict(dict(sopt.get('config') or {}))
        except (TypeError, ValueError) as err:
            raise OptionError('scenes:config', sopt.get('config'), str(err)) from None
        self.keys = [_scene_key(i) for i in range(self.num)]
        self._generator = None

    def _generator_of_worker(self):
        if self._generator is None:  # built lazily: once per DataLoader worker
            from ssr_data.scenes import SceneGenerator, default_texture_photos
            cv2.setNumThreads(1)
            photos = default_texture_photos(self.split, self.scenes_opt.get('shared_dir', 'auto'),
                                            tuple(self.scenes_opt.get('exclude') or ()))
            self._generator = SceneGenerator(photos, self.scene_size, self.scene_config)
        return self._generator

    def _init_stored(self, opt):
        for key in ('dataroot_gt', 'dataroot_depth'):
            if not opt.get(key):
                raise OptionError(key, opt.get(key), 'missing (both dataroot_gt and dataroot_depth are needed)')
        self.img_src = ImageSource(opt['dataroot_gt'], 'gt', 'dataroot_gt')
        self.depth_src = ImageSource(opt['dataroot_depth'], 'depth', 'dataroot_depth')
        if self.img_src.lmdb:
            self.keys = lmdb_keys(self.img_src.root, 'dataroot_gt', opt.get('meta_info_file'))
        else:
            self.keys = [osp.splitext(n)[0] for n in list_image_names(self.img_src.root, 'dataroot_gt')]
        scenes_json = opt.get('scenes_json')
        if scenes_json is None:
            scenes_json = osp.join(osp.dirname(osp.abspath(opt['dataroot_gt'].rstrip('/'))), 'scenes.json')
            scenes_json = scenes_json if osp.isfile(scenes_json) else None
        elif not osp.isfile(scenes_json):
            raise OptionError('scenes_json', scenes_json, 'file does not exist')
        if scenes_json is not None:
            with open(scenes_json) as f:
                info = json.load(f)
            self.ranges = {s['key']: tuple(s['inv_depth_range']) for s in info.get('scenes', [])}

    # ------------------------------------------------------------------------------------------ samples
    def __len__(self):
        return len(self.keys)

    def _load(self, index, key):
        """(RGB uint8 H×W×3, depth float32 H×W in [0, 1], (lo, hi) or None)."""
        if self.scenes_opt is not None:
            rgb, depth, meta = self._generator_of_worker().generate((self.scene_seed, index))
            return rgb, depth.astype(np.float32), tuple(meta['inv_depth_range'])
        where = self.img_src.path_of(key)
        bgr = decode_bgr(self.img_src.get(key), where, float32=False)
        depth = decode_depth_raw(self.depth_src.get(key), self.depth_src.path_of(key))
        if depth.shape != bgr.shape[:2]:
            raise ValueError(f'depth map {self.depth_src.path_of(key)} is {depth.shape[0]}×{depth.shape[1]} but '
                             f'image {where} is {bgr.shape[0]}×{bgr.shape[1]} (dataroot_depth)')
        return np.ascontiguousarray(bgr[:, :, ::-1]), depth_to_float(depth), self.ranges.get(key)

    def __getitem__(self, index):
        key = self.keys[index]
        rgb, depth, inv_range = self._load(index, key)
        rng = rng_for(self.aug_seed, index)
        if self.gt_size is not None:
            h, w = depth.shape
            side = max(1, int(round(rng.uniform(*self.crop_scale) * min(h, w))))
            top = int(rng.integers(0, h - side + 1))
            left = int(rng.integers(0, w - side + 1))
            rgb = _resize(rgb[top:top + side, left:left + side], self.gt_size, depth=False)
            depth = _resize(depth[top:top + side, left:left + side], self.gt_size, depth=True)
        if self.use_hflip and rng.uniform() < 0.5:
            rgb, depth = rgb[:, ::-1], depth[:, ::-1]
        img_t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)
        depth_t = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None]
        sample = {'img': img_t, 'depth': depth_t, 'lq_path': key, 'gt_path': key}
        if inv_range is not None:
            lo, hi = inv_range
            sample['disparity'] = lo + depth_t * (hi - lo)
        return sample
