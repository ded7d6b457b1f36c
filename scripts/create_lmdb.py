"""Turn a folder of images into an LMDB in BasicSR's format (PNG values, ``meta_info.txt``).

The code is ``ssr_app/tools/create_lmdb.py`` (``main(argv)``; the console command ``ssr-create-lmdb``);
``python scripts/create_lmdb.py --help``.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))  # this checkout's packages first

from ssr_app.tools.create_lmdb import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
