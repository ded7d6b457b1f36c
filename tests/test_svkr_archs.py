"""MAConv, DABlock, DKENet, NBSR and SVKR (Algorithm 1) on tiny shapes, CPU."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import ssr_arch  # noqa: F401  (registers the archs)
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from ssr_arch.dkenet_arch import DKENet
from ssr_arch.maconv_arch import DABlock, MAConv, split_sizes
from ssr_arch.nbsr_arch import NBSR
from ssr_arch.svkr_arch import SVKR
from ssr_data.kernels import KernelPCA, random_kernels

K = 7  # small kernels keep the tests fast; the code paths are the same as k = 21
TINY_KE = {'type': 'DKENet', 'kernel_size': K, 'num_feat': [8, 12], 'num_depth_feat': [4, 6], 'reduction': 2}
TINY_SR = {'type': 'NBSR', 'kernel_size': K, 'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4, 'num_cond': 8,
           'pca_dim': 4}


class _TestDepth(nn.Module):
    """A small real depth network for the loop tests: a fixed random conv + sigmoid, min-max normalised
    per image like the estimators of docs/interfaces.md §4, and sensitive to the image content."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 5, 1, 2)
        self.calls = []

    def forward(self, img):
        self.calls.append(tuple(img.shape[-2:]))
        d = torch.sigmoid(self.conv(img) * 4)
        lo = d.amin(dim=(1, 2, 3), keepdim=True)
        hi = d.amax(dim=(1, 2, 3), keepdim=True)
        return (d - lo) / (hi - lo).clamp_min(1e-6)


if '_TestDepth' not in ARCH_REGISTRY:
    ARCH_REGISTRY.register(_TestDepth)


def test_split_sizes_cover_all_channels():
    for channels in range(2, 12):
        for parts in range(2, channels + 1):
            sizes = split_sizes(channels, parts)
            assert sum(sizes) == channels and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize('c_in,c_out,split', [(5, 7, 2), (8, 3, 3), (6, 6, 2), (9, 4, 4)])
def test_maconv_in_out_channels(c_in, c_out, split):
    conv = MAConv(c_in, c_out, split=split)
    x = torch.rand(2, c_in, 9, 7, requires_grad=True)
    y = conv(x)
    assert y.shape == (2, c_out, 9, 7)
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def test_maconv_groups_modulate_each_other():
    torch.manual_seed(0)
    conv = MAConv(4, 4, split=2, kernel_size=1)
    x = torch.rand(1, 4, 5, 5)
    x2 = x.clone()
    x2[:, 2:] += 1.0  # change only the second group
    y, y2 = conv(x), conv(x2)
    # the first group's output changes too: it is modulated by the second group
    assert not torch.allclose(y[:, :2], y2[:, :2])


def test_maconv_rejects_bad_split():
    with pytest.raises(ValueError, match='split'):
        MAConv(3, 8, split=4)
    with pytest.raises(ValueError, match='split'):
        MAConv(8, 8, split=1)


def test_dablock_depends_on_depth_features():
    torch.manual_seed(0)
    block = DABlock(8, 4)
    x = torch.rand(1, 8, 6, 6)
    d1, d2 = torch.rand(1, 4, 6, 6), torch.rand(1, 4, 6, 6)
    y1, y2 = block(x, d1), block(x, d2)
    assert y1.shape == x.shape
    assert (y1 - y2).abs().max() > 1e-4
    with pytest.raises(ValueError, match='depth'):
        block(x)
    plain = DABlock(8, 0)  # no depth: no SFT, depth ignored
    assert torch.equal(plain(x, d1), plain(x, d2))


@pytest.mark.parametrize('scale,h,w', [(2, 7, 9), (3, 8, 5), (4, 11, 13), (4, 1, 3)])
def test_dkenet_shapes_and_softmax(scale, h, w):
    torch.manual_seed(0)
    net = DKENet(kernel_size=K, scale=scale, num_feat=[8, 12], num_depth_feat=[4, 6], reduction=2)
    lr, depth = torch.rand(2, 3, h, w), torch.rand(2, 1, h, w)
    kmap = net(lr, depth)
    assert kmap.shape == (2, K * K, h, w)
    assert (kmap >= 0).all()
    torch.testing.assert_close(kmap.sum(1), torch.ones(2, h, w), rtol=0, atol=1e-5)
    up = net(lr, depth, upscale=True)
    assert up.shape == (2, K * K, scale * h, scale * w)
    torch.testing.assert_close(up[..., ::scale, ::scale], kmap)
    # an HR-size depth map is resized to the LR size
    assert net(lr, torch.rand(2, 1, scale * h, scale * w)).shape == kmap.shape


