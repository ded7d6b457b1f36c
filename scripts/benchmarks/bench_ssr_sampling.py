"""SSR sampling overhead: the SSR UNet (condition encoders + AMF at every level) vs the bare UNet.

The code is ``ssr_app/benchmarks/bench_ssr_sampling.py`` (``main(argv)``);
``python scripts/benchmarks/bench_ssr_sampling.py --help`` lists the options.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir)))  # this checkout first

from ssr_app.benchmarks.bench_ssr_sampling import main  # noqa: E402

if __name__ == '__main__':
    main()
