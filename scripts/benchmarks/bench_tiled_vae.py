"""Tiled VAE decoding with whole-image GroupNorm statistics vs the untiled decode and vs naive tiles.

The code is ``ssr_app/benchmarks/bench_tiled_vae.py`` (``main(argv)``);
``python scripts/benchmarks/bench_tiled_vae.py --help`` lists the options.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir)))  # this checkout first

from ssr_app.benchmarks.bench_tiled_vae import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
