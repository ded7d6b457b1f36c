"""``python basicsr/train.py -opt options/<file>.yml``: BasicSR's training with SSR registered.

Everything lands under the repository root (``experiments/``, ``tb_logger/``), whatever the
current directory; ``--auto_resume``, ``--launcher pytorch`` (under torchrun), ``--debug`` and
``--force_yml`` work as in BasicSR.
"""
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(__file__, osp.pardir, osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

if __name__ == '__main__':
    from ssr_app.launch import train
    train(ROOT)
