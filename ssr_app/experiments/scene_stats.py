"""What the generated RGB-D scenes hold (the numbers in docs/scenes.md), over scenes with seeds (seed, 0..n-1).

- visible objects per scene and the fraction of pixels they cover;
- the fraction of pixels on a depth jump (> 0.05 between 4-neighbours);
- R² of the best row-only depth (an oracle that knows each row's true mean depth): how far the depth is
  from "depth = row";
- the horizon row (fraction of the image height): quantiles;
- sharpness: mean |Laplacian| of the luma, scenes vs. the texture photographs themselves;
- the weight-free depth prior (``MonocularDepth('prior')``) against the exact depth: MAE and r².

    python scripts/experiments/scene_stats.py [--num 200] [--size 256] [--split train] [--seed 0]
"""
import argparse

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ssr_arch.depth_arch import MonocularDepth  # noqa: E402
from ssr_data.scenes import SceneGenerator, default_texture_photos  # noqa: E402
from ssr_utils.errors import exit_on_option_error  # noqa: E402


def sharpness(rgb):
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(luma, cv2.CV_32F)).mean())


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--num', type=int, default=200)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--split', default='train')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    photos = default_texture_photos(args.split)
    gen = SceneGenerator(photos, size=args.size)
    prior = MonocularDepth('prior')
    stats = {k: [] for k in ('objects', 'object_px', 'jump_px', 'row_r2', 'horizon', 'sharp', 'prior_mae',
                             'prior_r2')}
    for i in range(args.num):
        rgb, depth, meta = gen.generate((args.seed, i))
        labels = meta['labels']
        stats['objects'].append(len(np.unique(labels[labels >= 2])))
        stats['object_px'].append(float((labels >= 2).mean()))
        jumps = (np.abs(np.diff(depth, axis=0)) > 0.05).sum() + (np.abs(np.diff(depth, axis=1)) > 0.05).sum()
        stats['jump_px'].append(jumps / depth.size)
        stats['row_r2'].append(1 - float((depth - depth.mean(1, keepdims=True)).var() / depth.var()))
        stats['horizon'].append(meta['camera']['horizon_row'] / args.size)
        stats['sharp'].append(sharpness(rgb))
        est = prior(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0, 0].numpy()
        stats['prior_mae'].append(float(np.abs(est - depth).mean()))
        stats['prior_r2'].append(float(np.corrcoef(est.ravel(), depth.ravel())[0, 1] ** 2))
    mean = {k: float(np.mean(v)) for k, v in stats.items()}
    print(f'{args.num} scenes, {args.size} px, split {args.split!r} ({len(photos)} photographs), '
          f'seeds ({args.seed}, i)')
    print(f"visible objects per scene {mean['objects']:.2f}, covering {100 * mean['object_px']:.1f}% of the pixels")
    print(f"pixels on a depth jump (> 0.05 to a 4-neighbour): {100 * mean['jump_px']:.2f}%")
    print(f"R² of the best row-only depth (true row means): mean {mean['row_r2']:.3f}, "
          f"median {np.median(stats['row_r2']):.3f}")
    q = np.quantile(stats['horizon'], [0, 0.1, 0.5, 0.9, 1])
    print('horizon row / height: min {:.2f}, 10% {:.2f}, median {:.2f}, 90% {:.2f}, max {:.2f}'.format(*q))
    print(f"sharpness (mean |Laplacian| of luma): scenes {mean['sharp']:.1f}, "
          f"photographs {np.mean([sharpness(p.rgb) for p in photos]):.1f}")
    print(f"weight-free prior vs exact depth: MAE {mean['prior_mae']:.3f}, r² {mean['prior_r2']:.3f}")


if __name__ == '__main__':
    main()
