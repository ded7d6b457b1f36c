"""How much each trained arm of ssr_ablation.py uses each of its conditions, at the network itself.

The code is ``ssr_app/experiments/ssr_condition_use.py`` (``main(argv)``; also ``python -m ssr_app.experiments.ssr_condition_use``);
``python scripts/experiments/ssr_condition_use.py --help``.
"""
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir))
sys.path.insert(0, ROOT)  # this checkout's packages first

from ssr_app.experiments.ssr_condition_use import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
