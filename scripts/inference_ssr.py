"""Super-resolve an image or a folder with SSR (or only its SVKR stage).

    python scripts/inference_ssr.py --model_path models/ssr_demo_x4 -i photos/ -o results/photos_sr
    python scripts/inference_ssr.py -opt options/test_ssr_demo.yml -i photo.jpg -o out --svkr-only --save-maps
    python scripts/inference_ssr.py -opt experiments/train_SSR_x4 -i big.png -o out --tile 128 --tile-overlap 16

The engine is ``ssr_app.inference`` (its flags: ``ssr_app.cli``); see docs/inference.md.
"""
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ssr_utils.errors import exit_on_option_error  # noqa: E402


@exit_on_option_error()
def main(argv=None):
    from ssr_app.cli import build_inference_parser
    args = build_inference_parser().parse_args(argv)
    from ssr_app.inference import run
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
