"""Write a depth network checkpoint of ``DepthModel`` as a ``save_pretrained`` folder for ``MonocularDepth``.

The code is ``ssr_app/tools/export_depth_model.py`` (``main(argv)``);
``python scripts/export_depth_model.py --help``.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))  # this checkout's packages first

from ssr_app.tools.export_depth_model import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
