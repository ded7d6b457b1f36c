"""Write RGB-D scenes with exact depth (``ssr_data/scenes.py``) as a BasicSR LMDB pair or as image + depth folders.

    # training scenes: hr.lmdb + depth.lmdb for SSRDegradationDataset (dataroot_gt / dataroot_depth)
    python scripts/make_scene_data.py --output datasets/scenes/train --num 400 --size 256 --seed 0
    # held-out scenes from held-out photographs, as PNG folders (e.g. to evaluate a depth network)
    python scripts/make_scene_data.py --output datasets/scenes/test --num 100 --size 256 --seed 1 \
        --split test --format folder

Layouts under ``--output`` (keys ``scene_000000``, ``scene_000001``, ...; scene i is
``SceneGenerator.generate((seed, i))``, so any scene can be regenerated from its key):
  lmdb:   ``hr.lmdb`` (RGB as BasicSR's PNG values), ``depth.lmdb`` (same keys, 1-channel 16-bit PNG,
          0..65535 ↔ 0..1 normalised inverse depth, 1 = near; the layout scripts/make_depth_lmdb.py writes)
  folder: ``image/<key>.png`` (8-bit RGB), ``depth/<key>.png`` (16-bit, as above), with ``--labels`` also
          ``labels/<key>.png`` (16-bit: 0 backdrop, 1 ground, 2+ objects, the surface at each pixel centre)
  both:   ``scenes.json``, written last (its presence marks a complete set): generator settings, the texture
          photographs, and per scene its seed, inverse-depth range, camera and surfaces.
"""
import argparse
import json
import multiprocessing
import os
import os.path as osp
import shutil
import sys
import time

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ssr_data.lmdb_util import LmdbExistsError, LmdbWriter, encode_png  # noqa: E402
from ssr_data.scenes import SPLITS, SceneConfig, SceneGenerator, default_texture_photos, \
    texture_photos_from_folder  # noqa: E402
from ssr_data.ssr_degradation_dataset import depth_to_uint16, encode_depth_png  # noqa: E402
from ssr_utils.atomic_file import atomic_write  # noqa: E402
from ssr_utils.errors import OptionError, exit_on_option_error  # noqa: E402

FORMATS = ('lmdb', 'folder')


def scene_key(index):
    return f'scene_{index:06d}'


def load_textures(split='train', texture_dirs=(), exclude=(), shared_dir='auto', default_textures=True):
    """The texture photographs: the defaults of ``split`` (unless ``default_textures`` is False) plus every
    image of ``texture_dirs``; ``exclude`` names are left out."""
    photos = default_texture_photos(split, shared_dir, exclude) if default_textures else []
    for folder in texture_dirs:
        photos += [p for p in texture_photos_from_folder(folder) if p.name not in set(exclude)]
    if not photos:
        raise OptionError('--texture-dir', list(texture_dirs), 'no texture photographs')
    return photos


def _scene_summary(key, meta):
    cam = meta['camera']
    surfaces = [{k: s[k] for k in ('kind', 'texture', 'visible', 'shape', 'grounded', 'dome', 'center_depth',
                                    'distance', 'end_depth') if k in s} for s in meta['surfaces']]
    return {'key': key, 'seed': meta['seed'], 'inv_depth_range': list(meta['inv_depth_range']),
            'camera': {k: cam[k] for k in ('fov_deg', 'pitch_deg', 'roll_deg', 'focal_px', 'horizon_row')},
            'haze': meta['haze'], 'surfaces': surfaces}


# one generator per worker process, built once by the pool's initializer
_WORKER = {}


def _init_worker(textures, size, config):
    cv2.setNumThreads(1)
    _WORKER['gen'] = SceneGenerator(textures, size, config)


def _render(job):
    index, seed, want_labels = job
    rgb, depth, meta = _WORKER['gen'].generate((seed, index))
    labels = meta.pop('labels')
    return index, rgb, depth, (labels if want_labels else None), meta


def _prepare_output(output, fmt, overwrite):
    parts = ['hr.lmdb', 'depth.lmdb'] if fmt == 'lmdb' else ['image', 'depth', 'labels']
    existing = [p for p in parts + ['scenes.json'] if osp.exists(osp.join(output, p))]
    if existing and not overwrite:
        raise FileExistsError(f'{output} already holds {existing}; pass --overwrite to replace them')
    for p in existing:
        path = osp.join(output, p)
        if osp.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    os.makedirs(output, exist_ok=True)


