"""LMDB files in BasicSR's format: PNG-encoded values, ``meta_info.txt`` lines ``<key>.png (h,w,c) level``.

Readers (BasicSR's ``LmdbBackend``/``imfrombytes``) decode the value and trust the decoded shape.
"""
import os
import os.path as osp
import shutil

import cv2
import numpy as np


class LmdbExistsError(FileExistsError):
    pass


def encode_png(img, compress_level=1):
    """PNG bytes of an HxW or HxWxC uint8/uint16 array (BGR order, as cv2 reads images)."""
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, int(compress_level)])
    if not ok:
        raise ValueError(f'cannot PNG-encode an array of shape {img.shape} and dtype {img.dtype}')
    return buf.tobytes()


def shape_of(img):
    h, w = img.shape[:2]
    c = 1 if img.ndim == 2 else img.shape[2]
    return h, w, c


class LmdbWriter:
    """Write images into a new LMDB in BasicSR's format; use as a context manager.

    ``overwrite=False`` refuses an existing folder (nothing already written is lost). The map size is
    only an address-space reservation (1 TiB by default): LMDB's file grows with what is written.
    """

    def __init__(self, lmdb_path, overwrite=False, compress_level=1, commit_every=200, map_size=1 << 40):
        import lmdb
        if not lmdb_path.endswith('.lmdb'):
            raise ValueError(f"LMDB path must end with '.lmdb': {lmdb_path}")
        if osp.exists(lmdb_path):
            if not overwrite:
                raise LmdbExistsError(f'{lmdb_path} already exists; pass overwrite to replace it')
            shutil.rmtree(lmdb_path)
        os.makedirs(osp.dirname(osp.abspath(lmdb_path)), exist_ok=True)
        self.path = lmdb_path
        self.compress_level = compress_level
        self.commit_every = commit_every
        self.env = lmdb.open(lmdb_path, map_size=map_size)
        self.txn = self.env.begin(write=True)
        self.meta = []
        self._pending = 0

    def put_encoded(self, key, value, shape):
        # BasicSR recovers keys from meta_info.txt with `line.split('.')[0]`
        if not key or not key.isascii() or '.' in key or ' ' in key:
            raise ValueError(f'LMDB key {key!r} must be ASCII without dots or spaces')
        self.txn.put(key.encode('ascii'), value)
        self.meta.append((key, shape))
        self._pending += 1
        if self._pending >= self.commit_every:
            self.commit()

    def put(self, key, img):
        self.put_encoded(key, encode_png(img, self.compress_level), shape_of(img))

    def commit(self):
        self.txn.commit()
        self.txn = self.env.begin(write=True)
        self._pending = 0

    def close(self):
        if self.txn is not None:
            self.txn.commit()
            self.txn = None
        self.env.close()
        with open(osp.join(self.path, 'meta_info.txt'), 'w') as f:
            for key, (h, w, c) in self.meta:
                f.write(f'{key}.png ({h},{w},{c}) {self.compress_level}\n')

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False


def read_meta_info(lmdb_path):
    """``[(key, (h, w, c)), ...]`` from an LMDB's ``meta_info.txt``."""
    meta_path = osp.join(lmdb_path, 'meta_info.txt')
    if not osp.isfile(meta_path):
        raise FileNotFoundError(f'{meta_path} does not exist (not a BasicSR LMDB?)')
    entries = []
    with open(meta_path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(' ')
            try:
                shape = tuple(int(v) for v in parts[1].strip('()').split(','))
            except (IndexError, ValueError):
                raise ValueError(f'{meta_path}:{line_no}: expected "<key>.png (h,w,c) level", got {line!r}')
            entries.append((parts[0].split('.')[0], shape))
    return entries


def read_lmdb_image(lmdb_path, key, flag=cv2.IMREAD_UNCHANGED):
    """Decode one value of an LMDB (for tools and tests; datasets use BasicSR's FileClient)."""
    from ssr_utils.compat import shared_lmdb_env
    env = shared_lmdb_env(lmdb_path)
    with env.begin(write=False) as txn:
        buf = txn.get(key.encode('ascii'))
    if buf is None:
        raise KeyError(f'key {key!r} not found in {lmdb_path}')
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), flag)
    if img is None:
        raise ValueError(f'value of key {key!r} in {lmdb_path} is not a decodable image')
    return img


def extract_subimages(img, crop_size, step, thresh_size=0):
    """Overlapping ``crop_size`` crops every ``step`` pixels (BasicSR's ``extract_subimages`` scheme).

    A last row/column of crops is aligned to the border when more than ``thresh_size`` pixels remain.
    Yields ``(index, crop)`` with 1-based indices, as BasicSR names them ``<stem>_s001``.
    """
    h, w = img.shape[:2]
    if h < crop_size or w < crop_size:
        yield 1, img
        return

    def starts(length):
        pos = list(range(0, length - crop_size + 1, step))
        if length - (pos[-1] + crop_size) > thresh_size:
            pos.append(length - crop_size)
        return pos

    index = 0
    for y in starts(h):
        for x in starts(w):
            index += 1
            yield index, np.ascontiguousarray(img[y:y + crop_size, x:x + crop_size, ...])
