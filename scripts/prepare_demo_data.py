"""Build ``datasets/demo/`` from the real photographs that scikit-image ships (no download).

    python scripts/prepare_demo_data.py [--root datasets/demo] [--source scenes|photos] [--num-scenes 160]
        [--overwrite]
    ssr-prepare-demo-data                  # installed package: datasets/demo under the current directory

Writes (docs/interfaces.md §6) ``hr.lmdb`` + ``depth.lmdb`` (same keys, 16-bit normalised inverse depth),
``val_x4/`` (a fixed spatially variant ×4 validation set, ``scripts/make_sv_testset.py`` layout, with its depth
maps and ground-truth kernel maps) and ``kernel_pca_k21.pth`` (KernelPCA, L = 10, fit on kernels of the
default ×4 distribution). Two sources:

- ``scenes`` (default): RGB-D scenes with EXACT depth composed from the photographs (``ssr_data/scenes.py``,
  as ``scripts/make_scene_data.py`` writes them, ``scenes.json`` included, so the depth network's
  ``SceneDepthDataset`` reads the same LMDBs); the validation set is made of scenes from the held-out
  photographs with their exact depth, blurred with the ``depth`` pattern (blur driven by that depth);
- ``photos``: sub-images of the photographs with the weight-free depth PRIOR (the demo before scenes existed;
  ``scenes.json`` absent, ``meta.json`` of ``val_x4`` says ``MonocularDepth(prior)``).
"""
import argparse
import os
import os.path as osp
import shutil
import sys
import time

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
SCRIPTS = osp.dirname(osp.abspath(__file__))
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from make_sv_testset import make_sv_testset  # noqa: E402
from ssr_arch.depth_arch import MonocularDepth  # noqa: E402
from ssr_data import kernels as K  # noqa: E402
from ssr_data.lmdb_util import LmdbWriter, extract_subimages  # noqa: E402
from ssr_data.ssr_degradation_dataset import encode_depth_png  # noqa: E402
from ssr_utils.install import project_root  # noqa: E402
from ssr_utils.errors import OptionError, exit_on_option_error  # noqa: E402

# photographs only (no synthetic images); chelsea and coffee are held out for validation
TRAIN_PHOTOS = ('astronaut', 'rocket', 'immunohistochemistry', 'hubble_deep_field', 'retina')
VAL_PHOTOS = ('chelsea', 'coffee')


def load_photo(name, max_side=None):
    """BGR uint8 photograph from ``skimage.data``, area-downscaled so its long side is <= ``max_side``."""
    import skimage.data
    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=2)
    img = np.ascontiguousarray(img[:, :, 2::-1])
    h, w = img.shape[:2]
    if max_side and max(h, w) > max_side:
        f = max_side / max(h, w)
        img = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    return img


def _rgb_tensor(img_bgr):
    return torch.from_numpy(np.ascontiguousarray(img_bgr[:, :, ::-1].transpose(2, 0, 1))).float().div_(255.0)[None]


SOURCES = ('scenes', 'photos')


def prepare_scene_data(root, num_scenes=160, scene_size=192, num_val=4, val_size=128, scale=4, kernel_size=21,
                       seed=0, show_progress=True):
    """``hr.lmdb`` + ``depth.lmdb`` + ``scenes.json`` of ``num_scenes`` training scenes (seed ``seed``, training
    photographs) and ``val_x4`` from ``num_val`` scenes of the held-out photographs (seed ``seed + 1``) with
    their exact depth and depth-driven blur."""
    from make_scene_data import make_scene_data
    from ssr_data.scenes import SceneGenerator, default_texture_photos
    make_scene_data(root, num_scenes, (scene_size, scene_size), seed=seed, split='train', fmt='lmdb',
                    overwrite=True, show_progress=show_progress)
    gen = SceneGenerator(default_texture_photos('test'), (val_size, val_size))
    val_images, depth_maps = [], {}
    for i in range(num_val):
        rgb, depth, _ = gen.generate((seed + 1, i))
        key = f'scene_{i:06d}'
        val_images.append((key, np.ascontiguousarray(rgb[:, :, ::-1])))
        depth_maps[key] = depth
    make_sv_testset(val_images, osp.join(root, f'val_x{scale}'), scale=scale, kernel_size=kernel_size,
                    pattern='depth', seed=seed, depth_maps=depth_maps, show_progress=show_progress)


