"""Paper Table 2 and Figs. 8/9 for SSR, the fusion methods, frozen prior against from scratch, SSR's PD curve.

The code is ``ssr_app/experiments/ssr_ablation.py`` (``main(argv)``; also ``python -m ssr_app.experiments.ssr_ablation``);
``python scripts/experiments/ssr_ablation.py --help``.
"""
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir))
sys.path.insert(0, ROOT)  # this checkout's packages first

from ssr_app.experiments.ssr_ablation import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
