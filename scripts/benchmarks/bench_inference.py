"""Inference cost per image vs input size and tile size (random weights; timing and memory only).

The code is ``ssr_app/benchmarks/bench_inference.py`` (``main(argv)``);
``python scripts/benchmarks/bench_inference.py --help`` lists the options.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir)))  # this checkout first

from ssr_app.benchmarks.bench_inference import main  # noqa: E402

if __name__ == '__main__':
    main()
