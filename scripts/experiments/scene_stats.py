"""What the generated RGB-D scenes hold (the numbers in docs/scenes.md), over scenes with seeds (seed, 0..n-1).

The code is ``ssr_app/experiments/scene_stats.py`` (``main(argv)``);
``python scripts/experiments/scene_stats.py --help`` lists the options.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir)))  # this checkout first

from ssr_app.experiments.scene_stats import main  # noqa: E402

if __name__ == '__main__':
    main()
