"""Diagnostics of a trained demo SSR checkpoint on ``datasets/demo/val_x4`` (docs/diffusion.md, "The CPU demo").

The code is ``ssr_app/experiments/ssr_demo_diagnostics.py`` (``main(argv)``);
``python scripts/experiments/ssr_demo_diagnostics.py --help`` lists the options.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir)))  # this checkout first

from ssr_app.experiments.ssr_demo_diagnostics import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
