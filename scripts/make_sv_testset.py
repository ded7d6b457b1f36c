"""Write a fixed spatially variant test set from HR images (LR PNG, HR PNG, kernel maps, depth, the pattern).

Layout under ``--output``: ``gt/<stem>.png``, ``lq/<stem>.png``, ``kernel/<stem>.npy`` (float32 k²×h×w),
``depth/<stem>.png`` (16-bit, HR size, 1 = near) and ``meta.json`` (pattern, seed, scale, kernel_size and
per-image parameters). Read it back with ``type: SSRPairedDataset``, ``dataroot: <output>``.

    python scripts/make_sv_testset.py --input datasets/DIV2K/DIV2K_valid_HR --output datasets/div2k_sv_x4 \
        --scale 4 --pattern mixed --seed 0 [--depth <depth folder|lmdb>] [--crop-size 256]
"""
import argparse
import json
import os
import os.path as osp
import shutil
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ssr_data import kernels as K  # noqa: E402
from ssr_data.degradations import add_gaussian_noise, jpeg_compress, quantize, sv_blur_downsample  # noqa: E402
from ssr_data.ssr_degradation_dataset import (ImageSource, decode_depth, list_images, lmdb_keys,  # noqa: E402
                                              write_depth_png)
from ssr_utils.errors import OptionError  # noqa: E402

MIXED_ORDER = ('linear', 'rotate', 'block', 'depth')


