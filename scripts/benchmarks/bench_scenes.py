"""Benchmark of the RGB-D scene generator (``ssr_data/scenes.py``, issue 10), one core, ratios in one run.

The code is ``ssr_app/benchmarks/bench_scenes.py`` (``main(argv)``);
``python scripts/benchmarks/bench_scenes.py --help`` lists the options.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir)))  # this checkout first

from ssr_app.benchmarks.bench_scenes import main  # noqa: E402

if __name__ == '__main__':
    main()
