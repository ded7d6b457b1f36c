"""Write a fixed spatially variant test set from HR images (LR PNG, HR PNG, kernel maps, depth, the pattern).

Layout under ``--output``: ``gt/<stem>.png``, ``lq/<stem>.png``, ``kernel/<stem>.npy`` (float32 k²×h×w),
``depth/<stem>.png`` (16-bit, HR size, 1 = near) and ``meta.json`` (pattern, seed, scale, kernel_size,
noise / JPEG settings, per-image parameters, the images written and those skipped). Read it back with
``type: SSRPairedDataset``, ``dataroot: <output>``.

    python scripts/make_sv_testset.py --input datasets/DIV2K/DIV2K_valid_HR --output datasets/div2k_sv_x4 \
        --scale 4 --pattern mixed --seed 0 [--depth <depth folder|lmdb>] [--crop-size 256] \
        [--noise-range 1 30] [--jpeg-range 30 95]

The set is built in a temporary sibling folder (``.<name>.partial-<pid>``) and renamed to ``--output``
only when every image and ``meta.json`` (written last) are there: a crash or a kill never leaves a
half-written set under the output name. An existing output is refused unless ``--overwrite`` is given;
then it is replaced only by a complete new set. Temporary folders of killed runs are removed by the next
run for the same output.

With ``--crop-size``, a side shorter than the crop is kept whole (the other side is still centre-cropped),
and the images concerned are named; ``--skip-small`` skips them instead. Files that cannot be read are
named and skipped (exit status 1). Noise and JPEG are either fixed (``--noise SIGMA``, ``--jpeg Q``) or
drawn per image from a range with the seed (``--noise-range``, ``--jpeg-range``); the draws of one image
depend only on the seed and its index, so sets made with the same seed and images but different
noise/JPEG switches (paper Table 3) share HR crops, kernels and noise.
"""
import argparse
import json
import os
import os.path as osp
import sys


from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ssr_data import kernels as K  # noqa: E402
from ssr_data.degradations import DegradationRecipe, GeneratorNoise, kernel_params  # noqa: E402
from ssr_data.dataset_io import ImageSource, decode_depth, list_image_names, lmdb_keys, write_depth_png  # noqa: E402
from ssr_utils.atomic_file import atomic_directory  # noqa: E402
from ssr_utils.errors import OptionError, exit_on_option_error  # noqa: E402

MIXED_ORDER = ('linear', 'rotate', 'block', 'depth')


def iter_hr_images(path):
    """Yield ``(stem, BGR uint8 H×W×3 or None, problem)`` from a folder or a BasicSR LMDB, one at a time
    (``problem`` says why an unreadable image is None)."""
    src = ImageSource(path, 'gt', '--input')
    for name in hr_names(path):
        try:
            img = cv2.imdecode(np.frombuffer(src.get(name), np.uint8), cv2.IMREAD_COLOR)  # applies EXIF orientation
        except (KeyError, OSError) as err:
            yield name, None, f'cannot be read ({err})'
            continue
        if img is None or img.size == 0:
            yield name, None, f'{src.path_of(name)} is not a decodable image'
            continue
        yield name, img, None


def hr_names(path):
    src = ImageSource(path, 'gt', '--input')
    return lmdb_keys(path, '--input') if src.lmdb else [osp.splitext(n)[0] for n in list_image_names(path, '--input')]


def read_hr_images(path):
    """``[(stem, BGR uint8 H×W×3)]`` from a folder or a BasicSR LMDB (all in memory; raises on a bad file)."""
    images = []
    for name, img, problem in iter_hr_images(path):
        if img is None:
            raise ValueError(f'{name}: {problem}')
        images.append((name, img))
    return images


class DepthMaps:
    """``{stem: depth}`` read on demand from a depth folder / LMDB (not all held in memory)."""

    def __init__(self, src):
        self.src = src

    def __contains__(self, stem):
        return self.src.has(stem)

    def __getitem__(self, stem):
        return decode_depth(self.src.get(stem), self.src.path_of(stem))


def _tensor_rgb(img_bgr):
    return torch.from_numpy(np.ascontiguousarray(img_bgr[:, :, ::-1].transpose(2, 0, 1))).float().div_(255.0)


def _to_bgr_u8(t):
    return np.ascontiguousarray((t.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy()[:, :, ::-1])


def _check_range(value, key, lo, hi, integer=False):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise OptionError(key, value, 'expected two numbers: low high')
    a, b = value
    if integer and not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (a, b)):
        raise OptionError(key, value, 'expected two integers')
    if not lo <= a <= b <= hi:
        raise OptionError(key, value, f'expected {lo} <= low <= high <= {hi}')
    return (int(a), int(b)) if integer else (float(a), float(b))


