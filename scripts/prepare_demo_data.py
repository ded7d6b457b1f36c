"""Build ``datasets/demo/`` from the real photographs that scikit-image ships (no download).

The code is ``ssr_app/tools/prepare_demo_data.py`` (``main(argv)``; the console command ``ssr-prepare-demo-data``);
``python scripts/prepare_demo_data.py --help``.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))  # this checkout's packages first

from ssr_app.tools.prepare_demo_data import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
