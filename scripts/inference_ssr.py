"""Super-resolve an image or a folder with SSR (or only its SVKR stage).

    python scripts/inference_ssr.py -opt options/test_ssr_demo.yml -i photos/ -o results/photos_sr
    python scripts/inference_ssr.py -opt options/test_svkr_demo.yml -i photo.jpg -o out --svkr-only --save-maps
    python scripts/inference_ssr.py -opt experiments/train_SSR_x4 -i big.png -o out --tile 128 --tile-overlap 16

Outputs ``<out>/<input stem>.png`` (16-bit when the input is 16-bit, gray when it is gray, alpha carried
through and upscaled separately). Files that cannot be read or processed are reported and skipped; the
exit status is 1 when anything was skipped, 2 for bad arguments. See docs/inference.md.
"""
import argparse
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-opt', '--opt', required=True,
                   help='option file (SSRModel; or an SVKR one with --svkr-only) or an experiment folder')
    p.add_argument('-i', '--input', required=True, help='an image or a folder of images')
    p.add_argument('-o', '--output', required=True, help='output folder')
    p.add_argument('--scale', type=float, default=None,
                   help='output scale; default: the network scale (other values resize its result)')
    p.add_argument('--steps', type=int, default=None, help='sampling steps (default: diffusion:num_inference_steps)')
    p.add_argument('--seed', type=int, default=None, help='sampling seed (default: diffusion:seed)')
    p.add_argument('--tile', type=int, default=0, help='tile size in LR pixels; 0 = no tiling')
    p.add_argument('--tile-overlap', type=int, default=16, help='overlap of neighbouring tiles in LR pixels')
    half = p.add_mutually_exclusive_group()
    half.add_argument('--fp16', action='store_true', help='float16 autocast (GPU only)')
    half.add_argument('--bf16', action='store_true', help='bfloat16 autocast (GPU only)')
    p.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    p.add_argument('--color-fix', choices=('none', 'adain', 'wavelet'), default=None,
                   help='colour correction against the LR input (default: diffusion:color_fix)')
    p.add_argument('--svkr-only', action='store_true', help='the SVKR result I^T only (no diffusion; fast)')
    p.add_argument('--save-maps', action='store_true',
                   help='also write <stem>_depth.png and <stem>_kernel_var.png (kernel-variance heat map)')
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bars')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from ssr_utils.inference import run
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
