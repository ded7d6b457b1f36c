"""Fit the kernel PCA (the NBSR / SSR kernel code) on kernels of the degradation an option file trains on.

    # the degradation of options/train_nbsr.yml (its datasets:train block), written where that file expects it
    python scripts/fit_kernel_pca.py -opt options/train_nbsr.yml -o datasets/kernel_pca/kernel_pca_x4_k21.pth
    # or from flags (the SVDegradation keys: see docs/degradations.md)
    python scripts/fit_kernel_pca.py --scale 4 --kernel-size 21 --sigma-range 0.6 5.0 --rho-min 0.2 \
        -o datasets/kernel_pca/kernel_pca_x4_k21.pth

Kernels are drawn with ``SVDegradation.sample_kernels`` (per-pixel kernels of random LR maps under the
configured ``kernel_mode``, ``sigma_range``, ``rho_min``, ``theta_jitter``...), the first ``--dim``
principal components are kept (``KernelPCA.fit``) and saved with ``KernelPCA.save`` (atomically). The
script prints how much of the kernels' variance the code keeps and the kernel PSNR of encode-decode on
held-out kernels (``calculate_kernel_psnr``, the metric of the validation tables). Deterministic for a given ``--seed``.
"""
import argparse
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ssr_utils import compat  # noqa: E402

compat.apply()

import yaml  # noqa: E402

from ssr_data.degradations import SVDegradation  # noqa: E402
from ssr_data.kernels import KernelPCA  # noqa: E402
from ssr_utils.errors import OptionError, exit_on_option_error  # noqa: E402
from ssr_utils.kernel_metrics import calculate_kernel_psnr  # noqa: E402

DEGRADATION_KEYS = ('kernel_size', 'kernel_mode', 'sigma_range', 'rho_min', 'theta_jitter', 'jitter_cells',
                    'block_size')


def degradation_options(opt_path=None, overrides=None):
    """The SVDegradation keys of ``datasets:train`` in an option file (scale from the file's ``scale``),
    updated by ``overrides`` (values that are not None)."""
    opt = {}
    if opt_path is not None:
        from basicsr.utils.options import ordered_yaml
        with open(opt_path) as f:
            full = yaml.load(f, Loader=ordered_yaml()[0])
        train = ((full.get('datasets') or {}).get('train')) or {}
        if not train:
            raise OptionError('datasets:train', None, f'{opt_path} has no training dataset to take the degradation from')
        opt = {k: train[k] for k in DEGRADATION_KEYS if k in train}
        opt['scale'] = train.get('scale', full.get('scale', 4))
    for key, value in (overrides or {}).items():
        if value is not None:
            opt[key] = list(value) if isinstance(value, tuple) else value
    opt.setdefault('scale', 4)
    return opt


def pca_dim_of(opt_path):
    """``network_g.pca_dim`` / ``kernel_code_channels`` of an option file, if it sets one."""
    from basicsr.utils.options import ordered_yaml
    with open(opt_path) as f:
        full = yaml.load(f, Loader=ordered_yaml()[0])
    net = full.get('network_g') or {}
    return net.get('pca_dim', net.get('kernel_code_channels'))


def fit_kernel_pca(deg_opt, dim=10, samples=20000, seed=0):
    """Returns ``(KernelPCA, report dict)``."""
    if samples < 2 * dim:
        raise OptionError('--samples', samples, f'need at least {2 * dim} kernels for {dim} components')
    degradation = SVDegradation(deg_opt)
    kernels = degradation.sample_kernels(samples, seed=seed).double()
    pca = KernelPCA.fit(kernels, dim)
    centred = kernels - kernels.mean(0)
    total = float(centred.square().sum())
    kept = float((centred @ pca.components.double().t()).square().sum())
    held_out = degradation.sample_kernels(2000, seed=seed + 1)
    kmap = held_out.t().reshape(1, -1, 1, held_out.shape[0]).float()
    recon = pca.decode(pca.encode(kmap))
    report = {'kernels': samples, 'dim': dim, 'kernel_size': degradation.kernel_size, 'scale': degradation.scale,
              'kernel_mode': degradation.kernel_mode, 'sigma_range': list(degradation.sigma_range),
              'variance_kept': kept / total, 'heldout_kernel_psnr': calculate_kernel_psnr(recon, kmap)}
    return pca, report


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', default=None, help='option file whose datasets:train degradation to use')
    parser.add_argument('-o', '--output', required=True, help='KernelPCA file to write (.pth)')
    parser.add_argument('--dim', type=int, default=None, help='code length L (default: network_g.pca_dim of -opt, else 10)')
    parser.add_argument('--samples', type=int, default=20000, help='kernels to fit on')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--scale', type=int, default=None)
    parser.add_argument('--kernel-size', type=int, default=None)
    parser.add_argument('--kernel-mode', default=None, help='depth | invariant | linear | rotate | block')
    parser.add_argument('--sigma-range', type=float, nargs=2, default=None, metavar=('MIN', 'MAX'))
    parser.add_argument('--rho-min', type=float, default=None)
    parser.add_argument('--theta-jitter', type=float, default=None)
    args = parser.parse_args(argv)
    deg_opt = degradation_options(args.opt, {'scale': args.scale, 'kernel_size': args.kernel_size,
                                             'kernel_mode': args.kernel_mode, 'sigma_range': args.sigma_range,
                                             'rho_min': args.rho_min, 'theta_jitter': args.theta_jitter})
    dim = args.dim or (pca_dim_of(args.opt) if args.opt else None) or 10
    pca, report = fit_kernel_pca(deg_opt, dim, args.samples, args.seed)
    pca.save(args.output)
    print(f'wrote {args.output}: L = {dim} components of {report["kernel_size"]}x{report["kernel_size"]} kernels '
          f'(x{report["scale"]}, kernel_mode {report["kernel_mode"]}, sigma {report["sigma_range"]}), '
          f'{report["variance_kept"] * 100:.2f}% of the variance kept, held-out kernel PSNR '
          f'{report["heldout_kernel_psnr"]:.1f} dB')
    return 0


if __name__ == '__main__':
    sys.exit(main())
