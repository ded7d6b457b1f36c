"""Command-line parsers of the applications (``scripts/inference_ssr.py``, ``scripts/export_model.py``)."""
import argparse

# the smallest --tile (LR pixels): smaller windows are all overlap and context, and take minutes for nothing
MIN_TILE = 8

INFERENCE_USAGE = """Super-resolve an image or a folder with SSR (or only its SVKR stage).

    python scripts/inference_ssr.py --model_path models/ssr_demo_x4 -i photos/ -o results/photos_sr
    python scripts/inference_ssr.py -opt options/test_ssr_demo.yml -i photos/ -o results/photos_sr
    python scripts/inference_ssr.py --model_path models/ssr_demo_x4 -i photo.jpg -o out --svkr-only --save-maps
    python scripts/inference_ssr.py -opt experiments/train_SSR_x4 -i big.png -o out --tile 128 --tile-overlap 16
    python scripts/inference_ssr.py --model_path models/ssr_demo_x4 -i frames/ -o out --batch_size 4 --fp16

``--model_path`` is a model folder (``scripts/export_model.py`` makes one; ``SSRPipeline.save_pretrained``);
``-opt`` an option file or an experiment folder. Outputs ``<out>/<input stem>[_<suffix>].<ext>`` (16-bit when
the input is 16-bit and the output PNG, gray when it is gray, alpha carried through and upscaled separately;
``_seed<N>`` added per sample with ``--num_samples``). On CUDA the weights are float16 unless ``--fp32``
(``--bf16`` on any device). The first line names the device. Files that cannot be read or processed are
reported and skipped; the exit status is 1 when anything was skipped, 2 for bad arguments or an empty input
folder. See docs/inference.md.
"""

