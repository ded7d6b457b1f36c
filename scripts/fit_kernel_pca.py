"""Fit the kernel PCA (the NBSR / SSR kernel code) on kernels of the degradation an option file trains on.

The code is ``ssr_app/tools/fit_kernel_pca.py`` (``main(argv)``; the console command ``ssr-fit-kernel-pca``);
``python scripts/fit_kernel_pca.py --help``.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))  # this checkout's packages first

from ssr_app.tools.fit_kernel_pca import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
