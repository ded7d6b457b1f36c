"""Kernels of the SSR degradations: normalisation, shapes, orientation, the depth model, patterns, PCA."""
import math

import numpy as np
import pytest
import torch

from ssr_data import kernels as K
from ssr_utils.errors import OptionError


def _centre_of_mass_cov(kernel):
    k = kernel.shape[-1]
    ax = torch.arange(k, dtype=torch.float64) - k // 2
    yy, xx = torch.meshgrid(ax, ax, indexing='ij')
    p = kernel.double()
    cxx, cyy, cxy = (p * xx * xx).sum(), (p * yy * yy).sum(), (p * xx * yy).sum()
    return (p * xx).sum(), (p * yy).sum(), cxx, cyy, cxy


@pytest.mark.parametrize('k', [7, 21, 31])
def test_kernels_normalised_and_shaped(k):
    g = torch.Generator().manual_seed(0)
    smaj = torch.rand(2, 5, 6, generator=g) * 4 + 0.3
    smin = smaj * (torch.rand(2, 5, 6, generator=g) * 0.8 + 0.2)
    theta = torch.rand(2, 5, 6, generator=g) * math.pi
    kernels = K.anisotropic_gaussian_kernels(smaj, smin, theta, k)
    assert kernels.shape == (2, 5, 6, k * k)
    assert torch.allclose(kernels.sum(-1), torch.ones(2, 5, 6), atol=1e-5)
    assert (kernels >= 0).all()
    kmap = K.kernel_map_from_params(smaj, smin, theta, k)
    assert kmap.shape == (2, k * k, 5, 6)
    # the map is the per-pixel kernels, channel = row-major tap index
    assert torch.allclose(kmap.permute(0, 2, 3, 1), kernels, atol=1e-7)
    assert K.kernel_map_from_params(smaj[0], smin[0], theta[0], k).shape == (1, k * k, 5, 6)


