"""Benchmark of the RGB-D scene generator (``ssr_data/scenes.py``, issue 10), one core, ratios in one run.

For each size: ``SceneGenerator.generate`` (scenes/s over scenes with seeds (seed, 0..n-1)) against the
cost of reading the same scenes back from storage, i.e. decoding their two PNGs (the 8-bit image and the
16-bit depth, as ``hr.lmdb`` / ``depth.lmdb`` hold them): the baseline a stored dataset pays per sample.
Both run in this process, interleaved in rounds (median); OpenCV, torch and the BLAS use one thread.

    python scripts/benchmarks/bench_scenes.py [--sizes 256,512] [--num 40] [--rounds 3]
"""
import argparse
import os
import statistics
import time

for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(var, '1')

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ssr_data.lmdb_util import encode_png  # noqa: E402
from ssr_data.scenes import SceneGenerator, default_texture_photos  # noqa: E402
from ssr_data.dataset_io import depth_to_uint16, encode_depth_png  # noqa: E402
from ssr_utils.errors import exit_on_option_error  # noqa: E402


def bench(size, num, rounds, seed=0):
    gen = SceneGenerator(default_texture_photos('train'), size=(size, size))
    stored = []
    for i in range(num):  # warm-up: pyramids of the photographs are built on first use
        rgb, depth, _ = gen.generate((seed, i))
        stored.append((encode_png(np.ascontiguousarray(rgb[:, :, ::-1])), encode_depth_png(depth_to_uint16(depth))))
    gen_times, read_times = [], []
    for _ in range(rounds):
        start = time.process_time()
        for i in range(num):
            gen.generate((seed, i))
        gen_times.append((time.process_time() - start) / num)
        start = time.process_time()
        for img_bytes, depth_bytes in stored:
            cv2.imdecode(np.frombuffer(img_bytes, np.uint8), cv2.IMREAD_COLOR)
            cv2.imdecode(np.frombuffer(depth_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
        read_times.append((time.process_time() - start) / num)
    return statistics.median(gen_times), statistics.median(read_times)


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', default='256,512')
    parser.add_argument('--num', type=int, default=40, help='scenes per round')
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    print(f'one core (CPU time of this process), {args.num} scenes x {args.rounds} rounds, median per scene')
    print('| size | generate | scenes/s | read 2 PNGs (baseline) | generate / read |')
    print('| --- | --- | --- | --- | --- |')
    for size in (int(s) for s in args.sizes.split(',')):
        t_gen, t_read = bench(size, args.num, args.rounds)
        print(f'| {size}×{size} | {t_gen * 1e3:.1f} ms | {1 / t_gen:.1f} | {t_read * 1e3:.2f} ms '
              f'| {t_gen / t_read:.1f}× |')


if __name__ == '__main__':
    main()