def read_hr_images(path):
    """``[(stem, BGR uint8 H×W×3)]`` from a folder or a BasicSR LMDB."""
    src = ImageSource(path, 'gt', '--input')
    names = lmdb_keys(path, '--input') if src.lmdb else [osp.splitext(n)[0] for n in list_images(path, '--input')]
    images = []
    for name in names:
        img = cv2.imdecode(np.frombuffer(src.get(name), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f'cannot decode image {src.path_of(name)}')
        images.append((name, img))
    return images


def _tensor_rgb(img_bgr):
    return torch.from_numpy(np.ascontiguousarray(img_bgr[:, :, ::-1].transpose(2, 0, 1))).float().div_(255.0)


def _to_bgr_u8(t):
    return np.ascontiguousarray((t.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy()[:, :, ::-1])


def make_sv_testset(images, output, scale=4, kernel_size=21, pattern='mixed', seed=0, depth_maps=None,
                    depth_net=None, sigma_range=None, rho_min=0.2, block_size=8, crop_size=None, noise=0.0,
                    jpeg=None, overwrite=False, show_progress=True):
    """Write the test set; returns the meta dict.

    Args:
        images: ``[(stem, BGR uint8 H×W×3)]``.
        depth_maps: optional ``{stem: H×W float in [0, 1]}`` at HR size; otherwise ``depth_net`` (a
            ``MonocularDepth``, default the weight-free prior) estimates depth from the HR image.
        pattern: ``linear`` | ``rotate`` | ``block`` | ``depth`` | ``mixed`` (cycles through the four).
        crop_size: centre crop (divisible by scale); default: the largest multiple of scale.
        noise: Gaussian noise σ on the 0..255 scale (0 = none); jpeg: integer quality or None.
    """
    kernel_size = K.check_kernel_size(kernel_size, '--kernel-size')
    if pattern not in K.PATTERNS + ('mixed', ):
        raise OptionError('--pattern', pattern, f'expected one of {", ".join(K.PATTERNS + ("mixed", ))}')
    if crop_size is not None and crop_size % scale:
        raise OptionError('--crop-size', crop_size, f'must be divisible by scale {scale}')
    if jpeg is not None and (isinstance(jpeg, bool) or not isinstance(jpeg, int) or not 1 <= jpeg <= 100):
        raise OptionError('--jpeg', jpeg, 'expected an integer quality in [1, 100]')
    sigma_range = tuple(sigma_range or K.default_sigma_range(scale))
    if osp.exists(output):
        if not overwrite:
            raise FileExistsError(f'{output} already exists; pass --overwrite to replace it')
        shutil.rmtree(output)
    for sub in ('gt', 'lq', 'kernel', 'depth'):
        os.makedirs(osp.join(output, sub))
    if depth_maps is None and depth_net is None:
        from ssr_arch.depth_arch import MonocularDepth
        depth_net = MonocularDepth('prior')
    meta = {'pattern': pattern, 'seed': int(seed), 'scale': int(scale), 'kernel_size': kernel_size,
            'sigma_range': list(sigma_range), 'rho_min': rho_min, 'noise': float(noise), 'jpeg': jpeg,
            'depth': 'given' if depth_maps is not None else f'MonocularDepth({depth_net.backend})', 'images': {}}
    for idx, (stem, img) in enumerate(tqdm(images, desc='sv test set', disable=not show_progress)):
        h, w = img.shape[:2]
        if crop_size is not None:
            if h < crop_size or w < crop_size:
                raise ValueError(f'HR image {stem!r} is {h}×{w}, smaller than --crop-size {crop_size}')
            top, left = (h - crop_size) // 2, (w - crop_size) // 2
            ch = cw = crop_size
        else:
            top = left = 0
            ch, cw = h - h % scale, w - w % scale
        if ch < scale * 2 or cw < scale * 2:
            raise ValueError(f'HR image {stem!r} ({h}×{w}) is too small for scale {scale}')
        hr = img[top:top + ch, left:left + cw]
        gt = _tensor_rgb(hr)
        if depth_maps is not None:
            if stem not in depth_maps:
                raise KeyError(f'no depth map for {stem!r}')
            depth = np.asarray(depth_maps[stem], dtype=np.float32)
            if depth.shape != (h, w):
                raise ValueError(f'depth map of {stem!r} is {depth.shape}, HR image is {h}×{w}')
            depth = torch.from_numpy(np.ascontiguousarray(depth[top:top + ch, left:left + cw]))
        else:
            depth = depth_net(gt[None])[0, 0]
        depth = (depth.clamp(0, 1) * 65535.0).round() / 65535.0  # exactly what the 16-bit PNG stores
        depth_lq = F.avg_pool2d(depth[None, None], scale)[0, 0]
        p = MIXED_ORDER[idx % len(MIXED_ORDER)] if pattern == 'mixed' else pattern
        img_seed = int(np.random.default_rng([int(seed), idx]).integers(0, 2**31 - 1))
        smaj, smin, theta, params = K.pattern_params(p, ch // scale, cw // scale, img_seed, sigma_range, rho_min,
                                                     depth_lq=depth_lq, block=block_size)
        kmap = K.kernel_map_from_params(smaj, smin, theta, kernel_size)
        lq = sv_blur_downsample(gt[None], kmap, scale)[0].clamp(0, 1)
        if noise > 0:
            lq = add_gaussian_noise(lq, noise / 255.0, False, np.random.default_rng([int(seed), idx, 1]))
        lq = jpeg_compress(lq, jpeg) if jpeg is not None else quantize(lq)
        cv2.imwrite(osp.join(output, 'gt', f'{stem}.png'), _to_bgr_u8(gt))
        cv2.imwrite(osp.join(output, 'lq', f'{stem}.png'), _to_bgr_u8(lq))
        np.save(osp.join(output, 'kernel', f'{stem}.npy'), kmap[0].numpy().astype(np.float32))
        write_depth_png(osp.join(output, 'depth', f'{stem}.png'), depth.numpy())
        numbers = {'pattern_id': float(K.PATTERNS.index(p)), 'focus': float(params.get('focus', -1.0)),
                   'rho': float(params.get('rho', -1.0)), 'theta': float(params.get('theta', -1.0)),
                   'sigma_mean': float(smaj.mean()), 'noise_sigma': float(noise) / 255.0,
                   'jpeg_quality': float(jpeg if jpeg is not None else -1)}
        meta['images'][stem] = {'pattern': p, 'seed': img_seed, 'crop': [top, left, ch, cw], 'params': numbers}
    with open(osp.join(output, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--input', required=True, help='HR folder or BasicSR LMDB')
    parser.add_argument('--output', required=True)
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--kernel-size', type=int, default=21)
    parser.add_argument('--pattern', default='mixed', help='linear | rotate | block | depth | mixed')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--depth', default=None, help='depth folder / LMDB with the same stems (else estimated)')
    parser.add_argument('--depth-backend', default='prior', help='prior | dpt | depth_anything')
    parser.add_argument('--depth-model-path', default=None)
    parser.add_argument('--crop-size', type=int, default=None)
    parser.add_argument('--noise', type=float, default=0.0, help='Gaussian noise sigma (0..255 scale)')
    parser.add_argument('--jpeg', type=int, default=None, help='JPEG quality (integer)')
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    images = read_hr_images(args.input)
    depth_maps = depth_net = None
    if args.depth:
        src = ImageSource(args.depth, 'depth', '--depth')
        depth_maps = {stem: decode_depth(src.get(stem), src.path_of(stem)) for stem, _ in images}
    else:
        from ssr_arch.depth_arch import MonocularDepth
        depth_net = MonocularDepth(args.depth_backend, args.depth_model_path)
    meta = make_sv_testset(images, args.output, args.scale, args.kernel_size, args.pattern, args.seed, depth_maps,
                           depth_net, crop_size=args.crop_size, noise=args.noise, jpeg=args.jpeg,
                           overwrite=args.overwrite)
    print(f'wrote {len(meta["images"])} images to {args.output}')


if __name__ == '__main__':
    main()