@pytest.mark.parametrize('k,dtype', [(3, torch.float32), (21, torch.float32), (21, torch.float64), (31, torch.float32)])
def test_mirrored_half_equals_every_tap_evaluated(k, dtype):
    # only taps 0..centre are evaluated and mirrored; the kernels must be those of evaluating all k² taps
    # with the same operations, bit for bit (the degrade_on: model path relies on identical kernels)
    g = torch.Generator().manual_seed(k)
    smaj = (torch.rand(3, 4, 5, generator=g) * 5 + 0.1).to(dtype)
    smin = smaj * (torch.rand(3, 4, 5, generator=g) * 0.9 + 0.1).to(dtype)
    theta = (torch.rand(3, 4, 5, generator=g) * 7 - 3).to(dtype)
    cos, sin = torch.cos(theta.reshape(-1)), torch.sin(theta.reshape(-1))
    i1, i2 = 1.0 / (smaj.reshape(-1)**2), 1.0 / (smin.reshape(-1)**2)
    coef = torch.stack([cos * cos * i1 + sin * sin * i2, cos * sin * (i1 - i2), sin * sin * i1 + cos * cos * i2])
    ax = torch.arange(-(k // 2), k // 2 + 1, dtype=dtype)
    yy, xx = [t.reshape(-1) for t in torch.meshgrid(ax, ax, indexing='ij')]
    basis = torch.stack([xx * xx, 2 * xx * yy, yy * yy], dim=1).mul_(-0.5)
    q = basis[:, 0:1] * coef[0]
    q.addcmul_(basis[:, 1:2], coef[1]).addcmul_(basis[:, 2:3], coef[2])
    ref = q.clamp_min_(-80.0).exp_()
    ref = ref.div_(ref.sum(dim=0, keepdim=True))
    taps = K.kernel_taps(smaj, smin, theta, k)
    assert taps.shape == (k * k, 3, 4, 5) and taps.dtype == dtype
    assert torch.equal(taps.reshape(k * k, -1), ref)
    assert torch.equal(K.kernel_map_from_params(smaj, smin, theta, k), taps.transpose(0, 1))


def test_isotropic_kernel_is_the_separable_gaussian():
    sigma, k = 1.7, 21
    ax = torch.arange(k, dtype=torch.float64) - k // 2
    g1 = torch.exp(-ax**2 / (2 * sigma**2))
    expected = torch.outer(g1, g1)
    expected /= expected.sum()
    sig = torch.tensor(sigma, dtype=torch.float64)
    got = K.anisotropic_gaussian_kernels(sig, sig, torch.tensor(0.3, dtype=torch.float64), k)
    assert torch.allclose(got.view(k, k), expected, atol=1e-12)


def test_orientation_and_widths():
    k = 31
    s1, s2 = 3.0, 1.0
    for theta in (0.0, math.pi / 2, math.pi / 4):
        ker = K.anisotropic_gaussian_kernels(*[torch.tensor(v, dtype=torch.float64) for v in (s1, s2, theta)],
                                             k).view(k, k)
        mx, my, cxx, cyy, cxy = _centre_of_mass_cov(ker)
        assert abs(mx) < 1e-9 and abs(my) < 1e-9
        c, s = math.cos(theta), math.sin(theta)
        # covariance R diag(s1², s2²) Rᵀ, x = columns, y = rows (down)
        assert cxx.item() == pytest.approx(c * c * s1**2 + s * s * s2**2, rel=2e-3)
        assert cyy.item() == pytest.approx(s * s * s1**2 + c * c * s2**2, rel=2e-3)
        assert cxy.item() == pytest.approx(c * s * (s1**2 - s2**2), abs=2e-2)


def test_even_or_bad_kernel_size_names_the_option():
    with pytest.raises(OptionError, match='kernel_size'):
        K.anisotropic_gaussian_kernels(1.0, 1.0, 0.0, 20)
    with pytest.raises(OptionError, match='kernel_size'):
        K.KernelPCA(kernel_size=8)


def test_spatially_invariant_map():
    kmap = K.spatially_invariant_kernel_map(2.0, 1.0, 0.5, 3, 4, 21)
    assert kmap.shape == (1, 441, 3, 4)
    assert torch.equal(kmap[0, :, 0, 0], kmap[0, :, 2, 3])


def test_depth_defocus_model():
    depth = torch.linspace(0, 1, 11)
    sig = K.depth_defocus_sigma(depth, 0.3, 0.6, 5.0)
    assert sig[3].item() == pytest.approx(0.6)  # in focus: sharpest
    assert sig.max().item() == pytest.approx(5.0)  # farthest from the focus plane: blurriest
    assert sig[10].item() == pytest.approx(5.0)  # max(d_f, 1 - d_f) = 0.7 = |1 - 0.3|
    assert (torch.diff(sig[3:]) > 0).all() and (torch.diff(sig[:4]) < 0).all()


def test_depth_params_deterministic_and_in_range():
    depth = torch.rand(12, 10, generator=torch.Generator().manual_seed(1))
    a = K.sample_depth_kernel_params(depth, np.random.default_rng(5))
    b = K.sample_depth_kernel_params(depth, np.random.default_rng(5))
    c = K.sample_depth_kernel_params(depth, np.random.default_rng(6))
    for x, y in zip(a[:3], b[:3]):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    smaj, smin, theta, params = a
    assert smaj.min() >= 0.6 - 1e-6 and smaj.max() <= 5.0 + 1e-6
    assert torch.allclose(smin, smaj * params['rho'])
    assert 0.2 <= params['rho'] <= 1 and 0 <= params['focus'] <= 1
    assert (theta - params['theta']).abs().max() <= 0.3 + 1e-6  # smooth jitter within its amplitude
    assert theta.std() > 0  # per-pixel, not constant


def test_a_fixed_focus_plane_makes_blur_follow_depth_alone():
    depth = torch.rand(12, 10, generator=torch.Generator().manual_seed(1))
    drawn = K.sample_depth_kernel_params(depth, np.random.default_rng(5))
    fixed = K.sample_depth_kernel_params(depth, np.random.default_rng(5), focus=1.0)
    assert fixed[3]['focus'] == 1.0 and drawn[3]['focus'] != 1.0
    # the same draws otherwise (the focus is drawn and dropped): only sigma moves
    assert fixed[3]['rho'] == drawn[3]['rho'] and torch.equal(fixed[2], drawn[2])
    # in focus at the near end (depth 1), blur grows monotonically with distance
    order = depth.flatten().argsort()
    assert (fixed[0].flatten()[order].diff() <= 1e-6).all()
    assert fixed[0].flatten()[order[-1]] < fixed[0].flatten()[order[0]]
    assert torch.allclose(fixed[0], K.depth_defocus_sigma(depth, 1.0, 0.6, 5.0))
    for bad in (1.5, -0.1, 'near'):
        with pytest.raises(OptionError, match='focus_plane'):
            K.check_focus_plane(bad)


@pytest.mark.parametrize('pattern', K.PATTERNS)
def test_patterns_reproducible(pattern):
    depth = torch.rand(16, 12, generator=torch.Generator().manual_seed(0))
    a = K.pattern_params(pattern, 16, 12, 3, depth_lq=depth)
    b = K.pattern_params(pattern, 16, 12, 3, depth_lq=depth)
    c = K.pattern_params(pattern, 16, 12, 4, depth_lq=depth)
    for x, y in zip(a[:3], b[:3]):
        assert x.shape == (16, 12) and torch.equal(x, y)
    assert any(not torch.equal(x, y) for x, y in zip(a[:3], c[:3]))
    assert (a[0] >= 0.6 - 1e-6).all() and (a[0] <= 5.0 + 1e-6).all()


def test_pattern_shapes_of_variation():
    smaj, _, _, _ = K.pattern_params('linear', 4, 9, 0)
    assert torch.allclose(smaj[:, 0], torch.full((4, ), 0.6)) and torch.allclose(smaj[:, -1], torch.full((4, ), 5.0))
    _, _, theta, _ = K.pattern_params('rotate', 9, 9, 0)
    assert theta[0, 4] != theta[8, 4]
    smaj, _, _, _ = K.pattern_params('block', 16, 16, 0, block=8)
    assert torch.equal(smaj[:8, :8], smaj[0, 0].expand(8, 8)) and smaj[0, 0] != smaj[8, 8]
    with pytest.raises(ValueError, match='depth'):
        K.pattern_params('depth', 4, 4, 0)
    with pytest.raises(OptionError, match='pattern'):
        K.pattern_params('spiral', 4, 4, 0)


def test_kernel_pca_fit_encode_decode_save_load(tmp_path):
    kernels = K.random_kernels(1500, 21, seed=0)
    assert kernels.shape == (1500, 441)
    pca = K.KernelPCA.fit(kernels, 10)
    assert pca.components.shape == (10, 441) and pca.mean.shape == (441, )
    assert torch.allclose(pca.components @ pca.components.t(), torch.eye(10), atol=1e-4)
    test = K.random_kernels(64, 21, seed=1).view(1, 8, 8, 441).permute(0, 3, 1, 2)
    code = pca.encode(test)
    assert code.shape == (1, 10, 8, 8)
    # the code is components @ (k - mean)
    k0 = test[0, :, 2, 3]
    assert torch.allclose(code[0, :, 2, 3], pca.components @ (k0 - pca.mean), atol=1e-6)
    rec = pca.decode(code)
    assert rec.shape == test.shape
    rel = (rec - test).norm() / (test - pca.mean[None, :, None, None]).norm()
    assert rel < 0.2  # ten components carry most of a smooth Gaussian family
    full = K.KernelPCA.fit(kernels[:600].double(), 441)
    assert torch.allclose(full.decode(full.encode(test)), test, atol=1e-5)  # full basis: lossless
    path = tmp_path / 'pca.pth'
    pca.save(str(path))
    state = torch.load(str(path), weights_only=True)
    assert set(state) == {'components', 'mean', 'kernel_size'} and state['kernel_size'] == 21
    back = K.KernelPCA.load(str(path))
    assert back.kernel_size == 21 and torch.equal(back.components, pca.components)
    assert torch.equal(back.encode(test), code)
    # a placeholder PCA takes a fitted one's state dict (networks holding a PCA)
    holder = K.KernelPCA(kernel_size=21, dim=10)
    holder.load_state_dict(pca.state_dict())
    assert torch.equal(holder.encode(test), code)
    with pytest.raises(FileNotFoundError):
        K.KernelPCA.load(str(tmp_path / 'missing.pth'))