def _crop_box(h, w, crop_size, scale):
    """Centre crop of at most ``crop_size`` per side (a shorter side is kept whole), multiples of scale."""
    if crop_size is None:
        ch, cw = h - h % scale, w - w % scale
        return 0, 0, ch, cw
    ch, cw = min(h, crop_size), min(w, crop_size)
    ch, cw = ch - ch % scale, cw - cw % scale
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def make_sv_testset(images, output, scale=4, kernel_size=21, pattern='mixed', seed=0, depth_maps=None,
                    depth_net=None, sigma_range=None, rho_min=0.2, block_size=8, crop_size=None, noise=0.0,
                    jpeg=None, overwrite=False, show_progress=True, noise_range=None, jpeg_range=None,
                    skip_small=False, total=None, report=print, focus_plane=None):
    """Write the test set (atomically, see the module doc); returns the meta dict.

    Args:
        images: iterable of ``(stem, BGR uint8 H×W×3)`` or ``(stem, None, problem)`` for an unreadable one.
        depth_maps: optional ``{stem: H×W float in [0, 1]}`` at HR size; otherwise ``depth_net`` (a
            ``MonocularDepth``, default the weight-free prior) estimates depth from the HR image.
        pattern: ``linear`` | ``rotate`` | ``block`` | ``depth`` | ``mixed`` (cycles through the four).
        focus_plane: the ``depth`` pattern's focus plane, fixed (default None: drawn per image).
        crop_size: centre crop (divisible by scale); a shorter side is kept whole, or the image skipped
            with ``skip_small``. Default: the whole image (the largest multiple of scale).
        noise: Gaussian noise σ on the 0..255 scale (0 = none), or ``noise_range`` (low, high): σ drawn
            per image. jpeg: integer quality or None, or ``jpeg_range`` (low, high): drawn per image.
        report: where notes go (small or skipped images, leftovers of killed runs); None = silent.
    """
    kernel_size = K.check_kernel_size(kernel_size, '--kernel-size')
    if pattern not in K.PATTERNS + ('mixed', ):
        raise OptionError('--pattern', pattern, f'expected one of {", ".join(K.PATTERNS + ("mixed", ))}')
    if crop_size is not None and (crop_size <= 0 or crop_size % scale):
        raise OptionError('--crop-size', crop_size, f'must be a positive multiple of scale {scale}')
    if jpeg is not None and (isinstance(jpeg, bool) or not isinstance(jpeg, int) or not 1 <= jpeg <= 100):
        raise OptionError('--jpeg', jpeg, 'expected an integer quality in [1, 100]')
    if noise < 0:
        raise OptionError('--noise', noise, 'expected a sigma >= 0')
    noise_range = _check_range(noise_range, '--noise-range', 0.0, 255.0)
    jpeg_range = _check_range(jpeg_range, '--jpeg-range', 1, 100, integer=True)
    if noise_range is not None and noise:
        raise OptionError('--noise-range', list(noise_range), 'give either --noise or --noise-range')
    if jpeg_range is not None and jpeg is not None:
        raise OptionError('--jpeg-range', list(jpeg_range), 'give either --jpeg or --jpeg-range')
    sigma_range = tuple(sigma_range or K.default_sigma_range(scale))
    say = report or (lambda msg: None)
    if depth_maps is None and depth_net is None:
        from ssr_arch.depth_arch import MonocularDepth
        depth_net = MonocularDepth('prior')
    meta = {'pattern': pattern, 'seed': int(seed), 'scale': int(scale), 'kernel_size': kernel_size,
            'sigma_range': list(sigma_range), 'rho_min': rho_min, 'crop_size': crop_size,
            'noise': float(noise), 'noise_range': list(noise_range) if noise_range else None,
            'jpeg': jpeg, 'jpeg_range': list(jpeg_range) if jpeg_range else None,
            'depth': 'given' if depth_maps is not None else f'MonocularDepth({depth_net.backend})',
            'images': {}, 'skipped': {}}
    recipe = DegradationRecipe({'scale': scale, 'kernel_size': kernel_size})
    with atomic_directory(output, overwrite=overwrite, report=say) as tmp:
        for sub in ('gt', 'lq', 'kernel', 'depth'):
            os.makedirs(osp.join(tmp, sub))
        # an image's pattern and random draws depend on the seed and its position in the input only
        for index, item in enumerate(tqdm(images, desc='sv test set', total=total, disable=not show_progress)):
            stem, img = item[0], item[1]
            if img is None:
                problem = item[2] if len(item) > 2 else 'unreadable'
                say(f'skipped {stem}: {problem}')
                meta['skipped'][stem] = problem
                continue
            h, w = img.shape[:2]
            if crop_size is not None and (h < crop_size or w < crop_size):
                if skip_small:
                    say(f'skipped {stem}: {h}×{w} is smaller than --crop-size {crop_size} (--skip-small)')
                    meta['skipped'][stem] = f'{h}x{w} smaller than crop_size {crop_size}'
                    continue
                say(f'note: {stem} is {h}×{w}, smaller than --crop-size {crop_size}: the short side is kept whole')
            top, left, ch, cw = _crop_box(h, w, crop_size, scale)
            if ch < scale * 2 or cw < scale * 2:
                say(f'skipped {stem}: {h}×{w} is too small for scale {scale}')
                meta['skipped'][stem] = f'{h}x{w} too small for scale {scale}'
                continue
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
            p = MIXED_ORDER[index % len(MIXED_ORDER)] if pattern == 'mixed' else pattern
            img_seed = int(np.random.default_rng([int(seed), index]).integers(0, 2**31 - 1))
            smaj, smin, theta, params = K.pattern_params(p, ch // scale, cw // scale, img_seed, sigma_range, rho_min,
                                                         depth_lq=depth_lq, block=block_size, focus=focus_plane)
            # per-image draws from their own streams: switching noise or JPEG off leaves the rest unchanged
            sigma = float(np.random.default_rng([int(seed), index, 2]).uniform(*noise_range)) if noise_range \
                else float(noise)
            quality = int(np.random.default_rng([int(seed), index, 3]).integers(jpeg_range[0], jpeg_range[1] + 1)) \
                if jpeg_range else jpeg
            # the training degradation's executor on these numbers: blur, colour noise, JPEG / 8-bit levels
            numbers = {'kernel_params': kernel_params(smaj, smin, theta, depth_lq.shape)[None],
                       'noise_sigma': [sigma / 255.0], 'gray_noise': [0.0], 'poisson_scale': [0.0],
                       'jpeg_quality': [-1 if quality is None else quality]}
            state = recipe.apply(gt[None], numbers, GeneratorNoise(np.random.default_rng([int(seed), index, 1])))
            lq, kmap = state.lq[0], state.kernel
            for folder, arr in (('gt', _to_bgr_u8(gt)), ('lq', _to_bgr_u8(lq))):
                if not cv2.imwrite(osp.join(tmp, folder, f'{stem}.png'), arr):
                    raise OSError(f'cannot write {osp.join(tmp, folder, stem)}.png')
            np.save(osp.join(tmp, 'kernel', f'{stem}.npy'), kmap[0].numpy().astype(np.float32))
            write_depth_png(osp.join(tmp, 'depth', f'{stem}.png'), depth.numpy())
            numbers = {'pattern_id': float(K.PATTERNS.index(p)), 'focus': float(params.get('focus', -1.0)),
                       'rho': float(params.get('rho', -1.0)), 'theta': float(params.get('theta', -1.0)),
                       'sigma_mean': float(smaj.mean()), 'noise_sigma': sigma / 255.0,
                       'jpeg_quality': float(quality if quality is not None else -1)}
            meta['images'][stem] = {'pattern': p, 'seed': img_seed, 'crop': [top, left, ch, cw], 'params': numbers}
        if not meta['images']:
            raise ValueError(f'no image could be used for the test set ({len(meta["skipped"])} skipped)')
        meta['num_images'] = len(meta['images'])
        meta['complete'] = True
        # written last: SSRPairedDataset requires it in a set of this layout (a set without it is incomplete)
        with open(osp.join(tmp, 'meta.json'), 'w') as f:
            json.dump(meta, f, indent=1)
    return meta


