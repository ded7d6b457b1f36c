"""SSRUNet: AMF at every level, init behaviour, modalities, encoders, configs, local-directory loading."""
import copy
import json
import logging
import os

import pytest
import torch
from torch import nn

from ssr_arch.ssr_unet_arch import FOLDED, SSRUNet, tiny_config
from ssr_utils.errors import OptionError


def _inputs(batch=2, size=(8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return dict(
        sample=torch.randn(batch, 4, h, w, generator=g),
        timestep=torch.tensor([3, 700][:batch]),
        lr_latent=torch.randn(batch, 4, h, w, generator=g),
        depth=torch.rand(batch, 1, 2 * h, 2 * w, generator=g),
        kernel_code=torch.randn(batch, 10, 2 * h, 2 * w, generator=g))


def _randomise_amf(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for amf in net.amf.values():
            for mlp in (amf.mlp_alpha, amf.mlp_beta):
                mlp[-1].weight.copy_(torch.randn(mlp[-1].weight.shape, generator=g) * 0.2)


@pytest.fixture(scope='module')
def net():
    torch.manual_seed(0)
    return SSRUNet(**tiny_config()).eval()


def test_amf_at_every_down_mid_up_level_for_each_modality(net):
    n_down, n_up = len(net.unet.down_blocks), len(net.unet.up_blocks)
    points = [f'down{i}' for i in range(n_down)] + ['mid'] + [f'up{j}' for j in range(n_up)]
    assert sorted(net.amf.keys()) == sorted(f'{p}_{m}' for p in points for m in ('kernel', 'depth', 'lr'))
    assert net.modalities == ['kernel', 'depth', 'lr']  # paper order f1, f2, f3


def test_encoder_levels_match_the_unet_resolutions(net):
    # record the resolution the UNet has at each injection point, odd latent size included
    x = _inputs(1, (6, 10))
    seen = {}
    hooks = [
        m.register_forward_hook(lambda mod, a, out, name=name: seen.__setitem__(name, (out[0] if isinstance(
            out, tuple) else out).shape[-2:])) for name, m, _, _ in net.injection_points()
    ]
    feats = net.encode_features(x['lr_latent'], x['depth'], x['kernel_code'])
    net(**x)
    for h in hooks:
        h.remove()
    for name, level in net.point_levels.items():
        for m in net.modalities:
            assert feats[m][level].shape[-2:] == seen[name], (name, m)


def test_zero_init_leaves_the_unet_prediction_unchanged(net):
    x = _inputs()
    bare = copy.deepcopy(net.unet)  # a hook-free copy of the same weights
    for module in bare.modules():
        module._forward_hooks.clear()
    emb = net.null_embedding(2)
    with torch.no_grad():
        ref = bare(x['sample'], x['timestep'], encoder_hidden_states=emb).sample
        out = net(**x)
        out_bare_call = net(x['sample'], x['timestep'], conditions={})
    assert torch.equal(out, ref)
    assert torch.equal(out_bare_call, ref)


def test_each_modality_changes_the_output():
    torch.manual_seed(1)
    net = SSRUNet(**tiny_config()).eval()
    _randomise_amf(net)
    x = _inputs()
    with torch.no_grad():
        ref = net(**x)
        for key in ('lr_latent', 'depth', 'kernel_code'):
            y = dict(x)
            y[key] = x[key] + torch.randn_like(x[key])
            diff = (net(**y) - ref).abs().max()
            assert diff > 1e-3, key


def test_cached_conditions_equal_the_direct_call():
    torch.manual_seed(2)
    net = SSRUNet(**tiny_config()).eval()
    _randomise_amf(net, 1)
    x = _inputs()
    with torch.no_grad():
        conds = net.encode_conditions(x['lr_latent'], x['depth'], x['kernel_code'])
        torch.testing.assert_close(net(x['sample'], x['timestep'], conditions=conds), net(**x))


def _randomise_norms(net, seed=0):
    """Running statistics and affine parameters of a trained network, not BatchNorm's identity init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for amf in net.amf.values():
            bn = amf.norm
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bn.weight.copy_(1 + torch.randn(n, generator=g) * 0.3)
            bn.bias.copy_(torch.randn(n, generator=g) * 0.3)


def _folded_net(residual=True, seed=3, **amf):
    torch.manual_seed(seed)
    cfg = tiny_config()
    cfg['amf'] = dict(cfg['amf'], residual=residual, **amf)
    net = SSRUNet(**cfg).eval()
    _randomise_amf(net, seed)
    _randomise_norms(net, seed)
    return net


@pytest.mark.parametrize('residual', [True, False])
def test_folded_amf_points_give_the_prediction_of_the_amf_layers_one_by_one(residual):
    net = _folded_net(residual)
    x = _inputs(size=(6, 10))  # odd level sizes included
    with torch.no_grad():
        apart = net.encode_conditions(x['lr_latent'], x['depth'], x['kernel_code'], fold=False)
        folded = net.encode_conditions(x['lr_latent'], x['depth'], x['kernel_code'])  # eval: folded
        assert set(folded) == set(apart) == {name for name, _, _, _ in net.injection_points()}
        assert all([m for m, _, _ in v] == net.modalities for v in apart.values())
        assert all(len(v) == 1 and v[0][0] == FOLDED for v in folded.values())
        ref = net(x['sample'], x['timestep'], conditions=apart)
        out = net(x['sample'], x['timestep'], conditions=folded)
        bare = net(x['sample'], x['timestep'], conditions={})
    assert (ref - bare).abs().max() > 1e-2  # the modulations matter here
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_amf_layers_that_depend_on_the_feature_are_not_folded():
    net = _folded_net()
    x = _inputs()
    with torch.no_grad():
        net.train()  # BatchNorm uses the batch's statistics
        trained = net.encode_conditions(x['lr_latent'], x['depth'], x['kernel_code'])
        assert all([m for m, _, _ in v] == net.modalities for v in trained.values())
    grouped = _folded_net(norm='group', num_groups=4)
    with torch.no_grad():
        conds = grouped.encode_conditions(x['lr_latent'], x['depth'], x['kernel_code'])
    assert all([m for m, _, _ in v] == grouped.modalities for v in conds.values())


def test_folded_points_in_bfloat16_stay_as_close_to_float32_as_the_layers_one_by_one():
    net = _folded_net()
    x = _inputs()
    with torch.no_grad():
        ref = net(x['sample'], x['timestep'], conditions=net.encode_conditions(
            x['lr_latent'], x['depth'], x['kernel_code'], fold=False))
        half = copy.deepcopy(net).to(torch.bfloat16)
        xh = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in x.items()}
        errors = {}
        for fold in (False, True):
            conds = half.encode_conditions(xh['lr_latent'], xh['depth'], xh['kernel_code'], fold=fold)
            errors[fold] = (half(xh['sample'], xh['timestep'], conditions=conds).float() - ref).abs().mean().item()
    assert errors[True] <= 1.5 * errors[False], errors


def test_a_deep_copy_keeps_its_conditioning():
    # the AMF hooks must act on the copy's own conditions (an EMA or half-precision copy is a deep copy)
    net = _folded_net()
    x = _inputs()
    twin = copy.deepcopy(net)
    with torch.no_grad():
        ref = net(**x)
        torch.testing.assert_close(twin(**x), ref, rtol=0, atol=0)
        bare = net(x['sample'], x['timestep'], conditions={})
        twin.amf['mid_lr'].mlp_beta[-1].bias.add_(1.0)  # the copy's own AMF weights act, not the original's
        assert (twin(**x) - ref).abs().max() > 1e-2
        assert torch.equal(net(**x), ref)
    assert (ref - bare).abs().max() > 1e-2


def test_modality_subset_and_order_option():
    net = SSRUNet(**tiny_config(), modalities=['depth', 'lr'])
    assert sorted({k.split('_')[1] for k in net.amf.keys()}) == ['depth', 'lr']
    x = _inputs()
    x.pop('kernel_code')
    assert net(**x).shape == x['sample'].shape
    with pytest.raises(ValueError, match='depth'):
        net(x['sample'], x['timestep'], lr_latent=x['lr_latent'])
    with pytest.raises(OptionError, match='modalities'):
        SSRUNet(**tiny_config(), modalities=['lr', 'text'])


def _public(config):
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith('_')}, sort_keys=True))


def test_config_round_trip_builds_the_same_network(net):
    cfg = net.config
    twin = SSRUNet.from_config(cfg).eval()
    assert _public(twin.config) == _public(cfg)
    twin.load_state_dict(net.state_dict())
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(twin(**x), net(**x))


def test_learned_null_text_and_group_norm_options():
    net = SSRUNet(**dict(tiny_config(), null_text='learned', amf=dict(hidden=8, norm='group', num_groups=4)))
    assert isinstance(net.null_text_embedding, nn.Parameter) and net.null_text_embedding.requires_grad
    assert all(isinstance(a.norm, nn.GroupNorm) for a in net.amf.values())
    with pytest.raises(OptionError, match='null_text'):
        SSRUNet(**tiny_config(), null_text='clip')


def _save_base(tmp_path):
    """A tiny 'Stable Diffusion' folder: random UNet and VAE written with diffusers' save_pretrained."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    cfg = tiny_config()
    torch.manual_seed(3)
    unet, vae = UNet2DConditionModel(**cfg['unet']), AutoencoderKL(**cfg['vae'])
    root = tmp_path / 'sd_tiny'
    unet.save_pretrained(root / 'unet')
    vae.save_pretrained(root / 'vae')
    DDPMScheduler(num_train_timesteps=100).save_pretrained(root / 'scheduler')
    return str(root), unet, vae


def test_local_directory_loading_through_options(tmp_path, caplog):
    from basicsr.archs import build_network
    root, unet, vae = _save_base(tmp_path)
    opt = dict(
        type='SSRUNet',
        pretrained_path=root,
        null_text_length=4,
        lr_encoder=dict(block_out_channels=[16, 32]),
        map_encoder=dict(block_out_channels=[8, 16]),
        amf=dict(hidden=16))
    logger = logging.getLogger('basicsr')
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger='basicsr'):
            net = build_network(opt)
    finally:
        logger.removeHandler(caplog.handler)
    for name, ref in (('unet', unet), ('vae', vae)):
        loaded = getattr(net, name).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in ref.state_dict().items()), name
        assert not any(p.requires_grad for p in getattr(net, name).parameters()), f'{name} should be frozen'
    n_train, n_total = net.parameter_counts()
    expected = sum(p.numel() for k, p in net.named_parameters() if not k.startswith(('unet.', 'vae.')))
    assert n_train == expected and 0 < n_train < n_total
    assert any('trainable of' in r.getMessage() for r in caplog.records)
    with pytest.raises(OptionError, match='pretrained_path'):
        SSRUNet(pretrained_path=str(tmp_path / 'nowhere'))


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(4)
    net = SSRUNet(**tiny_config()).eval()
    _randomise_amf(net, 2)
    net.save_pretrained(str(tmp_path / 'ssr'))
    # diffusers' file names: the config and the weights in safetensors
    assert sorted(os.listdir(tmp_path / 'ssr')) == ['config.json', 'diffusion_pytorch_model.safetensors']
    loaded = SSRUNet.from_pretrained(str(tmp_path / 'ssr')).eval()
    assert _public(loaded.config) == _public(net.config)
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(**x), net(**x))
        img = torch.rand(1, 3, 16, 16)
        assert torch.equal(loaded.decode_latent(loaded.encode_image(img)), net.decode_latent(net.encode_image(img)))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(5)
    a = SSRUNet(**tiny_config())
    _randomise_amf(a, 3)
    b = SSRUNet.from_config(a.config, gradient_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = _inputs()
    grads = []
    for net in (a, b):
        net.train()
        net(**x).square().mean().backward()
        grads.append(net.amf['down0_lr'].mlp_alpha[-1].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_a_frozen_pretrained_base_is_referenced_not_copied(tmp_path):
    root, unet, vae = _save_base(tmp_path)
    torch.manual_seed(6)
    net = SSRUNet(pretrained_path=root, null_text_length=4, lr_encoder=dict(block_out_channels=[16, 32]),
                  map_encoder=dict(block_out_channels=[8, 16]), amf=dict(hidden=16)).eval()
    _randomise_amf(net, 4)
    net.save_pretrained(str(tmp_path / 'ssr'))
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / 'ssr' / 'diffusion_pytorch_model.safetensors'))
    assert saved and not any(k.startswith(('unet.', 'vae.')) for k in saved)
    with open(tmp_path / 'ssr' / 'config.json') as f:
        assert json.load(f)['pretrained_path'] == os.path.abspath(root)
    loaded = SSRUNet.from_pretrained(str(tmp_path / 'ssr')).eval()
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(**x), net(**x))
    # a trainable base is part of the weights, and the folder then stands alone
    tuned = SSRUNet(pretrained_path=root, freeze_unet=False, freeze_vae=False, null_text_length=4,
                    lr_encoder=dict(block_out_channels=[16, 32]), map_encoder=dict(block_out_channels=[8, 16]),
                    amf=dict(hidden=16)).eval()
    tuned.save_pretrained(str(tmp_path / 'tuned'))
    with open(tmp_path / 'tuned' / 'config.json') as f:
        cfg = json.load(f)
    assert cfg['pretrained_path'] is None and cfg['unet']['block_out_channels'] == [32, 64]
    weights = load_file(str(tmp_path / 'tuned' / 'diffusion_pytorch_model.safetensors'))
    assert any(k.startswith('unet.') for k in weights)


