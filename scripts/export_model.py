"""Write an SSR model folder from an experiment folder or an option file (frozen parts referenced by path).

    python scripts/export_model.py -i experiments/ssr_demo --svkr experiments/train_SVKR_x4_demo -o models/ssr_demo_x4
    python scripts/inference_ssr.py --model_path models/ssr_demo_x4 -i <image or folder> -o <output folder>

The engine is ``ssr_app.export`` (its flags: ``ssr_app.cli``); see docs/inference.md.
"""
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ssr_utils.errors import exit_on_option_error  # noqa: E402


@exit_on_option_error()
def main(argv=None):
    from ssr_app.cli import build_export_parser
    args = build_export_parser().parse_args(argv)
    from ssr_app.export import run
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
