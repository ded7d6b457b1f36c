"""Turn a folder of images into an LMDB in BasicSR's format (PNG values, ``meta_info.txt``).

Examples::

    python scripts/create_lmdb.py -i datasets/DIV2K/HR -o datasets/DIV2K/HR_sub.lmdb --crop-size 480 --step 240
    python scripts/create_lmdb.py -i my_images -o my_images.lmdb --workers 8 --overwrite

With ``--crop-size`` every image is first cut into overlapping sub-images (BasicSR's
``extract_subimages`` scheme: keys ``<stem>_s001``...). ``--workers N`` reads, crops and PNG-encodes in N
processes; the keys are written in the same order whatever N is (sorted file names, then sub-image
index). Photos are turned upright by their EXIF orientation. Unreadable files are named and skipped;
the run exits with status 1 if any were skipped.

The LMDB is built under a hidden temporary name beside the output and renamed to it only after
``meta_info.txt`` is written, last: a crash or a kill never leaves an LMDB that looks finished (BasicSR's
LMDB datasets refuse one without ``meta_info.txt``; this tool calls such a folder incomplete). The next
run for the same output removes what a killed run left.
"""
import argparse
import os
import os.path as osp
import sys
from multiprocessing import Pool

from tqdm import tqdm

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))

from ssr_data.lmdb_util import LmdbExistsError, LmdbWriter, encode_png, extract_subimages, shape_of  # noqa: E402
from ssr_utils.errors import exit_on_option_error  # noqa: E402
from ssr_utils.image_io import IMAGE_EXTENSIONS, imdecode_upright  # noqa: E402


def list_images(folder):
    paths = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.'):
                paths.append(osp.join(dirpath, name))
    return sorted(paths)


def key_base_of(path, input_folder):
    rel = osp.splitext(osp.relpath(path, input_folder))[0].replace(os.sep, '_')
    return rel.replace(' ', '_').replace('.', '_')


def load_entries(task):
    """Read, orient, crop and PNG-encode one file (runs in a worker).

    Returns ``(path, [(key, png_bytes, (h, w, c)), ...], problem)``; ``problem`` is None when it worked."""
    path, input_folder, crop_size, step, thresh_size, compress_level = task
    key_base = key_base_of(path, input_folder)
    if not key_base.isascii():
        return path, [], 'file name is not ASCII (LMDB keys must be)'
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as err:
        return path, [], f'cannot be read ({err.strerror or err})'
    img, _ = imdecode_upright(data) if data else (None, 1)
    if img is None or img.size == 0:
        return path, [], 'not a readable image'
    if crop_size is None:
        return path, [(key_base, encode_png(img, compress_level), shape_of(img))], None
    return path, [(f'{key_base}_s{index:03d}', encode_png(crop, compress_level), shape_of(crop))
                  for index, crop in extract_subimages(img, crop_size, step, thresh_size)], None


def create_lmdb(input_folder, lmdb_path, crop_size=None, step=None, thresh_size=0, compress_level=1,
                overwrite=False, show_progress=True, workers=1, report=None):
    """Write every readable image of ``input_folder`` into ``lmdb_path`` (see the module doc).

    Returns ``(written_keys, skipped)`` where ``skipped`` is a list of ``(path, reason)``.
    """
    if not osp.isdir(input_folder):
        raise FileNotFoundError(f'input folder does not exist: {input_folder}')
    paths = list_images(input_folder)
    if not paths:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found under {input_folder}')
    if crop_size is not None and (step is None or step <= 0 or crop_size <= 0):
        raise ValueError('--crop-size needs a positive --step')
    if workers < 1:
        raise ValueError(f'--workers must be at least 1, got {workers}')
    tasks = [(p, input_folder, crop_size, step, thresh_size, compress_level) for p in paths]
    written, skipped = [], []
    with LmdbWriter(lmdb_path, overwrite=overwrite, compress_level=compress_level, report=report) as writer:
        pool = Pool(workers) if workers > 1 else None
        try:
            # imap keeps the input order, so the keys' order does not depend on the number of workers
            results = pool.imap(load_entries, tasks, chunksize=1) if pool else map(load_entries, tasks)
            for path, entries, problem in tqdm(results, total=len(tasks), desc='create lmdb', unit='img',
                                               disable=not show_progress):
                if problem is not None:
                    skipped.append((path, problem))
                    continue
                for key, value, shape in entries:
                    writer.put_encoded(key, value, shape)
                    written.append(key)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    return written, skipped


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-i', '--input', required=True, help='folder of images (searched recursively)')
    parser.add_argument('-o', '--output', required=True, help='LMDB folder to create, ending with .lmdb')
    parser.add_argument('--crop-size', type=int, default=None, help='cut into sub-images of this size first')
    parser.add_argument('--step', type=int, default=None, help='stride between sub-images')
    parser.add_argument('--thresh-size', type=int, default=0, help='keep a border crop if more remains')
    parser.add_argument('--compress-level', type=int, default=1, help='PNG compression level 0-9')
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1),
                        help='processes that read and encode in parallel (default: min(8, CPUs))')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing LMDB (once the new one is complete)')
    args = parser.parse_args(argv)

    def report(msg):
        tqdm.write(msg, file=sys.stderr)

    try:
        written, skipped = create_lmdb(args.input, args.output, args.crop_size, args.step, args.thresh_size,
                                       args.compress_level, args.overwrite, workers=args.workers, report=report)
    except (LmdbExistsError, FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    for path, reason in skipped:
        print(f'skipped {path}: {reason}', file=sys.stderr)
    print(f'wrote {len(written)} images to {args.output} ({len(skipped)} skipped)')
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(main())
