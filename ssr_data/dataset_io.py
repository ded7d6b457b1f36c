"""What the SSR datasets share: image and depth IO from BasicSR LMDBs or folders (BasicSR's conventions: BGR
arrays, keys without extension, 16-bit depth PNGs with 1 = near), per-sample random generators and BasicSR's
flips, and the scale / crop-size check. The user-facing image IO of the CLI (EXIF, alpha, bit depths) is
:mod:`ssr_utils.image_io`; these read what the data-preparation scripts wrote."""
import os
import os.path as osp

import cv2
import numpy as np

from basicsr.utils import FileClient, imfrombytes
from ssr_data.degradations import check_scale
from ssr_utils.errors import OptionError
from ssr_utils.image_io import IMAGE_EXTENSIONS


def is_lmdb(path):
    return isinstance(path, str) and path.rstrip('/').endswith('.lmdb')


def list_image_names(folder, key):
    """The image file names of ``folder`` (sorted; ``OptionError`` on ``key`` when there are none)."""
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
            self._stems = {osp.splitext(n)[0]: n for n in list_image_names(self.root, self.option_key)}
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


def decode_bgr(buf, path, float32=True):
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


# -------------------------------------------------------------------------------------------------
# per-sample randomness and augmentation, the crop-size check
# -------------------------------------------------------------------------------------------------
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
    """``(scale, crop size or None)`` of a dataset's options, checked (``OptionError`` naming the key)."""
    scale = check_scale(opt)
    gt_size = opt.get(gt_size_key)
    if gt_size is not None:
        if isinstance(gt_size, bool) or not isinstance(gt_size, int) or gt_size < 1:
            raise OptionError(gt_size_key, gt_size, 'expected a positive integer')
        if gt_size % scale:
            raise OptionError(gt_size_key, gt_size, f'the crop size must be divisible by scale {scale}')
    return scale, gt_size