def make_scene_data(output, num, size=(256, 256), seed=0, split='train', fmt='lmdb', texture_dirs=(),
                    exclude=(), shared_dir='auto', default_textures=True, config=None, workers=1, labels=False,
                    overwrite=False, show_progress=True, textures=None, compact=False):
    """Write ``num`` scenes under ``output``; returns ``{'num', 'seconds', 'scenes_per_s', 'output'}``.

    ``textures`` (a list of :class:`ssr_data.scenes.TexturePhoto`) replaces the split/dirs selection.
    ``workers`` > 1 renders in that many processes; the output is identical to one process's.
    ``compact``: depth PNGs compressed (about 1/3 smaller, slower to decode), as make_depth_lmdb.py's.
    """
    if fmt not in FORMATS:
        raise OptionError('--format', fmt, f'expected one of {FORMATS}')
    if split not in SPLITS:
        raise OptionError('--split', split, f'expected one of {SPLITS}')
    if num < 1:
        raise OptionError('--num', num, 'expected at least 1 scene')
    if seed < 0:
        raise OptionError('--seed', seed, 'expected an integer >= 0')
    if workers < 1:
        raise OptionError('--workers', workers, 'expected at least 1')
    if isinstance(size, int):
        size = (size, size)
    config = config or SceneConfig()
    if textures is None:
        textures = load_textures(split, texture_dirs, exclude, shared_dir, default_textures)
    _prepare_output(output, fmt, overwrite)
    jobs = [(i, seed, labels) for i in range(num)]
    summaries = []
    start = time.perf_counter()
    bar = tqdm(total=num, desc='scenes', unit='scene', disable=not show_progress)
    pool = None
    try:
        if workers > 1:
            ctx = multiprocessing.get_context('fork' if 'fork' in multiprocessing.get_all_start_methods() else None)
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(textures, size, config))
            results = pool.imap(_render, jobs, chunksize=4)
        else:
            _init_worker(textures, size, config)
            results = map(_render, jobs)
        if fmt == 'lmdb':
            with LmdbWriter(osp.join(output, 'hr.lmdb')) as hr_db, \
                    LmdbWriter(osp.join(output, 'depth.lmdb'), compress_level=1 if compact else 0) as depth_db:
                for index, rgb, depth, _, meta in results:
                    key = scene_key(index)
                    hr_db.put(key, np.ascontiguousarray(rgb[:, :, ::-1]))
                    depth_db.put_encoded(key, encode_depth_png(depth_to_uint16(depth), compact), depth.shape + (1,))
                    summaries.append(_scene_summary(key, meta))
                    bar.update(1)
        else:
            for index, rgb, depth, label_map, meta in results:
                key = scene_key(index)
                with atomic_write(osp.join(output, 'image', key + '.png')) as f:
                    f.write(encode_png(np.ascontiguousarray(rgb[:, :, ::-1])))
                with atomic_write(osp.join(output, 'depth', key + '.png')) as f:
                    f.write(encode_depth_png(depth_to_uint16(depth), compact))
                if label_map is not None:
                    with atomic_write(osp.join(output, 'labels', key + '.png')) as f:
                        f.write(encode_png(label_map.astype(np.uint16)))
                summaries.append(_scene_summary(key, meta))
                bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    seconds = time.perf_counter() - start
    info = {'generator': 'ssr_data.scenes.SceneGenerator', 'format': fmt, 'num': num, 'size': list(size),
            'seed': seed, 'seed_of_scene_i': '(seed, i)', 'split': split,
            'textures': [p.name for p in textures], 'config': config.to_dict(),
            'depth': 'normalised inverse depth (1 = near), min-max per scene, 16-bit PNG 0..65535', 'scenes': summaries}
    with atomic_write(osp.join(output, 'scenes.json'), 'w') as f:
        json.dump(info, f, indent=1)
    return {'num': num, 'seconds': seconds, 'scenes_per_s': num / seconds, 'output': output}


def _size(text):
    parts = [int(p) for p in text.lower().replace('x', ',').split(',') if p]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 16:
        raise argparse.ArgumentTypeError(f'expected N or HxW with sides >= 16, got {text!r}')
    return tuple(parts)


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--output', required=True, help='folder to write into')
    parser.add_argument('--num', type=int, required=True, help='number of scenes')
    parser.add_argument('--size', type=_size, default=(256, 256), help='N or HxW (default 256)')
    parser.add_argument('--seed', type=int, default=0, help='scene i is generated from the seed (seed, i)')
    parser.add_argument('--split', default='train', choices=SPLITS,
                        help='default texture photographs: train (held-out ones excluded), test (only those), all')
    parser.add_argument('--format', default='lmdb', choices=FORMATS, dest='fmt')
    parser.add_argument('--texture-dir', action='append', default=[], help='add the images of a folder as textures')
    parser.add_argument('--no-default-textures', action='store_true', help='use only --texture-dir photographs')
    parser.add_argument('--exclude', default='', help='comma-separated texture names to leave out')
    parser.add_argument('--shared-dir', default='auto',
                        help="McMaster photographs folder ('auto': ../shared/data/train_hr when present; 'none')")
    parser.add_argument('--labels', action='store_true', help='folder format: also write labels/<key>.png')
    parser.add_argument('--workers', type=int, default=1, help='processes (the output does not depend on it)')
    parser.add_argument('--compact', action='store_true', help='compressed depth PNGs: ~1/3 smaller, slower to decode')
    parser.add_argument('--overwrite', action='store_true', help='replace what --output already holds')
    args = parser.parse_args(argv)
    try:
        info = make_scene_data(args.output, args.num, args.size, args.seed, args.split, args.fmt, args.texture_dir,
                               [e for e in args.exclude.split(',') if e],
                               None if args.shared_dir == 'none' else args.shared_dir,
                               not args.no_default_textures, workers=args.workers, labels=args.labels,
                               overwrite=args.overwrite, compact=args.compact)
    except (FileExistsError, LmdbExistsError) as err:
        sys.exit(f'error: {err}')
    print(f"wrote {info['num']} scenes to {info['output']} in {info['seconds']:.1f} s "
          f"({info['scenes_per_s']:.1f} scenes/s, {args.workers} worker(s))")


if __name__ == '__main__':
    main()