def test_a_bf16_network_takes_bf16_maps_of_another_size_without_autocast():
    # the maps are resized in float32 (no bf16 antialiased kernel everywhere); the encoders must get bf16 back
    torch.manual_seed(0)
    net = SSRUNet(**tiny_config()).eval().to(torch.bfloat16)
    _randomise_amf(net)
    x = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in _inputs(1).items()}
    with torch.no_grad():
        conds = net.encode_conditions(x['lr_latent'], x['depth'], x['kernel_code'])
        out = net(x['sample'], x['timestep'], conditions=conds)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert all(a.dtype == torch.bfloat16 for mods in conds.values() for _, a, _ in mods)


def test_the_kernel_code_is_standardised_over_the_training_kernels(pca_path):
    """The kernel encoder reads codes of unit spread: raw PCA codes (spread 0.075 ... 0.0006 on the demo's SVKR
    maps) left trained SSRs blind to their kernel maps."""
    from ssr_data.degradations import distribution_kernels
    from ssr_data.kernels import KernelPCA
    net = SSRUNet(**tiny_config(), pca_path=pca_path, scale=4)
    raw = KernelPCA.load(pca_path)
    held_out = torch.as_tensor(distribution_kernels(800, 21, 4, seed=7)).float().t().reshape(1, 441, 20, 40)
    assert raw.encode(held_out).std(dim=(0, 2, 3)).max() < 0.5  # what the encoder used to read
    spread = net.kernel_code(held_out).std(dim=(0, 2, 3))
    assert torch.allclose(spread, torch.ones_like(spread), atol=0.15), spread
    # another distribution gives another scale (the option file's datasets:train reaches the network)
    narrow = SSRUNet(**tiny_config(), pca_path=pca_path, scale=4, kernel_distribution=dict(sigma_range=[0.6, 1.2]))
    assert not torch.allclose(narrow.code_scale, net.code_scale)


