"""Every GPU measurement the project promises, in one run, as one table (issue 13).

The code is ``ssr_app/benchmarks/gpu_suite.py`` (``main(argv)``);
``python scripts/benchmarks/gpu_suite.py --help`` lists the options.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir)))  # this checkout first

from ssr_app.benchmarks.gpu_suite import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
