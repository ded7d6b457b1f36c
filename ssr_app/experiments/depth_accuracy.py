"""Accuracy of a depth network against the weight-free prior on held-out scenes with exact depth.

    python scripts/experiments/depth_accuracy.py --model-path experiments/train_Depth_scenes/depth_model \
        [--backend dpt] [--num 100] [--size 256] [--seed 1] [--scenes DIR] [--save-set DIR] \
        [--svkr-opt options/test_svkr_demo.yml] [--sr-dir DIR --sr-suffix _x --sr-name SR] \
        [--output results/depth_accuracy]

Held-out scenes: ``SceneGenerator`` scenes from the held-out photographs (``split: test``; scene i =
``generate((seed, i))``, as ``make_scene_data.py --split test --seed <seed>``), or a stored set (``--scenes``:
a ``make_scene_data.py --format folder`` output with its ``scenes.json``). Each scene is scored on:

- ``HR``: the sharp image;
- ``LR bicubic x4``: the image degraded as the SR stages' training data (``SVDegradation``, ``kernel_mode:
  depth`` driven by the scene's exact depth, σ in [0.6, 5] HR pixels, ×4; noise [1, 30] and JPEG [30, 95]
  unless ``--no-noise`` / ``--no-jpeg``; one fixed draw per scene), then bicubic-upsampled back to HR size;
- optionally ``SVKR SR``: the SR output of a trained SVKR on those LR inputs (``--svkr-opt``: an SVKR option
  file, e.g. ``options/test_svkr_demo.yml``; its ``network_g`` with ``path: pretrain_network_g``, run on the
  CPU or ``--device`` exactly as ``basicsr/test.py`` runs it: the loop's premise is that depth is better on
  sharper input);
- ``HR of another scene``: the next scene's sharp image, scored against THIS scene's depth: what an estimator
  reaches without reading its image (layout alone: ground plane, horizon). A network whose row here matches
  its ``HR`` row ignores the image, and the script says so (``DEFECT``);
- optionally ``SR``: your SR images of those LR inputs (``--sr-dir``: ``<key><sr-suffix>.png`` at HR size).
  ``--save-set DIR`` writes the LR inputs as an ``SSRPairedDataset`` folder (``gt/``, ``lq/``, ``depth/``
  (exact), ``meta.json``) so that e.g. ``basicsr/test.py`` with an SVKR option file produces them.

by the depth network (``MonocularDepth(backend, model_path)``, exactly as SVKR runs it) and by the prior
(``MonocularDepth('prior')``). Metrics (``ssr_utils.relative_depth.depth_accuracy``, the function validation
uses): per image, the prediction is least-squares aligned (scale and shift) to the true inverse depth 1/Z,
clamped below at the image's smallest true inverse depth, inverted to depth, and compared with the true depth
Z: AbsRel = mean |Ẑ − Z| / Z and δ1 = mean[max(Ẑ/Z, Z/Ẑ) < 1.25]; means over the scenes. Writes
``<output>/heldout_scenes_metrics.{md,csv}`` (``ResultTable``) and prints the table.
"""
import argparse
import json
import os
import os.path as osp

from ssr_utils.install import project_root

ROOT = project_root()

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ssr_arch.depth_arch import MonocularDepth  # noqa: E402
from ssr_data.degradations import SVDegradation  # noqa: E402
from ssr_data.scene_depth_dataset import SceneDepthDataset  # noqa: E402
from ssr_data.dataset_io import write_depth_png  # noqa: E402
from ssr_pipelines.builder import build_svkr_from_options  # noqa: E402
from ssr_utils.errors import OptionError, exit_on_option_error  # noqa: E402
from ssr_utils.evaluation import ResultTable  # noqa: E402
from ssr_utils.relative_depth import depth_accuracy  # noqa: E402

METRICS = ('absrel', 'delta1')
OTHER_SCENE = 'HR of another scene'
# AbsRel a network must gain on its own image over another scene's image to count as reading its image
IGNORES_IMAGE_ABSREL = 0.01


def degradation(noise=True, jpeg=True, scale=4):
    """The SR stages' training degradation with depth-driven spatially variant blur."""
    return SVDegradation({'scale': scale, 'kernel_size': 21, 'kernel_mode': 'depth', 'sigma_range': [0.6, 5.0],
                          'use_noise': noise, 'use_jpeg': jpeg})


def lr_bicubic(img, depth, rng, degrade):
    """``img`` 3×H×W RGB [0, 1] -> (LR 3×h×w, its bicubic ×s upsampling 3×H'×W' clamped to [0, 1])."""
    s = degrade.scale
    h, w = img.shape[-2:]
    h, w = h - h % s, w - w % s
    lq = degrade(img[:, :h, :w], depth[:, :h, :w], rng)['lq']
    up = F.interpolate(lq[None], scale_factor=s, mode='bicubic', align_corners=False)[0].clamp(0, 1)
    return lq, up