def test_code_scale_travels_with_the_weights_and_old_checkpoints_keep_raw_codes(pca_path, tmp_path):
    net = SSRUNet(**tiny_config(), pca_path=pca_path).eval()
    assert not torch.equal(net.code_scale, torch.ones(10))
    net.save_pretrained(str(tmp_path / 'ssr'))
    loaded = SSRUNet.from_pretrained(str(tmp_path / 'ssr'))  # config without pca_path: basis and scale from weights
    assert torch.equal(loaded.code_scale, net.code_scale) and torch.equal(loaded.pca.components, net.pca.components)
    old = {k: v for k, v in net.state_dict().items() if k != 'code_scale'}  # saved before code_scale existed
    fresh = SSRUNet(**tiny_config())
    fresh.load_state_dict(old)
    assert torch.equal(fresh.code_scale, torch.ones(10))
    kernel = torch.rand(1, 441, 4, 4)
    assert torch.equal(fresh.kernel_code(kernel), net.pca.encode(kernel))


def test_a_basis_taken_from_the_svkr_brings_its_nbsr_code_scale(pca_path):
    from basicsr.archs import build_network
    from ssr_pipelines.builder import adopt_svkr_kernel_pca
    from tests.conftest import tiny_svkr_opt
    svkr = build_network(tiny_svkr_opt(pca_path=pca_path))
    unet = SSRUNet(**tiny_config())
    assert torch.equal(unet.code_scale, torch.ones(10))
    adopt_svkr_kernel_pca(unet, svkr)
    assert torch.equal(unet.pca.components, svkr.sr_net.pca.components)
    assert torch.equal(unet.code_scale, svkr.sr_net.code_scale)


