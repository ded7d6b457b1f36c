"""Accuracy of a depth network against the weight-free prior on held-out scenes with exact depth.

The code is ``ssr_app/experiments/depth_accuracy.py`` (``main(argv)``);
``python scripts/experiments/depth_accuracy.py --help`` lists the options.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir)))  # this checkout first

from ssr_app.experiments.depth_accuracy import main  # noqa: E402

if __name__ == '__main__':
    main()