def _to_bgr_u8(t):
    return np.ascontiguousarray((t.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy()[:, :, ::-1])


def _read_sr(sr_dir, key, suffix, shape):
    path = osp.join(sr_dir, f'{key}{suffix}.png')
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f'--sr-dir: no readable SR image {path}')
    if img.shape[:2] != tuple(shape):
        raise ValueError(f'--sr-dir: {path} is {img.shape[0]}×{img.shape[1]}, the HR image is {shape[0]}×{shape[1]}')
    return torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))).float() / 255.0


def load_svkr(opt_path, device='cpu'):
    """The trained SVKR of an SVKR option file (``network_g`` + ``path: pretrain_network_g``), frozen."""
    import yaml
    with open(opt_path) as f:
        opt = yaml.safe_load(f)
    if (opt.get('network_g') or {}).get('type') != 'SVKR':
        raise OptionError('--svkr-opt', opt_path, 'expected an option file whose network_g is type: SVKR')
    path_opt = dict(opt.get('path') or {})
    ckpt = path_opt.get('pretrain_network_g')
    if not ckpt:
        raise OptionError('--svkr-opt', opt_path, 'path:pretrain_network_g names no trained SVKR')
    if not osp.isabs(ckpt):
        path_opt['pretrain_network_g'] = osp.join(ROOT, ckpt)
    if not osp.isfile(path_opt['pretrain_network_g']):
        raise OptionError('path:pretrain_network_g', path_opt['pretrain_network_g'], f'({opt_path}) file does not '
                          'exist: train the SVKR first')
    net_opt = opt['network_g']
    depth_opt = net_opt.get('depth_opt') or {}
    if depth_opt.get('model_path') and not osp.isabs(depth_opt['model_path']):
        depth_opt['model_path'] = osp.join(ROOT, depth_opt['model_path'])
    return build_svkr_from_options(net_opt, path_opt, 'pretrain_network_g', 'param_key_g').to(device)


def evaluate(model_path, backend='dpt', num=100, size=256, seed=1, scenes_dir=None, sr_dir=None, sr_suffix='',
             sr_name='SR', noise=True, jpeg=True, save_set=None, device='cpu', show_progress=True, svkr=None):
    """Returns the filled ``ResultTable`` (methods ``<estimator> on <input>``) and the set's description.
    ``svkr``: a trained SVKR (``load_svkr``) whose SR output of each LR image is scored too (``SVKR SR``)."""
    if scenes_dir is not None:
        dataset = SceneDepthDataset({'dataroot_gt': osp.join(scenes_dir, 'image'),
                                     'dataroot_depth': osp.join(scenes_dir, 'depth'),
                                     'scenes_json': osp.join(scenes_dir, 'scenes.json'), 'use_hflip': False})
        described = f'{len(dataset)} scenes of {scenes_dir}'
    else:
        dataset = SceneDepthDataset({'scenes': {'num': num, 'seed': seed, 'size': size, 'split': 'test'},
                                     'use_hflip': False})
        described = f'{num} held-out scenes (split test, seed {seed}, {size} px, generated)'
    estimators = {'network': MonocularDepth(backend, model_path).to(device),
                  'prior': MonocularDepth('prior').to(device)}
    inputs = (['HR', 'LR bicubic x4'] + (['SVKR SR'] if svkr is not None else []) + ([sr_name] if sr_dir else [])
              + [OTHER_SCENE])
    methods = [f'{e} on {i}' for e in estimators for i in inputs]
    table = ResultTable(METRICS, methods, depth={m: estimators[m.split(' on ')[0]].source for m in methods})
    degrade = degradation(noise, jpeg)
    if save_set:
        for sub in ('gt', 'lq', 'depth'):
            os.makedirs(osp.join(save_set, sub), exist_ok=True)
    for index in tqdm(range(len(dataset)), desc='scenes', unit='scene', disable=not show_progress):
        sample = dataset[index]
        key = sample['lq_path']
        if 'disparity' not in sample:
            raise OptionError('--scenes', scenes_dir, f'no inverse-depth range for {key} (scenes.json missing or '
                              'incomplete)')
        img, depth = sample['img'], sample['depth']
        lq, up = lr_bicubic(img, depth, np.random.default_rng([int(seed), index, 4]), degrade)
        h, w = up.shape[-2:]
        disparity = sample['disparity'][:, :h, :w]
        other = dataset[(index + 1) % len(dataset)]['img']
        if other.shape[-2:] != (h, w):
            other = F.interpolate(other[None], size=(h, w), mode='bicubic', align_corners=False)[0].clamp(0, 1)
        images = {'HR': img[:, :h, :w], 'LR bicubic x4': up, OTHER_SCENE: other}
        if svkr is not None:
            with torch.no_grad():
                images['SVKR SR'] = svkr(lq[None].to(device))['sr'][0].clamp(0, 1).float().cpu()[:, :h, :w]
        if sr_dir:
            images[sr_name] = _read_sr(sr_dir, key, sr_suffix, (h, w))
        if save_set:
            cv2.imwrite(osp.join(save_set, 'gt', f'{key}.png'), _to_bgr_u8(images['HR']))
            cv2.imwrite(osp.join(save_set, 'lq', f'{key}.png'), _to_bgr_u8(lq))
            write_depth_png(osp.join(save_set, 'depth', f'{key}.png'), depth[0, :h, :w].numpy())
        for name, est in estimators.items():
            with torch.no_grad():
                preds = est(torch.stack([images[i] for i in inputs]).to(device)).cpu()
            for i, pred in zip(inputs, preds):
                acc = depth_accuracy(pred[None], disparity[None])
                table.add(key, f'{name} on {i}', {m: float(acc[m][0]) for m in METRICS})
    if save_set:
        with open(osp.join(save_set, 'meta.json'), 'w') as f:
            json.dump({'scale': degrade.scale, 'depth': 'exact (ssr_data.scenes)', 'source': described,
                       'degradation': {'kernel_mode': 'depth', 'sigma_range': [0.6, 5.0], 'noise': noise,
                                       'jpeg': jpeg}, 'images': {}}, f, indent=1)
    return table, described


