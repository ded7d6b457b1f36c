"""What each condition contributes, on the demo's validation set: trained DKENet and NBSR with their conditions

The code is ``ssr_app/experiments/demo_conditions.py`` (``main(argv)``);
``python scripts/experiments/demo_conditions.py --help`` lists the options.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir)))  # this checkout first

from ssr_app.experiments.demo_conditions import main  # noqa: E402

if __name__ == '__main__':
    main()
