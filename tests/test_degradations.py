"""The SV blur + subsample op against a direct per-pixel reference, and the per-sample degradation."""
import numpy as np
import pytest
import torch

from ssr_data import degradations as D
from ssr_data import kernels as K
from ssr_utils.errors import OptionError


def _random_kernels(b, k, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    ker = torch.rand(b, k * k, h, w, generator=g)
    return ker / ker.sum(1, keepdim=True)


@pytest.mark.parametrize('scale,k,hw', [(4, 7, (3, 2)), (2, 9, (4, 5)), (3, 7, (3, 3)), (4, 21, (4, 3))])
@pytest.mark.parametrize('path', ['unfold', 'polyphase'])
def test_op_matches_direct_reference(scale, k, hw, path, monkeypatch):
    # both code paths (small inputs unfold, large ones loop over polyphase components) against the formula
    monkeypatch.setattr(D, '_unfold_chunk', lambda device, b, c, k, h, w, most=None: b if path == 'unfold' else 0)
    h, w = hw
    g = torch.Generator().manual_seed(scale * 100 + k)
    img = torch.rand(2, 3, h * scale, w * scale, generator=g)
    ker = _random_kernels(2, k, h, w, seed=k)
    out = D.sv_blur_downsample(img, ker, scale)
    ref = D.sv_blur_downsample_reference(img, ker, scale)
    assert out.shape == (2, 3, h, w) and out.dtype == torch.float32
    assert (out.double() - ref).abs().max() < 1e-6


def test_accelerators_unfold_a_batch_of_crops_a_chunk_at_a_time():
    cuda = torch.device('cuda')  # the policy only; no device is needed to ask it
    assert D._unfold_chunk(cuda, 16, 3, 21, 48, 48) == 16  # 192-px training crops at x4: one chunk
    assert D._unfold_chunk(cuda, 16, 3, 21, 64, 64) == 8  # 256 px: two chunks of 8
    assert D._unfold_chunk(cuda, 1, 3, 21, 512, 512) == 0  # a large image: the polyphase loop
    assert D._unfold_chunk(torch.device('cpu'), 16, 3, 21, 48, 48) == 0  # CPUs: the cache-sized loop
    assert D._unfold_chunk(torch.device('cpu'), 1, 3, 21, 12, 12) == 1
    # the chunked path itself (on the CPU here: max_unfold of two images, 3 chunks of 2 + 2 + 1), float32 and
    # bfloat16, against the direct formula; max_unfold=0 is the polyphase loop
    g = torch.Generator().manual_seed(5)
    img = torch.rand(5, 3, 12, 16, generator=g)
    ker = _random_kernels(5, 7, 3, 4, seed=6)
    two = 2 * 3 * 49 * 3 * 4
    assert D._unfold_chunk(torch.device('cpu'), 5, 3, 7, 3, 4, two) == 2
    ref = D.sv_blur_downsample_reference(img, ker, 4)
    for most in (two, 0):
        out = D.sv_blur_downsample(img, ker, 4, max_unfold=most)
        assert out.shape == (5, 3, 3, 4) and out.dtype == torch.float32
        assert (out.double() - ref).abs().max() < 1e-6
        half = D.sv_blur_downsample(img.bfloat16(), ker.bfloat16(), 4, max_unfold=most)
        assert half.dtype == torch.bfloat16 and (half.float() - out).abs().max() < 2e-2


def test_naive_method_agrees():
    img = torch.rand(1, 3, 32, 24, generator=torch.Generator().manual_seed(0))
    ker = _random_kernels(1, 21, 8, 6, 1)
    assert (D.sv_blur_downsample(img, ker, 4) - D.naive_sv_blur_downsample(img, ker, 4)).abs().max() < 1e-5


def test_delta_kernel_is_plain_subsampling_and_constant_image_is_kept():
    k, s = 7, 3
    img = torch.rand(1, 2, 12, 9, generator=torch.Generator().manual_seed(3))
    delta = torch.zeros(1, k * k, 4, 3)
    delta[:, (k // 2) * k + k // 2] = 1
    assert torch.allclose(D.sv_blur_downsample(img, delta, s), img[:, :, ::s, ::s])
    flat = torch.full((1, 3, 16, 16), 0.37)
    assert torch.allclose(D.sv_blur_downsample(flat, _random_kernels(1, 9, 4, 4, 2), 4), torch.full((1, 3, 4, 4), 0.37))


def test_half_precision_inputs_accumulate_in_float32():
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ker = _random_kernels(1, 7, 4, 4, 0)
    ref = D.sv_blur_downsample(img, ker, 4)
    out = D.sv_blur_downsample(img.bfloat16(), ker.bfloat16(), 4)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 2e-2


def test_op_bad_shapes():
    img = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match='LR grid'):
        D.sv_blur_downsample(img, _random_kernels(1, 7, 3, 4, 0), 4)
    with pytest.raises(ValueError, match='odd'):
        D.sv_blur_downsample(img, torch.rand(1, 36, 4, 4), 4)
    with pytest.raises(ValueError, match='divisible'):
        D.sv_blur_downsample(torch.rand(1, 3, 18, 16), _random_kernels(1, 7, 4, 4, 0), 4)


def _gt_depth(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, size, size, generator=g), torch.rand(1, size, size, generator=g)


def test_degradation_deterministic_per_rng_and_consistent():
    gt, depth = _gt_depth()
    deg = D.SVDegradation({'scale': 4, 'kernel_size': 11})
    a = deg(gt, depth, np.random.default_rng([7, 3]))
    b = deg(gt, depth, np.random.default_rng([7, 3]))
    c = deg(gt, depth, np.random.default_rng([7, 4]))
    for key in ('lq', 'kernel', 'depth_lq'):
        assert torch.equal(a[key], b[key])
    assert a['params'] == b['params']
    assert not torch.equal(a['lq'], c['lq'])
    assert a['lq'].shape == (3, 8, 8) and a['kernel'].shape == (121, 8, 8) and a['depth_lq'].shape == (1, 8, 8)
    assert torch.allclose(a['kernel'].sum(0), torch.ones(8, 8), atol=1e-5)
    assert torch.allclose(a['depth_lq'], torch.nn.functional.avg_pool2d(depth[None], 4)[0])
    assert isinstance(a['params']['jpeg_quality'], int) and 30 <= a['params']['jpeg_quality'] <= 95


@pytest.mark.parametrize('use_noise,use_jpeg', [(False, False), (False, True), (True, False), (True, True)])
def test_table3_switches(use_noise, use_jpeg):
    gt, depth = _gt_depth(1)
    deg = D.SVDegradation({'scale': 4, 'kernel_size': 11, 'use_noise': use_noise, 'use_jpeg': use_jpeg,
                           'noise_range': [10, 20]})
    out = deg(gt, depth, np.random.default_rng(0))
    clean = D.quantize(D.sv_blur_downsample(gt[None], out['kernel'][None], 4)[0])
    p = out['params']
    if not use_noise and not use_jpeg:
        assert torch.equal(out['lq'], clean)  # blur + subsample only, 8-bit levels
    else:
        assert not torch.equal(out['lq'], clean)
    assert (p['noise_sigma'] > 0) == use_noise
    assert (p['jpeg_quality'] > 0) == use_jpeg
    if use_noise and not use_jpeg:  # Gaussian noise of the drawn level (within sampling error)
        assert (out['lq'] - clean).std().item() == pytest.approx(p['noise_sigma'], rel=0.3)
    assert ((out['lq'] * 255).round() == out['lq'] * 255).all()  # always 8-bit levels


def test_poisson_noise_switch():
    gt, depth = _gt_depth(2)
    deg = D.SVDegradation({'scale': 4, 'kernel_size': 7, 'use_jpeg': False, 'noise_range': [0, 0],
                           'poisson_prob': 1.0})
    out = deg(gt, depth, np.random.default_rng(0))
    assert out['params']['poisson_scale'] > 0
    clean = D.quantize(D.sv_blur_downsample(gt[None], out['kernel'][None], 4)[0])
    assert not torch.equal(out['lq'], clean)


def test_jpeg_quality_must_be_int():
    img = torch.rand(3, 16, 16)
    assert D.jpeg_compress(img, 50).shape == (3, 16, 16)
    assert D.jpeg_compress(img, np.int64(50)).shape == (3, 16, 16)
    with pytest.raises(TypeError, match='int'):
        D.jpeg_compress(img, 50.0)
    lo, hi = D.jpeg_compress(img, 10), D.jpeg_compress(img, 95)
    assert (lo - img).abs().mean() > (hi - img).abs().mean()


def test_kernel_modes_and_bad_options():
    gt, depth = _gt_depth(3)
    for mode in D.KERNEL_MODES:
        out = D.SVDegradation({'scale': 4, 'kernel_size': 7, 'kernel_mode': mode})(gt, depth, np.random.default_rng(1))
        assert out['kernel'].shape == (49, 8, 8)
        assert set(out['params']) == {'focus', 'rho', 'theta', 'sigma_mean', 'noise_sigma', 'gray_noise',
                                      'poisson_scale', 'jpeg_quality'}  # same keys in every mode: collatable
    inv = D.SVDegradation({'scale': 4, 'kernel_size': 7, 'kernel_mode': 'invariant'})(gt, depth,
                                                                                 np.random.default_rng(1))
    assert torch.allclose(inv['kernel'], inv['kernel'][:, :1, :1].expand_as(inv['kernel']))
    fixed = D.SVDegradation({'scale': 4, 'kernel_size': 7, 'focus_plane': 0.25})
    assert all(fixed(gt, depth, np.random.default_rng(s))['params']['focus'] == 0.25 for s in range(3))
    assert D.SVDegradation({'scale': 4, 'kernel_size': 7})(gt, depth, np.random.default_rng(1))['params']['focus'] \
        != 0.25
    for key, value in [('kernel_size', 8), ('kernel_mode', 'spiral'), ('jpeg_range', [30, 120]),
                       ('sigma_range', [3, 1]), ('rho_min', 0), ('focus_plane', 2)]:
        with pytest.raises(OptionError, match=key):
            D.SVDegradation({'scale': 4, key: value})
    assert K.default_sigma_range(4) == (0.6, 5.0)
