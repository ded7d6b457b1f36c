"""``HRCropDataset``: clean HR crops of real photographs, for unconditional training (the diffusion prior).

The diffusion prior (``DiffusionPriorModel``, docs/diffusion.md) learns what natural images look like, with
no degradation and no condition, so its data are plain HR crops drawn from many photographs:

* ``dataroot_gt``: image LMDBs or folders (one path or a list), e.g. the demo's scene LMDB or DF2K sub-images;
* ``photos``: the project's real photographs (``ssr_data.scenes.default_texture_photos``: scikit-image's and,
  when present, ``../shared/data/train_hr``), whole, so a crop can come from anywhere in them;
* ``scenes``: RGB-D scenes composed from those photographs (``ssr_data.scenes.SceneGenerator``), rendered on
  the fly (the depth is not used).
"""
import os.path as osp

import cv2
import numpy as np
import torch
from torch.utils import data

from basicsr.utils.registry import DATASET_REGISTRY
from ssr_data.ssr_degradation_dataset import (ImageSource, augment_arrays, decode_image, is_lmdb, list_images,
                                              lmdb_keys, rng_for)
from ssr_utils.errors import OptionError

# source names in repeat: (gt = the images of dataroot_gt)
SOURCES = ('gt', 'photos', 'scenes')


