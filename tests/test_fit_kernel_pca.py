"""scripts/fit_kernel_pca.py: the kernel PCA fitted on the degradation an option file configures."""
import os.path as osp
import sys

import torch

from conftest import ROOT
from ssr_data.degradations import SVDegradation
from ssr_data.kernels import KernelPCA

sys.path.insert(0, osp.join(ROOT, 'scripts'))
from ssr_app.tools.fit_kernel_pca import degradation_options, main  # noqa: E402


def _second_moment(kernels, k):
    """Mean spread (in pixels²) of N×k² kernels around their centre."""
    r = torch.arange(k, dtype=torch.float64) - k // 2
    d2 = (r[:, None]**2 + r[None, :]**2).reshape(-1)
    return float((kernels.double() * d2).sum(1).mean())


def test_sample_kernels_follow_the_configured_degradation():
    narrow = SVDegradation({'scale': 4, 'kernel_size': 15, 'sigma_range': [0.6, 1.0]}).sample_kernels(500, seed=0)
    wide = SVDegradation({'scale': 4, 'kernel_size': 15, 'sigma_range': [3.0, 4.0]}).sample_kernels(500, seed=0)
    assert narrow.shape == wide.shape == (500, 225)
    assert torch.allclose(narrow.sum(1), torch.ones(500), atol=1e-5)
    assert _second_moment(wide, 15) > 4 * _second_moment(narrow, 15)
    again = SVDegradation({'scale': 4, 'kernel_size': 15, 'sigma_range': [0.6, 1.0]}).sample_kernels(500, seed=0)
    assert torch.equal(narrow, again)
    block = SVDegradation({'scale': 4, 'kernel_size': 15, 'kernel_mode': 'block'}).sample_kernels(100, seed=1)
    assert block.shape == (100, 225)


def test_fit_from_an_option_file(tmp_path, capsys):
    opt_file = tmp_path / 'train.yml'
    opt_file.write_text('scale: 4\nnetwork_g:\n  type: NBSR\n  pca_dim: 6\ndatasets:\n  train:\n'
                        '    type: SSRDegradationDataset\n    kernel_size: 11\n    sigma_range: [2.0, 3.0]\n'
                        '    rho_min: 0.5\n')
    assert degradation_options(str(opt_file)) == {'kernel_size': 11, 'sigma_range': [2.0, 3.0], 'rho_min': 0.5,
                                                   'scale': 4}
    out = tmp_path / 'pca' / 'p.pth'
    assert main(['-opt', str(opt_file), '-o', str(out), '--samples', '600']) == 0
    assert 'variance kept' in capsys.readouterr().out
    pca = KernelPCA.load(str(out))
    assert pca.kernel_size == 11 and pca.dim == 6
    # a basis for another degradation is another basis: it codes its own kernels better than these
    other = tmp_path / 'other.pth'
    assert main(['--kernel-size', '11', '--sigma-range', '0.6', '1.0', '--dim', '6', '-o', str(other),
                 '--samples', '600']) == 0
    mine = SVDegradation({'scale': 4, 'kernel_size': 11, 'sigma_range': [2.0, 3.0], 'rho_min': 0.5})
    kmap = mine.sample_kernels(300, seed=5).t().reshape(1, 121, 1, 300)

    def err(p):
        return float((p.decode(p.encode(kmap)) - kmap).square().mean())

    assert err(pca) < err(KernelPCA.load(str(other)))
