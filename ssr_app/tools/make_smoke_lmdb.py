"""Tiny paired LMDBs (HR 64x64 crops of scikit-image photographs, bicubic x4 LR) for plumbing checks.

``python scripts/make_smoke_lmdb.py [-o datasets/smoke] [--count 8]`` writes ``gt.lmdb`` and ``lq.lmdb``.
"""
import argparse
import os.path as osp
import sys

import cv2
import numpy as np


from ssr_data.lmdb_util import LmdbWriter, extract_subimages
from ssr_utils.install import project_root

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')


def make_smoke_lmdb(out_dir, count=8, size=64, scale=4, overwrite=True):
    import skimage.data
    crops = []
    for name in PHOTOS:
        rgb = getattr(skimage.data, name)()
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        for index, crop in extract_subimages(bgr, size, size * 2):
            crops.append((f'{name}_s{index:03d}', crop))
    if len(crops) < count:
        raise ValueError(f'only {len(crops)} crops of {size}px available, asked for {count}')
    step = len(crops) / count
    chosen = [crops[int(i * step)] for i in range(count)]
    with LmdbWriter(osp.join(out_dir, 'gt.lmdb'), overwrite=overwrite) as gt_writer, \
            LmdbWriter(osp.join(out_dir, 'lq.lmdb'), overwrite=overwrite) as lq_writer:
        for key, crop in chosen:
            gt_writer.put(key, crop)
            lq_writer.put(key, cv2.resize(crop, (size // scale, size // scale), interpolation=cv2.INTER_CUBIC))
    return [key for key, _ in chosen]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('-o', '--output', default=osp.join(project_root(), 'datasets', 'smoke'))
    parser.add_argument('--count', type=int, default=8)
    args = parser.parse_args(argv)
    keys = make_smoke_lmdb(args.output, args.count)
    print(f'wrote {len(keys)} pairs to {osp.abspath(args.output)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