def prepare_demo_data(root=osp.join(project_root(), 'datasets', 'demo'), train_photos=TRAIN_PHOTOS, val_photos=VAL_PHOTOS,
                      max_side=512, crop_size=192, step=160, val_crop=128, val_per_photo=2, scale=4,
                      kernel_size=21, pca_dim=10, pca_samples=20000, seed=0, overwrite=False, show_progress=True,
                      source='scenes', num_scenes=160, scene_size=192, num_val_scenes=4):
    """Build the demo data under ``root``; every size is an argument so tests can make a tiny copy.
    ``source``: ``scenes`` (exact depth; ``num_scenes`` / ``scene_size`` / ``num_val_scenes`` at ``val_crop``)
    or ``photos`` (``train_photos`` / ``val_photos`` with the depth prior)."""
    if source not in SOURCES:
        raise OptionError('--source', source, f'expected one of {", ".join(SOURCES)}')
    if osp.exists(root):
        if not overwrite:
            raise FileExistsError(f'{root} already exists; pass --overwrite to rebuild it')
        shutil.rmtree(root)
    os.makedirs(root)
    if source == 'scenes':
        prepare_scene_data(root, num_scenes, scene_size, num_val_scenes, val_crop, scale, kernel_size, seed,
                           show_progress)
    else:
        prepare_photo_data(root, train_photos, val_photos, max_side, crop_size, step, val_crop, val_per_photo, scale,
                           kernel_size, seed, show_progress)
    pca = K.KernelPCA.fit(K.random_kernels(pca_samples, kernel_size, K.default_sigma_range(scale), seed=seed),
                          pca_dim)
    pca.save(osp.join(root, f'kernel_pca_k{kernel_size}.pth'))
    return root


def prepare_photo_data(root, train_photos, val_photos, max_side, crop_size, step, val_crop, val_per_photo, scale,
                       kernel_size, seed, show_progress):
    """Sub-images of photographs with the weight-free depth prior (``source: photos``)."""
    depth_net = MonocularDepth('prior')
    with LmdbWriter(osp.join(root, 'hr.lmdb')) as hr_db, \
            LmdbWriter(osp.join(root, 'depth.lmdb'), compress_level=0) as depth_db:
        for name in train_photos:
            img = load_photo(name, max_side)
            depth = depth_net(_rgb_tensor(img))[0, 0].numpy()
            depth16 = np.round(np.clip(depth, 0, 1) * 65535.0).astype(np.uint16)
            for (idx, crop), (_, dcrop) in zip(extract_subimages(img, crop_size, step),
                                                extract_subimages(depth16, crop_size, step)):
                key = f'{name}_s{idx:03d}'
                hr_db.put(key, crop)
                depth_db.put_encoded(key, encode_depth_png(dcrop), (dcrop.shape[0], dcrop.shape[1], 1))
    val_images = []
    for name in val_photos:
        img = load_photo(name, max_side)
        h, w = img.shape[:2]
        if h < val_crop or w < val_crop:
            raise ValueError(f'photo {name} ({h}×{w}) is smaller than val_crop {val_crop}')
        top = (h - val_crop) // 2
        lefts = np.linspace(0, w - val_crop, val_per_photo + 2)[1:-1] if val_per_photo > 1 else [(w - val_crop) / 2]
        for i, left in enumerate(lefts):
            left = int(round(left))
            val_images.append((f'{name}_{i + 1:02d}', np.ascontiguousarray(img[top:top + val_crop,
                                                                                left:left + val_crop])))
    make_sv_testset(val_images, osp.join(root, f'val_x{scale}'), scale=scale, kernel_size=kernel_size,
                    pattern='mixed', seed=seed, depth_net=depth_net, show_progress=show_progress)


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', default=osp.join(project_root(), 'datasets', 'demo'),
                        help='default: datasets/demo under the repository root (installed: the current directory)')
    parser.add_argument('--source', default='scenes', help='scenes (exact depth, default) | photos (depth prior)')
    parser.add_argument('--num-scenes', type=int, default=160, help='training scenes (source scenes)')
    parser.add_argument('--scene-size', type=int, default=192, help='side of a training scene (source scenes)')
    parser.add_argument('--num-val', type=int, default=4, help='validation scenes (source scenes)')
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    start = time.time()
    root = prepare_demo_data(args.root, overwrite=args.overwrite, source=args.source, num_scenes=args.num_scenes,
                             scene_size=args.scene_size, num_val_scenes=args.num_val)
    print(f'demo data in {root} ({time.time() - start:.1f} s)')


if __name__ == '__main__':
    main()
