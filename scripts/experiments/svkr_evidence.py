"""Evidence for SVKR (issues 4 and 10): what depth and the loop add to kernel estimation and SR.

The code is ``ssr_app/experiments/svkr_evidence.py`` (``main(argv)``);
``python scripts/experiments/svkr_evidence.py --help`` lists the options.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir)))  # this checkout first

from ssr_app.experiments.svkr_evidence import main  # noqa: E402

if __name__ == '__main__':
    main()
