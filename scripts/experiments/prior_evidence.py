"""Is the project's diffusion prior a prior? Noise error, autoencoder reconstruction, sample grid.

The code is ``ssr_app/experiments/prior_evidence.py`` (``main(argv)``; also ``python -m ssr_app.experiments.prior_evidence``);
``python scripts/experiments/prior_evidence.py --help``.
"""
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir))
sys.path.insert(0, ROOT)  # this checkout's packages first

from ssr_app.experiments.prior_evidence import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
