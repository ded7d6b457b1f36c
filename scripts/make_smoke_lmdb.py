"""Tiny paired LMDBs (HR 64x64 crops of scikit-image photographs, bicubic x4 LR) for plumbing checks.

The code is ``ssr_app/tools/make_smoke_lmdb.py`` (``main(argv)``);
``python scripts/make_smoke_lmdb.py --help``.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))  # this checkout's packages first

from ssr_app.tools.make_smoke_lmdb import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
