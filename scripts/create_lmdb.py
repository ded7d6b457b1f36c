"""Turn a folder of images into an LMDB in BasicSR's format (PNG values, ``meta_info.txt``).

Examples::

    python scripts/create_lmdb.py -i datasets/DIV2K/HR -o datasets/DIV2K/HR_sub.lmdb --crop-size 480 --step 240
    python scripts/create_lmdb.py -i my_images -o my_images.lmdb --overwrite

With ``--crop-size`` every image is first cut into overlapping sub-images (BasicSR's
``extract_subimages`` scheme: keys ``<stem>_s001``...). Unreadable files are named and skipped;
the run exits with status 1 if any were skipped.
"""
import argparse
import os
import os.path as osp
import sys

import cv2
from tqdm import tqdm

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))

from ssr_data.lmdb_util import LmdbExistsError, LmdbWriter, extract_subimages  # noqa: E402
from ssr_utils.image_io import IMAGE_EXTENSIONS  # noqa: E402


def list_images(folder):
    paths = []
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(osp.join(dirpath, name))
    return sorted(paths)


def create_lmdb(input_folder, lmdb_path, crop_size=None, step=None, thresh_size=0, compress_level=1,
                overwrite=False, show_progress=True):
    """Write every readable image of ``input_folder`` into ``lmdb_path``.

    Returns ``(written_keys, skipped)`` where ``skipped`` is a list of ``(path, reason)``.
    """
    if not osp.isdir(input_folder):
        raise FileNotFoundError(f'input folder does not exist: {input_folder}')
    paths = list_images(input_folder)
    if not paths:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found under {input_folder}')
    if crop_size is not None and (step is None or step <= 0 or crop_size <= 0):
        raise ValueError('--crop-size needs a positive --step')
    written, skipped = [], []
    with LmdbWriter(lmdb_path, overwrite=overwrite, compress_level=compress_level) as writer:
        for path in tqdm(paths, desc='create lmdb', unit='img', disable=not show_progress):
            img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if img is None or img.size == 0:
                skipped.append((path, 'not a readable image'))
                continue
            rel = osp.splitext(osp.relpath(path, input_folder))[0].replace(os.sep, '_')
            key_base = rel.replace(' ', '_').replace('.', '_')
            if not key_base.isascii():
                skipped.append((path, 'file name is not ASCII (LMDB keys must be)'))
                continue
            if crop_size is None:
                writer.put(key_base, img)
                written.append(key_base)
            else:
                for index, crop in extract_subimages(img, crop_size, step, thresh_size):
                    key = f'{key_base}_s{index:03d}'
                    writer.put(key, crop)
                    written.append(key)
    return written, skipped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-i', '--input', required=True, help='folder of images (searched recursively)')
    parser.add_argument('-o', '--output', required=True, help='LMDB folder to create, ending with .lmdb')
    parser.add_argument('--crop-size', type=int, default=None, help='cut into sub-images of this size first')
    parser.add_argument('--step', type=int, default=None, help='stride between sub-images')
    parser.add_argument('--thresh-size', type=int, default=0, help='keep a border crop if more remains')
    parser.add_argument('--compress-level', type=int, default=1, help='PNG compression level 0-9')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing LMDB')
    args = parser.parse_args(argv)
    try:
        written, skipped = create_lmdb(args.input, args.output, args.crop_size, args.step, args.thresh_size,
                                       args.compress_level, args.overwrite)
    except (LmdbExistsError, FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    for path, reason in skipped:
        print(f'skipped {path}: {reason}', file=sys.stderr)
    print(f'wrote {len(written)} images to {args.output} ({len(skipped)} skipped)')
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(main())
