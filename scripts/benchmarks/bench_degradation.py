"""Benchmark of the SSR degradation data path (issue 3 budgets), printed as ratios measured in one run.

The code is ``ssr_app/benchmarks/bench_degradation.py`` (``main(argv)``);
``python scripts/benchmarks/bench_degradation.py --help`` lists the options.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir)))  # this checkout first

from ssr_app.benchmarks.bench_degradation import main  # noqa: E402

if __name__ == '__main__':
    main()