def test_lr_encoder_attention_is_multihead_attention_without_a_tokens_squared_buffer():
    # nn.MultiheadAttention's inference fast path allocated heads × N × N floats on the CPU: an untiled 512² LR
    # input asked for 1 TiB. The same weights through scaled_dot_product_attention give the module's result
    # with no buffer of that size.
    from torch.profiler import ProfilerActivity, profile
    from ssr_arch.ssr_encoders_arch import SSRLREncoder
    torch.manual_seed(0)
    enc = SSRLREncoder(in_channels=4, block_out_channels=[16, 32], attention_heads=4).eval()
    attn = next(m for m in enc.modules() if isinstance(m, nn.MultiheadAttention))
    latent = torch.randn(1, 4, 128, 128)  # the middle block at 64² = 4096 tokens
    with torch.no_grad():
        mid_in = enc.input_blocks[1](enc.downsamplers[0](enc.input_blocks[0](enc.conv_in(latent))))
        block = enc.middle_block[1]
        b, c, h, w = mid_in.shape
        tokens = block.norm(mid_in).flatten(2).transpose(1, 2)
    with torch.enable_grad():  # the module's reference path (the fast path is taken only without grad)
        ref, _ = attn(tokens, tokens, tokens, need_weights=False)
    ref = mid_in + ref.detach().transpose(1, 2).reshape(b, c, h, w)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = block(mid_in)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    largest = max(e.self_cpu_memory_usage for e in prof.events())
    tokens_squared = attn.num_heads * (h * w)**2 * 4
    assert largest < tokens_squared / 16, (largest, tokens_squared)