def _positive_int(value, key, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(key, value, f'expected an integer >= {minimum}')
    return value


@DATASET_REGISTRY.register()
class HRCropDataset(data.Dataset):
    """Random square HR crops from a mix of image sources (module docstring); no LR, no degradation.

    Options (give at least one source):
        dataroot_gt (str | list[str]): image LMDBs (BasicSR format) or folders.
        photos (dict): ``split`` (train | test | all; the held-out photographs are only in ``test``),
            ``shared_dir`` (auto), ``exclude`` (names), ``max_side`` (640: longer photographs are area-downscaled).
        scenes (dict): ``num``, ``seed``, ``size``, ``split``, ``shared_dir``, ``config`` as
            ``SceneDepthDataset``'s; scene i is ``SceneGenerator.generate((seed, i))``.
        repeat (dict): how many entries each image of a source has per epoch (``gt`` for those of ``dataroot_gt``,
            ``photos``, ``scenes``; default 1): a 640-pixel photograph holds many more distinct crops than a 192-pixel
            sub-image, so it is drawn more often.
        gt_size (int): side of the crops.
        scale_range ([lo, hi], default [1, 1]): a crop of side ``gt_size * s`` (``s`` uniform in the range, at
            most the image's shorter side) area-resized to ``gt_size``: the prior sees each photograph at
            several scales.
        use_hflip, use_rot (true): BasicSR's flips and 90° rotations.
        aug_seed: None (fresh crops every time) or an int (entry i is always the same crop: validation).

    Sample: ``gt`` 3×S×S RGB float in [0, 1]; ``gt_path`` / ``lq_path`` the entry's name
    (``<image>_<n>``, unique per entry, so validation images are named apart).
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.gt_size = _positive_int(opt.get('gt_size'), 'gt_size', 8)
        scale_range = opt.get('scale_range', [1.0, 1.0])
        if not isinstance(scale_range, (list, tuple)) or len(scale_range) != 2 or \
                not 1.0 <= float(scale_range[0]) <= float(scale_range[1]):
            raise OptionError('scale_range', scale_range, 'expected [low, high] with 1 <= low <= high')
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.use_hflip = bool(opt.get('use_hflip', True))
        self.use_rot = bool(opt.get('use_rot', True))
        self.aug_seed = opt.get('aug_seed')
        repeat = dict(opt.get('repeat') or {})
        for key in repeat:
            if key not in SOURCES:
                raise OptionError(f'repeat:{key}', repeat[key], f'not a source (expected one of {", ".join(SOURCES)})')
            _positive_int(repeat[key], f'repeat:{key}')
        # entries: (source, image id, name); an image of a source appears repeat[source] times
        images = []
        self._sources, self._photos, self._scenes_opt, self._generator = {}, {}, None, None
        roots = opt.get('dataroot_gt')
        if roots is not None:
            for root in roots if isinstance(roots, (list, tuple)) else [roots]:
                src = ImageSource(root, 'gt', 'dataroot_gt')
                keys = lmdb_keys(root, 'dataroot_gt') if is_lmdb(root) else \
                    [osp.splitext(n)[0] for n in list_images(root, 'dataroot_gt')]
                self._sources[root] = src
                images += [('gt', (root, k), k) for k in keys]
        if opt.get('photos') is not None:
            images += [('photos', name, name) for name in self._load_photos(opt['photos'])]
        if opt.get('scenes') is not None:
            images += self._scene_entries(opt['scenes'])
        if not images:
            raise OptionError('dataroot_gt', None, 'HRCropDataset needs at least one source: dataroot_gt, photos '
                              'or scenes')
        self.entries = []
        for source, ident, name in images:
            n = int(repeat.get(source, 1))
            self.entries += [(source, ident, f'{name}_{i:03d}') for i in range(n)]

    # ------------------------------------------------------------------------------------------ sources
    def _load_photos(self, popt):
        from ssr_data.scenes import SPLITS, default_texture_photos
        if not isinstance(popt, dict):
            raise OptionError('photos', popt, 'expected a dict (split, shared_dir, exclude, max_side)')
        split = popt.get('split', 'train')
        if split not in SPLITS:
            raise OptionError('photos:split', split, f'expected one of {", ".join(SPLITS)}')
        max_side = _positive_int(popt.get('max_side', 640), 'photos:max_side', 8)
        try:
            photos = default_texture_photos(split, popt.get('shared_dir', 'auto'), tuple(popt.get('exclude') or ()),
                                            max_side=max_side)
        except ValueError as err:
            raise OptionError('photos', popt, str(err)) from None
        for p in photos:
            self._photos[p.name] = p.rgb
        return [p.name for p in photos]

    def _scene_entries(self, sopt):
        from ssr_data.scenes import SPLITS, SceneConfig
        if not isinstance(sopt, dict):
            raise OptionError('scenes', sopt, 'expected a dict (num, seed, size, split, ...)')
        num = _positive_int(sopt.get('num'), 'scenes:num')
        seed = _positive_int(sopt.get('seed', 0), 'scenes:seed', 0)
        if sopt.get('split', 'train') not in SPLITS:
            raise OptionError('scenes:split', sopt.get('split'), f'expected one of {", ".join(SPLITS)}')
        size = sopt.get('size', 256)
        try:
            config = SceneConfig.from_dict(dict(sopt.get('config') or {}))
        except (TypeError, ValueError) as err:
            raise OptionError('scenes:config', sopt.get('config'), str(err)) from None
        self._scenes_opt = dict(sopt, seed=seed, size=(size, size) if isinstance(size, int) else tuple(size),
                                config=config)
        return [('scenes', i, f'scene_{seed}_{i:06d}') for i in range(num)]

    def _scene_generator(self):
        if self._generator is None:  # built lazily: once per DataLoader worker
            from ssr_data.scenes import SceneGenerator, default_texture_photos
            s = self._scenes_opt
            photos = default_texture_photos(s.get('split', 'train'), s.get('shared_dir', 'auto'),
                                            tuple(s.get('exclude') or ()))
            self._generator = SceneGenerator(photos, s['size'], s['config'])
        return self._generator

    def _image(self, source, ident):
        """RGB uint8 H×W×3 of one image of a source."""
        if source == 'photos':
            return self._photos[ident]
        if source == 'scenes':
            rgb, _, _ = self._scene_generator().generate((self._scenes_opt['seed'], ident))
            return rgb
        root, key = ident
        src = self._sources[root]
        bgr = decode_image(src.get(key), src.path_of(key), float32=False)
        if bgr.ndim == 2:
            bgr = np.stack([bgr] * 3, axis=2)
        return np.ascontiguousarray(bgr[:, :, 2::-1])

    # ------------------------------------------------------------------------------------------ samples
    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        source, ident, name = self.entries[index]
        rgb = self._image(source, ident)
        rng = rng_for(self.aug_seed, index)
        h, w = rgb.shape[:2]
        side = int(round(self.gt_size * rng.uniform(*self.scale_range)))
        side = min(side, h, w)
        if side < self.gt_size:
            raise ValueError(f'{name}: image {h}×{w} is smaller than gt_size {self.gt_size}')
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = rgb[top:top + side, left:left + side]
        if side != self.gt_size:
            crop = cv2.resize(crop, (self.gt_size, self.gt_size), interpolation=cv2.INTER_AREA)
        crop, = augment_arrays([crop], rng, self.use_hflip, self.use_rot)
        gt = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div_(255.0)
        return {'gt': gt, 'gt_path': name, 'lq_path': name}
