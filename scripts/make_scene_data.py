"""Write RGB-D scenes with exact depth (``ssr_data/scenes.py``) as a BasicSR LMDB pair or as image + depth folders.

The code is ``ssr_app/tools/make_scene_data.py`` (``main(argv)``);
``python scripts/make_scene_data.py --help``.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))  # this checkout's packages first

from ssr_app.tools.make_scene_data import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
