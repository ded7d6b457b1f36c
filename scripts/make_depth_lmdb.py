"""Compute the depth of every image of an HR LMDB or folder into a depth LMDB with the same keys.

    python scripts/make_depth_lmdb.py --input datasets/DF2K/DF2K_HR_sub.lmdb \
        --output datasets/DF2K/DF2K_HR_sub_depth.lmdb --model-path weights/dpt-beit-large-512 \
        [--backend dpt] [--batch-size 8] [--device cuda] [--overwrite]

The depth network is a local ``save_pretrained`` folder (``--backend dpt``, the default: MiDaS v3.x / DPT, e.g.
``Intel/dpt-beit-large-512`` as the paper's MiDaS v3.1; ``depth_anything``; or the network that
``options/train_depth.yml`` trains on scenes with exact depth). ``--backend prior`` uses the weight-free
heuristic instead; it is then named in the output and in ``<output>/depth_source.txt``.

Values: 1-channel 16-bit PNG (0..65535 ↔ 0..1, normalised inverse depth, 1 = near), at the HR size,
stored uncompressed and unfiltered (decodes ~7x faster in the data loader; ``--compact`` for ~1/3 smaller,
slower-to-decode PNGs). Images of the same
size are batched. Interrupted runs resume: every committed batch stays in the LMDB, and a rerun with
the same arguments skips the keys already there; ``meta_info.txt`` is written when all keys are done.
"""
import argparse
import os
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ssr_utils import compat  # noqa: E402

compat.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ssr_data.ssr_degradation_dataset import ImageSource, encode_depth_png, list_images, lmdb_keys  # noqa: E402
from ssr_utils.errors import OptionError, exit_on_option_error  # noqa: E402


def _batches(names, src, batch_size):
    """Consecutive images of one size, at most ``batch_size`` at a time: ``[(names, [BGR uint8])]``."""
    batch_names, batch_imgs = [], []
    for name in names:
        img = cv2.imdecode(np.frombuffer(src.get(name), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f'cannot decode image {src.path_of(name)}')
        if batch_imgs and (img.shape != batch_imgs[0].shape or len(batch_imgs) >= batch_size):
            yield batch_names, batch_imgs
            batch_names, batch_imgs = [], []
        batch_names.append(name)
        batch_imgs.append(img)
    if batch_imgs:
        yield batch_names, batch_imgs


def make_depth_lmdb(input_path, output_path, backend='prior', model_path=None, input_size=None, batch_size=4,
                    device='cpu', overwrite=False, limit=None, show_progress=True, compact=False):
    """Write the depth LMDB; returns the number of images computed in this call (resumed keys excluded).

    ``limit`` stops after that many new images (to test resuming).
    """
    import lmdb
    from ssr_arch.depth_arch import MonocularDepth
    if not output_path.endswith('.lmdb'):
        raise OptionError('--output', output_path, "an LMDB path must end with '.lmdb'")
    src = ImageSource(input_path, 'gt', '--input')
    names = lmdb_keys(input_path, '--input') if src.lmdb else \
        [osp.splitext(n)[0] for n in list_images(input_path, '--input')]
    meta_path = osp.join(output_path, 'meta_info.txt')
    if osp.exists(output_path) and overwrite:
        import shutil
        shutil.rmtree(output_path)
    elif osp.isfile(meta_path):
        raise FileExistsError(f'{output_path} is complete (meta_info.txt exists); pass --overwrite to recompute')
    os.makedirs(output_path, exist_ok=True)
    env = lmdb.open(output_path, map_size=1 << 40)
    with env.begin() as txn:
        done = {name for name in names if txn.get(name.encode('ascii')) is not None}
    todo = [n for n in names if n not in done]
    if limit is not None:
        todo = todo[:limit]
    net = MonocularDepth(backend, model_path, input_size).to(device)
    with open(osp.join(output_path, 'depth_source.txt'), 'w') as f:
        f.write(net.source + '\n')
    computed = 0
    bar = tqdm(total=len(names), initial=len(done), desc=f'depth ({backend})', unit='img', disable=not show_progress)
    try:
        for batch_names, imgs in _batches(todo, src, batch_size):
            rgb = torch.from_numpy(np.stack([im[:, :, ::-1] for im in imgs]).transpose(0, 3, 1, 2).copy())
            depth = net(rgb.to(device).float().div_(255.0))[:, 0].float().cpu().numpy()
            with env.begin(write=True) as txn:  # one transaction per batch: a kill loses at most one batch
                for name, d in zip(batch_names, depth):
                    d16 = np.round(np.clip(d, 0, 1) * 65535.0).astype(np.uint16)
                    txn.put(name.encode('ascii'), encode_depth_png(d16, compact))
            computed += len(batch_names)
            bar.update(len(batch_names))
    finally:
        bar.close()
    complete = len(done) + computed == len(names)
    if complete:
        with env.begin() as txn, open(meta_path + '.tmp', 'w') as f:
            for name in names:
                buf = txn.get(name.encode('ascii'))
                h, w = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2]
                f.write(f'{name}.png ({h},{w},1) {1 if compact else 0}\n')
        os.replace(meta_path + '.tmp', meta_path)
    env.close()
    return computed


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--input', required=True, help='HR LMDB (BasicSR format) or folder of images')
    parser.add_argument('--output', required=True, help='depth LMDB to write (*.lmdb)')
    parser.add_argument('--backend', default='dpt', help='dpt (default) | depth_anything | prior (the weight-free '
                        'heuristic, not a depth network)')
    parser.add_argument('--model-path', default=None, help='local save_pretrained folder of the depth network '
                        '(required unless --backend prior)')
    parser.add_argument('--input-size', type=int, default=None)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--overwrite', action='store_true')
    parser.add_argument('--compact', action='store_true', help='compressed PNGs: ~1/3 smaller, slower to decode')
    args = parser.parse_args(argv)
    if args.backend != 'prior':
        if args.model_path is None:
            raise OptionError('--model-path', None, f'--backend {args.backend} needs the local save_pretrained folder '
                              'of a depth network (or --backend prior for the weight-free heuristic)')
        if not osp.isfile(osp.join(args.model_path, 'config.json')):
            raise OptionError('--model-path', args.model_path, 'not a save_pretrained folder (no config.json)')
    n = make_depth_lmdb(args.input, args.output, args.backend, args.model_path, args.input_size, args.batch_size,
                        args.device, args.overwrite, compact=args.compact)
    print(f'computed {n} depth maps into {args.output} with '
          + ('the weight-free depth PRIOR (not a depth network)' if args.backend == 'prior'
             else f'{args.backend} ({args.model_path})'))


if __name__ == '__main__':
    main()