def test_dkenet_default_is_paper_setting_and_depth_matters():
    net = build_network({'type': 'DKENet'})
    assert net.kernel_size == 21 and net.scale == 4 and net.use_depth
    torch.manual_seed(0)
    net = DKENet(**{k: v for k, v in TINY_KE.items() if k != 'type'})
    lr = torch.rand(1, 3, 8, 8)
    assert (net(lr, torch.zeros(1, 1, 8, 8)) - net(lr, torch.rand(1, 1, 8, 8))).abs().max() > 1e-6
    with pytest.raises(ValueError, match='depth'):
        net(lr)
    blind = DKENet(kernel_size=K, num_feat=[8, 12], use_depth=False, reduction=2)
    assert not any('depth' in name for name, _ in blind.named_parameters())
    assert torch.equal(blind(lr, None), blind(lr, torch.rand(1, 1, 8, 8)))


def _perturbed_context(net, seed=0):
    """Give the zero-initialised fuse layer of the context path random weights (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.context.fuse.weight.copy_(torch.randn(net.context.fuse.weight.shape, generator=g) * 0.5)
    return net


def test_dkenet_global_context_off_by_default_and_starts_as_identity():
    plain = DKENet(**{k: v for k, v in TINY_KE.items() if k != 'type'})
    assert plain.context is None and not any('context' in n for n, _ in plain.named_parameters())
    torch.manual_seed(0)
    ctx = DKENet(global_context=True, **{k: v for k, v in TINY_KE.items() if k != 'type'})
    missing, unexpected = ctx.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(n.startswith('context.') for n in missing)
    lr, depth = torch.rand(2, 3, 10, 12), torch.rand(2, 1, 10, 12)
    # the fuse layer starts at zero: the paper's network, whatever the context path computes
    torch.testing.assert_close(ctx(lr, depth), plain(lr, depth))
    assert build_network({'type': 'DKENet'}).context is None


@pytest.mark.parametrize('use_depth', [True, False])
def test_dkenet_global_context_sees_beyond_the_receptive_field(use_depth):
    torch.manual_seed(0)
    kw = {k: v for k, v in TINY_KE.items() if k != 'type'}
    lr = torch.rand(1, 3, 40, 40)
    depth = torch.linspace(0, 1, 40).view(1, 1, 40, 1).expand(1, 1, 40, 40).contiguous()
    lr2 = lr.clone()
    lr2[..., 30:, 30:] = torch.rand(1, 3, 10, 10)  # far (> 23 px) from pixel (2, 2)
    for context, changes in ((False, False), (True, True)):
        net = DKENet(use_depth=use_depth, global_context=context, **kw)
        if context:
            _perturbed_context(net)
        k1, k2 = net(lr, depth if use_depth else None), net(lr2, depth if use_depth else None)
        assert ((k1[..., 2, 2] - k2[..., 2, 2]).abs().max() > 1e-7) == changes


def test_dkenet_gaussian_head_gives_normalised_gaussian_kernels_any_ground_truth_can_be_fitted():
    from ssr_arch.dkenet_arch import GaussianKernelHead
    from ssr_utils.kernel_metrics import calculate_kernel_psnr
    kw = {k: v for k, v in TINY_KE.items() if k != 'type'}
    net = build_network(dict(TINY_KE, kernel_head='gaussian', global_context=True))
    assert net.kernel_head == 'gaussian' and not hasattr(net, 'conv_last')
    kernel = net(torch.rand(2, 3, 9, 11), torch.rand(2, 1, 9, 11))
    assert kernel.shape == (2, K * K, 9, 11) and kernel.dtype == torch.float32
    torch.testing.assert_close(kernel.sum(1), torch.ones(2, 9, 11))
    # a Gaussian's taps: symmetric about the centre (k(u, v) = k(-u, -v)), peak at the centre
    grid = kernel.reshape(2, K, K, 9, 11)
    torch.testing.assert_close(grid, grid.flip(1, 2))
    assert (grid.flatten(1, 2).argmax(1) == (K * K) // 2).all()
    # the three numbers per pixel reach the degradation's anisotropic kernels (rotated, jittered)
    target = torch.as_tensor(random_kernels(16, kernel_size=21, seed=5)).float().view(16, 441, 1, 1)
    head = GaussianKernelHead(3, 21)
    head.conv = nn.Identity()
    raw = torch.zeros(16, 3, 1, 1, requires_grad=True)
    opt = torch.optim.Adam([raw], lr=0.05)
    for _ in range(300):
        loss = (head(raw) - target).abs().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    def as_map(kernels):  # 16 kernels -> one 4 x 4 kernel map
        return kernels.reshape(16, 441).t().reshape(1, 441, 4, 4)

    fitted = calculate_kernel_psnr(as_map(head(raw).detach()), as_map(target))
    mean = calculate_kernel_psnr(as_map(target.mean(0, keepdim=True).expand_as(target)), as_map(target))
    assert fitted > mean + 15, (fitted, mean)
    with pytest.raises(ValueError, match='kernel_head'):
        DKENet(kernel_head='logits', **kw)
    with pytest.raises(ValueError, match='sigma_range'):
        DKENet(kernel_head='gaussian', sigma_range=(2.0, 1.0), **kw)


def test_depth_bin_context_reads_back_by_depth():
    from ssr_arch.dkenet_arch import DepthBinContext
    torch.manual_seed(0)
    ctx = DepthBinContext(6, num_bins=5)
    depth = torch.rand(2, 1, 7, 9)
    w = ctx.bin_weights(depth)
    assert w.shape == (2, 5, 7, 9) and (w >= 0).all() and ((w > 0).sum(1) <= 2).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, 7, 9))
    with torch.no_grad():
        ctx.fuse.weight.normal_()
    feat = torch.rand(2, 6, 7, 9)
    # the context a pixel reads back depends on its depth only, not on its own features
    depth[0, 0, 1, 1] = depth[0, 0, 5, 7] = 0.3
    out = ctx(feat, depth) - feat
    torch.testing.assert_close(out[0, :, 1, 1], out[0, :, 5, 7])
    assert (out[0, :, 1, 1] - out[0, :, 2, 2]).abs().max() > 1e-6 or depth[0, 0, 2, 2] == 0.3
    # without depth: one global average, the same for every pixel
    flat = ctx(feat) - feat
    torch.testing.assert_close(flat, flat[..., :1, :1].expand_as(flat))
    with pytest.raises(ValueError, match='num_bins'):
        DepthBinContext(6, num_bins=1)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_nbsr_scales_and_kernel_conditioning(scale, tmp_path):
    torch.manual_seed(0)
    pca = KernelPCA.fit(random_kernels(300, K, seed=1), 4)
    pca_path = str(tmp_path / 'pca.pth')
    pca.save(pca_path)
    net = build_network(dict(TINY_SR, scale=scale, pca_path=pca_path))
    torch.testing.assert_close(net.pca.components, pca.components)
    lr = torch.rand(1, 3, 6, 7)
    k1 = random_kernels(42, K, seed=2).reshape(1, 6, 7, K * K).permute(0, 3, 1, 2)
    k2 = random_kernels(42, K, seed=3).reshape(1, 6, 7, K * K).permute(0, 3, 1, 2)
    sr1 = net(lr, k1)
    assert sr1.shape == (1, 3, 6 * scale, 7 * scale)
    assert (sr1 - net(lr, k2)).abs().max() > 1e-6
    with pytest.raises(ValueError, match='kernel map size'):
        net(lr, k1[..., :5, :])


def test_nbsr_pca_is_part_of_the_state_dict(tmp_path):
    net = NBSR(**{k: v for k, v in TINY_SR.items() if k != 'type'})  # PCA fit on the default distribution
    assert net.pca.dim == 4 and torch.isfinite(net.pca.components).all()
    other = NBSR(**{k: v for k, v in TINY_SR.items() if k != 'type'})
    other.pca.components.zero_()
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other.pca.components, net.pca.components)


def _svkr(num_iter=3, gamma=0.9, use_depth=True, **kwargs):
    torch.manual_seed(0)
    return SVKR(num_iter=num_iter, gamma=gamma, use_depth=use_depth, depth_opt={'type': '_TestDepth'},
                kernel_opt=TINY_KE, sr_opt=TINY_SR, scale=2, **kwargs)


def test_svkr_follows_algorithm_1():
    net = _svkr(num_iter=3, gamma=0.7).eval()
    lr = torch.rand(1, 3, 8, 10)
    with torch.no_grad():
        net.depth_net.calls.clear()
        out = net(lr, return_all=True)
        de, ke, sr_net = net.depth_net, net.kernel_net, net.sr_net
        # D⁰ from the LR image, D² and D³ from the HR-size SR images (D¹ = D⁰ is not recomputed)
        assert de.calls == [(8, 10), (16, 20), (16, 20)]

        def depth_of(img):
            d = de(img)
            if d.shape[-2:] != lr.shape[-2:]:
                d = F.interpolate(d, size=lr.shape[-2:], mode='bilinear', align_corners=False, antialias=True)
            return d.clamp(0, 1)

        image = lr  # I⁰ = LR
        depth = depth_of(image)
        kernel = ke(lr, depth)
        ref_k, ref_d, ref_i = [kernel], [depth], [sr_net(lr, kernel)]
        for _ in range(3):
            depth = depth_of(image)
            kernel = 0.7 * ke(lr, depth) + 0.3 * kernel
            image = sr_net(lr, kernel)
            ref_k.append(kernel)
            ref_d.append(depth)
            ref_i.append(image)
    assert len(out['kernels']) == len(out['depths']) == len(out['srs']) == 4
    for t in range(4):
        torch.testing.assert_close(out['kernels'][t], ref_k[t], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out['depths'][t], ref_d[t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out['srs'][t], ref_i[t], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out['kernel'], ref_k[-1])
    torch.testing.assert_close(out['sr'], ref_i[-1])
    torch.testing.assert_close(out['depth'], ref_d[-1])
    assert out['sr'].shape == (1, 3, 16, 20) and out['depth'].shape == (1, 1, 8, 10)
    # kernels stay normalised under the γ mixing
    torch.testing.assert_close(out['kernel'].sum(1), torch.ones(1, 8, 10), rtol=0, atol=1e-5)


def test_svkr_gamma_mixing_numerically():
    net = _svkr(num_iter=2, gamma=0.9).eval()
    lr = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        out = net(lr, return_all=True)
        k1, k2 = out['kernels'][1], out['kernels'][2]
        fresh = net.kernel_net(lr, out['depths'][2])
    # K² = γ·KE(LR, D²) + (1 − γ)·K¹, and K² differs from both terms alone
    torch.testing.assert_close(k2, 0.9 * fresh + 0.1 * k1, rtol=1e-6, atol=1e-8)
    assert (k2 - fresh).abs().max() > 0 and (k2 - k1).abs().max() > 0
    # the first iteration re-estimates from DE(LR) = D⁰, so K¹ = K⁰ (Algorithm 1 with I⁰ = LR)
    torch.testing.assert_close(out['kernels'][1], out['kernels'][0])


def test_svkr_inference_keeps_one_kernel_map_alive():
    """Without ``return_all`` the loop holds only the current kernel map while NBSR runs (the k²-channel
    maps dominate a window's memory in tiled inference): every earlier estimate and mixture is freed,
    and the result is the one ``return_all`` gives."""
    import weakref
    net = _svkr(num_iter=3, gamma=0.9).eval()
    lr = torch.rand(1, 3, 8, 10)
    made, alive_at_sr = [], []
    net.kernel_net.register_forward_hook(lambda m, i, o: made.append(weakref.ref(o)))

    def before_sr(module, inputs):
        current = inputs[1]
        alive_at_sr.append(sum(1 for r in made if r() is not None and r() is not current))
        made.append(weakref.ref(current))

    net.sr_net.register_forward_pre_hook(before_sr)
    with torch.no_grad():
        out = net(lr)
        assert alive_at_sr == [0, 0, 0]  # one NBSR pass per iteration, nothing else alive each time
        ref = net(lr, return_all=True)
    assert len(made) > 3 and alive_at_sr[3:] != [0] * len(alive_at_sr[3:])  # return_all keeps them: can fail
    for key in ('sr', 'kernel', 'depth'):
        assert torch.equal(out[key], ref[key])


@pytest.mark.parametrize('num_iter', [0, 1, 3])
def test_svkr_maps_only_skips_the_last_nbsr_pass(num_iter):
    """``need_sr=False`` (SSR's conditions): the same depth and kernel maps to the bit, one NBSR pass fewer."""
    net = _svkr(num_iter=num_iter, gamma=0.9).eval()
    lr = torch.rand(1, 3, 8, 10)
    calls = []
    net.sr_net.register_forward_pre_hook(lambda m, i: calls.append(1))
    with torch.no_grad():
        full = net(lr)
        n_full = len(calls)
        maps = net(lr, need_sr=False)
    assert n_full == max(num_iter, 1) and len(calls) - n_full == n_full - 1
    assert maps['sr'] is None
    for key in ('kernel', 'depth'):
        assert torch.equal(maps[key], full[key])


def test_svkr_t0_and_no_depth():
    net = _svkr(num_iter=0).eval()
    lr = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        out = net(lr)
        assert out['sr'].shape == (1, 3, 12, 12)
        torch.testing.assert_close(out['sr'], net.sr_net(lr, out['kernel']))
    blind = _svkr(num_iter=1, use_depth=False).eval()
    assert blind.depth_net is None and not blind.kernel_net.use_depth
    with torch.no_grad():
        out = blind(lr, return_all=True)
    assert out['depth'] is None and out['sr'].shape == (1, 3, 12, 12)


def test_svkr_loads_stage_checkpoints(tmp_path):
    torch.manual_seed(1)
    ke = build_network(dict(TINY_KE, scale=2))
    sr = build_network(dict(TINY_SR, scale=2))
    torch.save({'params': ke.state_dict()}, tmp_path / 'ke.pth')
    torch.save({'params': sr.state_dict(), 'params_ema': sr.state_dict()}, tmp_path / 'sr.pth')
    net = _svkr(pretrain_network_kernel=str(tmp_path / 'ke.pth'), pretrain_network_sr=str(tmp_path / 'sr.pth'),
                freeze_sr=True)
    for a, b in zip(net.kernel_net.state_dict().values(), ke.state_dict().values()):
        torch.testing.assert_close(a, b)
    for a, b in zip(net.sr_net.state_dict().values(), sr.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert not any(p.requires_grad for p in net.sr_net.parameters())
    assert not any(p.requires_grad for p in net.depth_net.parameters())
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        _svkr(pretrain_network_kernel=str(tmp_path / 'missing.pth'))


def test_svkr_gradients_reach_kernel_and_sr_nets():
    net = _svkr(num_iter=2).train()
    out = net(torch.rand(2, 3, 8, 8))
    (out['sr'].mean() + out['kernel'].square().mean()).backward()
    assert net.kernel_net.conv_last.weight.grad.abs().sum() > 0
    assert net.sr_net.conv_last.weight.grad.abs().sum() > 0
    assert not net.depth_net.training


def test_nbsr_scales_its_kernel_codes_and_loads_checkpoints_saved_before():
    torch.manual_seed(0)
    net = build_network(dict(TINY_SR))
    reference = torch.as_tensor(random_kernels(500, K, seed=9)).float().t().reshape(1, K * K, 20, 25)
    scaled = net.kernel_code(reference) / net.code_scale.view(1, -1, 1, 1)
    spread = scaled.std(dim=(0, 2, 3))
    assert ((spread > 0.5) & (spread < 2)).all(), spread  # about unit spread per component, not 0.01-0.2
    # a state dict from before code_scale: the codes it was trained on (scale one), strict loading works
    old = {k: v for k, v in net.state_dict().items() if k != 'code_scale'}
    fresh = build_network(dict(TINY_SR))
    fresh.load_state_dict(old, strict=True)
    assert torch.equal(fresh.code_scale, torch.ones(net.pca.dim))
    # a new state dict carries its scale
    fresh.load_state_dict(net.state_dict(), strict=True)
    assert torch.equal(fresh.code_scale, net.code_scale)


def test_nbsr_pca_and_code_scale_come_from_the_configured_kernel_distribution(tmp_path):
    """Narrower kernels (sigma 0.2-1.5 instead of the default 0.6-5.0 at x4) have other principal components and
    other code spreads: the fallback PCA is fit on the configured distribution, and its codes have unit spread
    with the configured network's code_scale, not with the default network's."""
    from ssr_data.degradations import distribution_kernels
    from ssr_utils.errors import OptionError
    narrow = {'sigma_range': [0.2, 1.5], 'rho_min': 0.5}
    default = build_network(dict(TINY_SR))
    configured = build_network(dict(TINY_SR, kernel_distribution=narrow))
    # the basis is the PCA of that distribution's kernels (4000, seed 0), not the default one's
    fitted = KernelPCA.fit(distribution_kernels(4000, K, 4, narrow), TINY_SR['pca_dim'])
    assert torch.allclose(configured.pca.components, fitted.components, atol=1e-6)
    assert not torch.allclose(configured.pca.components, default.pca.components, atol=1e-2)
    # held-out kernels of the configured distribution: unit code spread with the configured scale only
    held_out = torch.as_tensor(distribution_kernels(1000, K, 4, narrow, seed=5)).float().t().reshape(1, K * K, 25, 40)
    spread = (configured.kernel_code(held_out) / configured.code_scale.view(1, -1, 1, 1)).std(dim=(0, 2, 3))
    assert ((spread > 0.8) & (spread < 1.25)).all(), spread
    # with a PCA file, code_scale is still the spread of the configured kernels' codes (in that basis)
    default.pca.save(str(tmp_path / 'pca.pth'))
    with_file = build_network(dict(TINY_SR, kernel_distribution=narrow, pca_path=str(tmp_path / 'pca.pth')))
    reference = torch.as_tensor(distribution_kernels(2000, K, 4, narrow)).float().t().reshape(1, K * K, 40, 50)
    assert torch.equal(with_file.pca.components, default.pca.components)
    assert torch.allclose(with_file.code_scale, default.kernel_code(reference).std(dim=(0, 2, 3)))
    assert not torch.allclose(with_file.code_scale, default.code_scale, rtol=0.05)
    mismatched = (default.kernel_code(held_out) / default.code_scale.view(1, -1, 1, 1)).std(dim=(0, 2, 3))
    assert not ((mismatched > 0.8) & (mismatched < 1.25)).all(), mismatched
    # the default (None or {}) is the distribution NBSR always used: the depth-driven one at the scale's range
    assert torch.equal(build_network(dict(TINY_SR, kernel_distribution={})).code_scale, default.code_scale)
    reference = torch.as_tensor(random_kernels(2000, K, (0.6, 5.0), seed=0)).float().t().reshape(1, K * K, 40, 50)
    assert torch.allclose(default.code_scale, default.kernel_code(reference).std(dim=(0, 2, 3)))
    with pytest.raises(OptionError, match='kernel_distribution:sigma'):
        build_network(dict(TINY_SR, kernel_distribution={'sigma': [0.2, 1.5]}))


def test_dkenet_depth_zero_init_starts_independent_of_depth_and_learns_to_use_it():
    kw = {k: v for k, v in TINY_KE.items() if k != 'type'}
    torch.manual_seed(0)
    net = DKENet(depth_zero_init=True, **kw)
    lr, depth = torch.rand(2, 3, 10, 12), torch.rand(2, 1, 10, 12)
    torch.testing.assert_close(net(lr, depth), net(lr, torch.full_like(depth, 0.5)))
    assert not torch.equal(DKENet(**kw)(lr, depth), DKENet(**kw)(lr, torch.full_like(depth, 0.5)))
    # one step: the SFT output layers get gradients, and depth moves the kernels from then on
    net(lr, depth).square().sum().backward()
    assert all(b.sft.scale[-1].weight.grad.abs().sum() > 0 for b in (net.block0, net.block1, net.block2))
    with torch.no_grad():
        for b in (net.block0, net.block1, net.block2):
            b.sft.scale[-1].weight.sub_(b.sft.scale[-1].weight.grad * 10)
    assert not torch.allclose(net(lr, depth), net(lr, torch.full_like(depth, 0.5)))


def test_focus_plane_estimator_finds_the_focus_plane_of_the_depth_driven_blur():
    from ssr_arch.dkenet_arch import FocusPlaneEstimator
    from ssr_data.degradations import SVDegradation
    from ssr_data.scenes import SceneGenerator, default_texture_photos
    gen = SceneGenerator(default_texture_photos('test'), size=192)
    deg = SVDegradation({'scale': 4, 'kernel_size': 21, 'kernel_mode': 'depth', 'use_noise': False, 'use_jpeg': False})
    est = FocusPlaneEstimator()
    errors = []
    for j in range(6):
        rgb, depth, _ = gen.generate((5, j))
        gt = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float() / 255
        out = deg(gt, torch.from_numpy(depth)[None], np.random.default_rng([5, j]))
        focus, defocus = est(out['lq'][None], out['depth_lq'][None])
        assert focus.shape == (1, ) and defocus.shape == (1, 1) + out['lq'].shape[-2:]
        assert 0 <= float(defocus.min()) and float(defocus.max()) <= 1
        errors.append(abs(float(focus) - out['params']['focus']))
    # a constant guess (0.5) is off by 0.25 on average for d_f ~ U(0, 1)
    assert np.mean(errors) < 0.1, errors


def test_focus_plane_estimator_defocus_map_and_skipped_bins():
    from ssr_arch.dkenet_arch import FocusPlaneEstimator
    torch.manual_seed(0)
    est = FocusPlaneEstimator(num_bins=5)
    texture = torch.rand(1, 3, 40, 60)
    blurred = F.avg_pool2d(F.pad(texture, (2, 2, 2, 2), mode='replicate'), 5, 1)
    lr = blurred.clone()
    lr[..., :, 20:40] = texture[..., :, 20:40]  # the middle third is sharp
    depth = torch.full((1, 1, 40, 60), 0.25)
    depth[..., 20:40] = 0.75
    depth[..., 40:] = 1.0
    focus, defocus = est(lr, depth)
    assert abs(float(focus) - 0.75) < 1e-6
    torch.testing.assert_close(defocus[..., 20:40], torch.zeros(1, 1, 40, 20))
    torch.testing.assert_close(defocus[..., :20], torch.ones(1, 1, 40, 20) * (0.5 / 0.75))
    # a depth map at another size is resized to the image's
    torch.testing.assert_close(est(lr, F.interpolate(depth, scale_factor=2, mode='nearest'))[0], focus)
    # under autocast (AMP training) it computes in float32 and returns the same
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp_focus, amp_defocus = est(lr.bfloat16(), depth)
    assert amp_defocus.dtype == torch.float32
    torch.testing.assert_close(amp_focus, focus)
    # one sharp pixel alone at its own depth is not enough to be the focus plane
    lr2, depth2 = blurred.clone(), depth.clone()
    depth2[..., 5, 5] = 0.0
    lr2[..., 5, 5] = 1 - lr2[..., 5, 5]
    lr2[..., :, 20:40] = texture[..., :, 20:40]
    assert abs(float(est(lr2, depth2)[0]) - 0.75) < 1e-6
    with pytest.raises(ValueError, match='num_bins'):
        FocusPlaneEstimator(num_bins=2)
    with pytest.raises(ValueError, match='window'):
        FocusPlaneEstimator(window=4)


def test_dkenet_defocus_input_feeds_the_depth_branch_the_defocus_map():
    kw = {k: v for k, v in TINY_KE.items() if k != 'type'}
    torch.manual_seed(0)
    net = build_network(dict(TINY_KE, defocus_input=True))
    assert net.depth_branch.head[0].in_channels == 2
    lr, depth = torch.rand(2, 3, 11, 13), torch.rand(2, 1, 22, 26)
    kernel = net(lr, depth)
    assert kernel.shape == (2, K * K, 11, 13)
    torch.testing.assert_close(kernel.sum(1), torch.ones(2, 11, 13))
    kernel.square().sum().backward()
    assert net.depth_branch.head[0].weight.grad[:, 1].abs().sum() > 0  # the defocus channel is read
    # the estimator holds no weights: the state dict is the paper's plus one input channel
    assert not any(k.startswith('focus_estimator') for k in net.state_dict())
    for bad in (dict(use_depth=False), dict(depth_nc=2)):
        with pytest.raises(ValueError, match='defocus_input'):
            DKENet(defocus_input=True, **dict(kw, **bad))
