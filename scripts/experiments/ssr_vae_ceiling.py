"""What the autoencoder of a trained SSR network lets it reach (VAE round trip of the HR images).

The code is ``ssr_app/experiments/ssr_vae_ceiling.py`` (``main(argv)``; also ``python -m ssr_app.experiments.ssr_vae_ceiling``);
``python scripts/experiments/ssr_vae_ceiling.py --help``.
"""
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir))
sys.path.insert(0, ROOT)  # this checkout's packages first

from ssr_app.experiments.ssr_vae_ceiling import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