def image_use_notes(table):
    """How much each estimator gains from its own image over another scene's image (AbsRel), and a DEFECT line
    for a network that does not read its image (the same error either way: it outputs a layout)."""
    notes = []
    means = table.means()
    for name in ('network', 'prior'):
        own, other = means[f'{name} on HR']['absrel'], means[f'{name} on {OTHER_SCENE}']['absrel']
        notes.append(f'{name}: AbsRel {own:.3f} on its own HR image, {other:.3f} on another scene\'s image '
                     f'(gain from reading the image: {other - own:+.3f}).')
        if name == 'network' and other - own < IGNORES_IMAGE_ABSREL:
            notes.append(f'DEFECT: the depth network scores within {IGNORES_IMAGE_ABSREL} AbsRel of its own image\'s '
                         'error when given another scene\'s image: it has learnt a layout, not to read the image '
                         '(train it longer).')
    return notes


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model-path', required=True, help='save_pretrained folder of the depth network')
    parser.add_argument('--backend', default='dpt', help='dpt | depth_anything')
    parser.add_argument('--num', type=int, default=100, help='generated held-out scenes')
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--scenes', default=None, help='a make_scene_data.py --format folder set instead')
    parser.add_argument('--svkr-opt', default=None, help='an SVKR option file (trained SVKR): score depth on its SR')
    parser.add_argument('--sr-dir', default=None, help='SR images <key><sr-suffix>.png of the LR inputs')
    parser.add_argument('--sr-suffix', default='')
    parser.add_argument('--sr-name', default='SR', help='name of the SR input in the table')
    parser.add_argument('--no-noise', action='store_true')
    parser.add_argument('--no-jpeg', action='store_true')
    parser.add_argument('--save-set', default=None, help='write the LR inputs as an SSRPairedDataset folder')
    parser.add_argument('--output', default=osp.join(ROOT, 'results', 'depth_accuracy'))
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    if args.backend == 'prior':
        raise OptionError('--backend', args.backend, 'the prior is always scored beside the network; give the '
                          'network backend (dpt | depth_anything)')
    table, described = evaluate(args.model_path, args.backend, args.num, args.size, args.seed, args.scenes,
                                args.sr_dir, args.sr_suffix, args.sr_name, not args.no_noise, not args.no_jpeg,
                                args.save_set, args.device,
                                svkr=load_svkr(args.svkr_opt, args.device) if args.svkr_opt else None)
    degr = 'blur' + ('' if args.no_noise else ' + noise') + ('' if args.no_jpeg else ' + JPEG')
    notes = [f'Scenes: {described}. Depth network: {args.backend} ({args.model_path}); prior: the weight-free '
             'heuristic (backend: prior), not a depth network.',
             f'LR: SVDegradation kernel_mode depth ({degr}), x4, bicubic-upsampled to HR size.'
             + (f' SVKR SR: {args.svkr_opt} on the LR image.' if args.svkr_opt else ''),
             'AbsRel (lower is better) and delta1 = fraction of pixels with max(Z_pred/Z, Z/Z_pred) < 1.25 (higher '
             'is better), after per-image least-squares scale-and-shift alignment of the prediction to the true '
             'inverse depth (ssr_utils.relative_depth.depth_accuracy).']
    notes += image_use_notes(table)
    csv_path, md_path = table.write(args.output, 'heldout_scenes', notes=notes)
    print(open(md_path).read())
    print(f'tables: {md_path}, {csv_path}')


if __name__ == '__main__':
    main()
