"""``SSRPairedDataset``: fixed pre-made LR/HR test sets, with kernel maps and depth when the set has them."""
import json
import os.path as osp

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils import data

from basicsr.utils import img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from ssr_data.dataset_io import (ImageSource, apply_flips, check_scale_and_size, decode_bgr, decode_depth, draw_flips,
                                 list_image_names, lmdb_keys, rng_for)
from ssr_utils.errors import OptionError


@DATASET_REGISTRY.register()
class SSRPairedDataset(data.Dataset):
    """Pairs of a fixed test set, e.g. one written by ``scripts/make_sv_testset.py``.

    Options:
        dataroot: a test-set folder with ``gt/``, ``lq/`` and optionally ``kernel/`` (``<stem>.npy``,
            float32 k²×h×w), ``depth/`` (16-bit PNG at HR size) and ``meta.json``; or the parts given
            one by one: dataroot_gt, dataroot_lq (folders or BasicSR LMDBs with the same keys),
            dataroot_kernel, dataroot_depth (optional).
        scale; for training use, phase ``train`` with gt_size, use_hflip, use_rot, seed.
        require_meta (default true): a ``dataroot`` folder laid out by ``make_sv_testset.py`` (it has
            ``kernel/``) must hold ``meta.json``, which that tool writes last: without it the set is
            incomplete (an interrupted run of an older version) and is refused by name. When ``meta.json``
            lists its images, the gt images must be exactly those.

    Samples follow SSRDegradationDataset; ``kernel`` / ``depth`` / ``depth_lq`` are left out when the set
    has none, ``params`` holds the per-image numbers of ``meta.json`` (empty without one).
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.scale, self.gt_size = check_scale_and_size(opt)
        root = opt.get('dataroot')
        parts = {}
        for part in ('gt', 'lq', 'kernel', 'depth'):
            value = opt.get(f'dataroot_{part}')
            if value is None and root is not None:
                candidate = osp.join(root, part)
                if osp.isdir(candidate):
                    value = candidate
            parts[part] = value
        for part in ('gt', 'lq'):
            if parts[part] is None:
                raise OptionError(f'dataroot_{part}', None, 'missing (give dataroot with gt/ and lq/ inside, or the '
                                  f'dataroot_{part} folder / LMDB)')
        meta_path = opt.get('meta_file') or (osp.join(root, 'meta.json') if root else None)
        tool_layout = root is not None and opt.get('dataroot_kernel') is None and osp.isdir(osp.join(root, 'kernel'))
        if tool_layout and opt.get('require_meta', True) and not osp.isfile(meta_path):
            raise OptionError('dataroot', root, 'incomplete test set: no meta.json (scripts/make_sv_testset.py writes '
                              'it last; rebuild the set, or set require_meta: false to use it anyway)')
        self.gt_src = ImageSource(parts['gt'], 'gt', 'dataroot_gt')
        self.lq_src = ImageSource(parts['lq'], 'lq', 'dataroot_lq')
        self.depth_src = ImageSource(parts['depth'], 'depth', 'dataroot_depth') if parts['depth'] else None
        self.kernel_root = parts['kernel']
        if self.kernel_root is not None and not osp.isdir(self.kernel_root):
            raise OptionError('dataroot_kernel', self.kernel_root, 'folder does not exist')
        if self.gt_src.lmdb:
            self.keys = lmdb_keys(self.gt_src.root, 'dataroot_gt', opt.get('meta_info_file'))
        else:
            self.keys = [osp.splitext(n)[0] for n in list_image_names(self.gt_src.root, 'dataroot_gt')]
        for key in self.keys:  # a missing partner is a set error: report it now, by name
            if not self.lq_src.has(key):
                raise FileNotFoundError(f'no LR image for {key!r} in {self.lq_src.root} (dataroot_lq)')
        self.meta = {}
        if meta_path and osp.isfile(meta_path):
            with open(meta_path) as f:
                self.meta = json.load(f)
            meta_scale = self.meta.get('scale')
            if meta_scale is not None and meta_scale != self.scale:
                raise OptionError('scale', self.scale, f'{meta_path} says the set is ×{meta_scale}')
            listed = self.meta.get('images')
            if isinstance(listed, dict) and listed and opt.get('require_meta', True):
                missing = sorted(set(listed) - set(self.keys))
                extra = sorted(set(self.keys) - set(listed))
                if missing or extra:
                    what = '; '.join(part for part in (f'missing {missing[:5]}' if missing else '',
                                                       f'not in meta.json {extra[:5]}' if extra else '') if part)
                    raise OptionError('dataroot', root or meta_path, f'the gt images do not match {meta_path} '
                                      f'({what}): an incomplete or modified test set')
        self.phase = opt.get('phase', 'val')
        self.seed = opt.get('seed')
        # where the set's depth maps came from, as make_sv_testset.py records it (e.g. 'MonocularDepth(prior)'),
        # so logs of models that read them can say so; None when the set does not say
        self.depth_source = None
        if self.depth_src is not None and isinstance(self.meta.get('depth'), str):
            recorded = self.meta['depth']
            self.depth_source = 'prior' if recorded == 'MonocularDepth(prior)' else f'data ({recorded})'

    def __len__(self):
        return len(self.keys)

    def _kernel(self, key, lq_shape):
        path = osp.join(self.kernel_root, f'{key}.npy')
        if not osp.isfile(path):
            raise FileNotFoundError(f'no kernel map {path} for {key!r} (dataroot_kernel)')
        kmap = np.load(path).astype(np.float32, copy=False)
        if kmap.ndim != 3 or tuple(kmap.shape[1:]) != tuple(lq_shape):
            raise ValueError(f'kernel map {path} has shape {kmap.shape}, expected k²×{lq_shape[0]}×{lq_shape[1]}')
        return kmap

    def _params(self, key):
        entry = (self.meta.get('images') or {}).get(key) or {}
        params = entry.get('params') or {}
        return {k: float(v) for k, v in params.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def __getitem__(self, index):
        key = self.keys[index]
        s = self.scale
        gt_path, lq_path = self.gt_src.path_of(key), self.lq_src.path_of(key)  # for messages
        gt = decode_bgr(self.gt_src.get(key), gt_path)
        lq = decode_bgr(self.lq_src.get(key), lq_path)
        h, w = lq.shape[:2]
        if gt.shape[0] != h * s or gt.shape[1] != w * s:
            raise ValueError(f'HR {gt_path} is {gt.shape[0]}×{gt.shape[1]} but LR {lq_path} is {h}×{w}: '
                             f'not ×{s} (scale)')
        depth = kmap = None
        if self.depth_src is not None:
            depth = decode_depth(self.depth_src.get(key), self.depth_src.path_of(key))
            if depth.shape != gt.shape[:2]:
                raise ValueError(f'depth map {self.depth_src.path_of(key)} is {depth.shape[0]}×{depth.shape[1]} '
                                 f'but HR image {key!r} is {gt.shape[0]}×{gt.shape[1]} (dataroot_depth)')
        if self.kernel_root is not None:
            kmap = self._kernel(key, (h, w)).transpose(1, 2, 0)  # h×w×k² for joint cropping

        if self.phase == 'train' and self.gt_size is not None:
            rng = rng_for(self.seed, index)
            lsz = self.gt_size // s
            if h < lsz or w < lsz:
                raise ValueError(f'LR image {lq_path} is {h}×{w}, smaller than the crop gt_size/scale = {lsz}')
            top, left = int(rng.integers(0, h - lsz + 1)), int(rng.integers(0, w - lsz + 1))
            lq = lq[top:top + lsz, left:left + lsz]
            gt = gt[top * s:(top + lsz) * s, left * s:(left + lsz) * s]
            if depth is not None:
                depth = depth[top * s:(top + lsz) * s, left * s:(left + lsz) * s]
            if kmap is not None:
                kmap = kmap[top:top + lsz, left:left + lsz]
            flips = draw_flips(rng, self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
            names = [n for n, a in zip(('gt', 'lq', 'depth', 'kmap'), (gt, lq, depth, kmap)) if a is not None]
            out = dict(zip(names, apply_flips([a for a in (gt, lq, depth, kmap) if a is not None], flips)))
            gt, lq, depth, kmap = out['gt'], out['lq'], out.get('depth'), out.get('kmap')
            if kmap is not None:
                # kernels live in image coordinates: flipping / transposing the image does the same to them
                kmap = _transform_kernels(kmap, *flips)

        sample = {'lq': img2tensor(lq, bgr2rgb=True, float32=True), 'gt': img2tensor(gt, bgr2rgb=True, float32=True),
                  'lq_path': self.lq_src.sample_path(key), 'gt_path': self.gt_src.sample_path(key),
                  'params': self._params(key)}
        if depth is not None:
            depth_t = torch.from_numpy(np.ascontiguousarray(depth))[None]
            sample['depth'] = depth_t
            sample['depth_lq'] = F.avg_pool2d(depth_t[None], s)[0]
        if kmap is not None:
            sample['kernel'] = torch.from_numpy(np.ascontiguousarray(kmap.transpose(2, 0, 1)))
        return sample


def _transform_kernels(kmap, hflip, vflip, transpose):
    """Apply the image's flips / transpose to every k×k kernel of an h×w×k² map."""
    h, w, kk = kmap.shape
    k = int(round(kk ** 0.5))
    ker = kmap.reshape(h, w, k, k)
    if hflip:
        ker = ker[:, :, :, ::-1]
    if vflip:
        ker = ker[:, :, ::-1, :]
    if transpose:
        ker = ker.transpose(0, 1, 3, 2)
    return np.ascontiguousarray(ker.reshape(h, w, kk))
