"""``python basicsr/test.py -opt options/<file>.yml``: BasicSR's testing with SSR registered.

Results land under ``<repository root>/results/<name>/``.
"""
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(__file__, osp.pardir, osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

if __name__ == '__main__':
    from ssr_app.launch import test
    test(ROOT)
