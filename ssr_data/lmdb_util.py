"""LMDB files in BasicSR's format: PNG-encoded values, ``meta_info.txt`` lines ``<key>.png (h,w,c) level``.

Readers (BasicSR's ``LmdbBackend``/``imfrombytes``) decode the value and trust the decoded shape.
BasicSR's LMDB datasets list the keys from ``meta_info.txt`` and refuse an LMDB without one, so
``LmdbWriter`` writes it last, and builds the whole LMDB under a temporary sibling name that is renamed
to the final one only after that: an LMDB cut short by a crash or a kill never appears under its name.
"""
import os.path as osp

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


def lmdb_is_complete(lmdb_path):
    """An LMDB this project (or BasicSR) finished writing has its ``meta_info.txt``."""
    return osp.isfile(osp.join(lmdb_path, 'meta_info.txt'))


class LmdbWriter:
    """Write images into a new LMDB in BasicSR's format; use as a context manager.

    The LMDB is built in ``.<name>.partial-<pid>`` beside ``lmdb_path``; ``close()`` (a normal end of the
    ``with`` block) commits, writes ``meta_info.txt`` and renames the folder to ``lmdb_path``. An
    exception in the block discards it (``abort()``); a kill leaves only the hidden temporary folder,
    which the next writer of the same path removes. ``overwrite=False`` refuses an existing folder
    (nothing already written is lost); with ``overwrite`` it is replaced only by a complete new LMDB.
    The map size is only an address-space reservation (1 TiB by default): the file grows as written.
    ``report``: where notes go (leftovers of killed runs that are removed).
    """

    def __init__(self, lmdb_path, overwrite=False, compress_level=1, commit_every=200, map_size=1 << 40,
                 report=None):
        import lmdb
        from ssr_utils.atomic_file import atomic_directory
        if not lmdb_path.endswith('.lmdb'):
            raise ValueError(f"LMDB path must end with '.lmdb': {lmdb_path}")
        if osp.exists(lmdb_path) and not overwrite:
            state = '' if lmdb_is_complete(lmdb_path) else \
                ' but is incomplete (no meta_info.txt: an interrupted run of another tool?)'
            raise LmdbExistsError(f'{lmdb_path} already exists{state}; pass overwrite to replace it')
        self.path = lmdb_path
        self.compress_level = compress_level
        self.commit_every = commit_every
        self._folder = atomic_directory(lmdb_path, overwrite=overwrite, report=report)
        self.build_path = self._folder.__enter__()
        try:
            self.env = lmdb.open(self.build_path, map_size=map_size)
            self.txn = self.env.begin(write=True)
        except BaseException as err:
            self._folder.__exit__(type(err), err, err.__traceback__)
            raise
        self.meta = []
        self._pending = 0
        self._closed = False

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
        """Commit, write ``meta_info.txt`` (last) and move the LMDB to its final path."""
        if self._closed:
            return
        from ssr_utils.atomic_file import atomic_write
        try:
            if self.txn is not None:
                self.txn.commit()
                self.txn = None
            self.env.sync(True)
            self.env.close()
            with atomic_write(osp.join(self.build_path, 'meta_info.txt'), 'w') as f:
                for key, (h, w, c) in self.meta:
                    f.write(f'{key}.png ({h},{w},{c}) {self.compress_level}\n')
        except BaseException as err:
            self._closed = True
            self._folder.__exit__(type(err), err, err.__traceback__)
            raise
        self._closed = True
        self._folder.__exit__(None, None, None)

    def abort(self, exc=None):
        """Discard everything written (nothing appears at the final path)."""
        if self._closed:
            return
        self._closed = True
        if self.txn is not None:
            self.txn.abort()
            self.txn = None
        self.env.close()
        err = exc if exc is not None else RuntimeError('LMDB writing aborted')
        self._folder.__exit__(type(err), err, err.__traceback__)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)
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
