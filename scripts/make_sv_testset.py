"""Write a fixed spatially variant test set from HR images (LR PNG, HR PNG, kernel maps, depth, the pattern).

The code is ``ssr_app/tools/make_sv_testset.py`` (``main(argv)``; the console command ``ssr-make-sv-testset``);
``python scripts/make_sv_testset.py --help``.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))  # this checkout's packages first

from ssr_app.tools.make_sv_testset import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