@exit_on_option_error()
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
    parser.add_argument('--crop-size', type=int, default=None,
                        help='centre crop; a shorter side is kept whole (or see --skip-small)')
    parser.add_argument('--skip-small', action='store_true', help='skip (and name) images smaller than --crop-size')
    parser.add_argument('--noise', type=float, default=0.0, help='Gaussian noise sigma (0..255 scale)')
    parser.add_argument('--noise-range', type=float, nargs=2, default=None, metavar=('LOW', 'HIGH'),
                        help='Gaussian noise sigma drawn per image from [LOW, HIGH] (0..255 scale)')
    parser.add_argument('--jpeg', type=int, default=None, help='JPEG quality (integer)')
    parser.add_argument('--jpeg-range', type=int, nargs=2, default=None, metavar=('LOW', 'HIGH'),
                        help='JPEG quality drawn per image from the integers in [LOW, HIGH]')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output (once the new set is complete)')
    args = parser.parse_args(argv)

    def report(msg):
        tqdm.write(msg, file=sys.stderr)

    try:
        names = hr_names(args.input)
        depth_maps = depth_net = None
        if args.depth:
            depth_maps = DepthMaps(ImageSource(args.depth, 'depth', '--depth'))
        else:
            from ssr_arch.depth_arch import MonocularDepth
            depth_net = MonocularDepth(args.depth_backend, args.depth_model_path)
        meta = make_sv_testset(iter_hr_images(args.input), args.output, args.scale, args.kernel_size, args.pattern,
                               args.seed, depth_maps, depth_net, crop_size=args.crop_size, noise=args.noise,
                               jpeg=args.jpeg, overwrite=args.overwrite, noise_range=args.noise_range,
                               jpeg_range=args.jpeg_range, skip_small=args.skip_small, total=len(names),
                               report=report)
    except OptionError:
        raise  # a bad option: its one line (exit_on_option_error), not a file problem
    except (FileExistsError, FileNotFoundError, KeyError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    skipped = meta['skipped']
    print(f'wrote {len(meta["images"])} images to {args.output}' + (f' ({len(skipped)} skipped)' if skipped else ''))
    unreadable = [k for k, v in skipped.items() if 'smaller than crop_size' not in v]
    return 1 if unreadable else 0


if __name__ == '__main__':
    sys.exit(main())