EXPORT_USAGE = """Write an SSR model folder (SSRPipeline.save_pretrained) from training results. Frozen parts that
load from folders of their own (the SVKR's depth network, a Stable Diffusion base or the project's prior) are
copied into the folder when their weights are at most 200 MB (relative paths: the folder can be moved), and
referenced by absolute path otherwise; --copy-parts copies them whatever their size, --reference-parts never.

    python scripts/export_model.py -i experiments/ssr_demo --svkr experiments/train_SVKR_x4_demo -o models/ssr_demo_x4
    python scripts/export_model.py -i options/test_ssr_demo.yml -o models/ssr_demo_x4
    python scripts/export_model.py -i experiments/train_SVKR_x4_demo -o models/svkr_demo_x4   # SVKR only

``-i`` is an experiment folder (its option file and models/net_g_latest.pth, EMA weights when saved) or an
option file naming its checkpoints (path:pretrain_network_g, path:pretrain_network_svkr). ``--svkr`` adds
the SVKR of another experiment folder or option file (an SSR stage trained on ground-truth maps has none).
Then: python scripts/inference_ssr.py --model_path <folder> -i <images> -o <out>.
"""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line naming the flag (``<prog>: error: argument --tile: ...``),
    exit status 2, without the usage block."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def build_inference_parser(prog=None):
    p = OneLineParser(prog=prog, description=INFERENCE_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument('--model_path', '--model-path', dest='model_path',
                        help='a model folder (scripts/export_model.py, SSRPipeline.save_pretrained)')
    source.add_argument('-opt', '--opt', help='option file (SSRModel; or an SVKR one with --svkr-only) or an '
                        'experiment folder')
    p.add_argument('-i', '--input', required=True, help='an image or a folder of images')
    p.add_argument('-o', '--output', required=True, help='output folder')
    p.add_argument('-s', '--outscale', '--scale', dest='scale', type=float, default=None,
                   help='output scale; default: the network scale (other values resize its result)')
    p.add_argument('--ext', default='auto', choices=('auto', 'png', 'jpg'),
                   help='output format: auto = jpg for JPEG inputs, png otherwise (png whenever the input has '
                   'alpha); default auto')
    p.add_argument('--suffix', default='', help='output name <stem>_<suffix>.<ext> (default: no suffix)')
    p.add_argument('--steps', type=int, default=None, help='sampling steps (default: the model\'s)')
    p.add_argument('--seed', type=int, default=None, help='sampling seed (default: the model\'s)')
    p.add_argument('--sampler', default=None, choices=('ddim', 'dpmsolver++'),
                   help='diffusion sampler (default: the model\'s)')
    p.add_argument('--strength', type=float, default=None,
                   help='in (0, 1]: 1 samples from noise; below 1 starts from the noised LR latent and runs the '
                   'last int(steps·strength) steps (default: the model\'s)')
    p.add_argument('--vae-residual', '--vae_residual', dest='vae_residual', action=argparse.BooleanOptionalAction,
                   default=None, help='add back what the VAE round trip loses on the image the start latent comes '
                   'from (the LR image, or the SVKR\'s I^T for lr_input: svkr): with a small --strength the result '
                   'approaches that image, not its VAE reconstruction (default: the model\'s)')
    p.add_argument('--num_samples', '--num-samples', dest='num_samples', type=int, default=1,
                   help='samples per image, seeds seed, seed+1, ...; written as <stem>_seed<seed>.<ext>')
    p.add_argument('--tile', type=int, default=None,
                   help=f'tile size in LR pixels (>= {MIN_TILE}); default: no tiling')
    p.add_argument('--tile-overlap', '--tile_overlap', '--tile_pad', '--tile-pad', dest='tile_overlap', type=int,
                   default=None, help='overlap of neighbouring tiles in LR pixels (default: min(16, tile / 4); '
                   '--tile_pad is accepted for Real-ESRGAN users)')
    p.add_argument('--batch_size', '--batch-size', dest='batch_size', type=int, default=1,
                   help='images of one size per pipeline call (default 1); with --num_samples each image\'s samples '
                   'run in the same call')
    p.add_argument('--vae-tiling', '--vae_tiling', dest='vae_tiling', choices=('layerwise', 'windows'), default=None,
                   help='how the VAE is tiled: layerwise (whole-image GroupNorm statistics, no tone seams; the default '
                   'with --tile; without --tile it tiles the VAE alone) or windows (each --tile window through the '
                   'whole VAE, blended)')
    p.add_argument('--offload', action='store_true',
                   help='keep the networks in host memory and move each to the GPU for its stage only '
                   '(SSRPipeline.enable_model_cpu_offload)')
    p.add_argument('--attention-slicing', '--attention_slicing', dest='attention_slicing', action='store_true',
                   help='the UNet\'s attention in slices (diffusers\' attention slicing; with PyTorch\'s '
                   'scaled-dot-product attention it costs memory and time instead, see docs/inference.md)')
    half = p.add_mutually_exclusive_group()
    half.add_argument('--fp32', action='store_true', help='float32 weights on the GPU too (default there: fp16)')
    half.add_argument('--fp16', action='store_true', help='float16 weights (batch norms and the kernel PCA stay '
                      'float32; the default on CUDA; not on the CPU, use --bf16 there)')
    half.add_argument('--bf16', action='store_true', help='bfloat16 weights (any device)')
    p.add_argument('--device', default='auto', help='auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps')
    p.add_argument('--color-fix', '--color_fix', dest='color_fix', choices=('none', 'adain', 'wavelet'),
                   default=None, help='colour correction against the LR input (default: the model\'s)')
    p.add_argument('--svkr-only', '--svkr_only', dest='svkr_only', action='store_true',
                   help='the SVKR result I^T only (no diffusion; fast)')
    p.add_argument('--save-maps', '--save_maps', dest='save_maps', action='store_true',
                   help='also write <stem>_depth.png and <stem>_kernel_var.png (kernel-variance heat map)')
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bars (transformers\' and diffusers\' too)')
    return p


def build_export_parser():
    p = argparse.ArgumentParser(description=EXPORT_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-i', '--input', required=True, help='experiment folder or option file (SSR or SVKR)')
    p.add_argument('--svkr', default=None, help='experiment folder or option file of the SVKR to include')
    p.add_argument('-o', '--output', required=True, help='the model folder to write')
    p.add_argument('--overwrite', action='store_true', help='replace an existing model folder')
    parts = p.add_mutually_exclusive_group()
    parts.add_argument('--copy-parts', '--copy_parts', dest='copy_parts', action='store_const', const='all',
                       default='auto', help='copy every frozen part (depth network, diffusion base) into the folder, '
                       'whatever its size (default: those up to 200 MB)')
    parts.add_argument('--reference-parts', '--reference_parts', dest='copy_parts', action='store_const',
                       const='none', help='copy none: reference them by absolute path (the folder then works only '
                       'where those paths exist)')
    return p
