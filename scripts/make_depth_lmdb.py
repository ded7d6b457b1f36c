"""Compute the depth of every image of an HR LMDB or folder into a depth LMDB with the same keys.

The code is ``ssr_app/tools/make_depth_lmdb.py`` (``main(argv)``; the console command ``ssr-make-depth-lmdb``);
``python scripts/make_depth_lmdb.py --help``.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))  # this checkout's packages first

from ssr_app.tools.make_depth_lmdb import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
