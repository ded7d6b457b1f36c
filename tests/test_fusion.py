"""Fusion methods of SSRUNet (``fusion: amf | sft | concat``): each one's wiring on a frozen pretrained base and
from scratch, identity at init, save / load, the inference form, gradients, and the one-file extension point."""
import copy

import pytest
import torch
from torch import nn

from ssr_arch.fusion_arch import FUSION_REGISTRY, ConditionFusion, fusion_class, fusion_names
from ssr_arch.ssr_unet_arch import SSRUNet, tiny_config
from ssr_utils.errors import OptionError

METHODS = ('amf', 'sft', 'concat')
INPUT_KEYS = {'lr': 'lr_latent', 'depth': 'depth', 'kernel': 'kernel_code'}


def _inputs(batch=2, size=(8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return dict(
        sample=torch.randn(batch, 4, h, w, generator=g),
        timestep=torch.tensor([3, 700][:batch]),
        lr_latent=torch.randn(batch, 4, h, w, generator=g),
        depth=torch.rand(batch, 1, 2 * h, 2 * w, generator=g),
        kernel_code=torch.randn(batch, 10, 2 * h, 2 * w, generator=g))


def _config(fusion, **extra):
    cfg = dict(tiny_config(), fusion=fusion)
    if fusion == 'sft':
        cfg['fusion_opt'] = dict(hidden=16)
    cfg.update(extra)
    return cfg


def _save_base(root):
    """A tiny 'Stable Diffusion' folder: random UNet and VAE written with diffusers' save_pretrained."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    cfg = tiny_config()
    torch.manual_seed(3)
    unet, vae = UNet2DConditionModel(**cfg['unet']), AutoencoderKL(**cfg['vae'])
    unet.save_pretrained(root / 'unet')
    vae.save_pretrained(root / 'vae')
    DDPMScheduler(num_train_timesteps=100).save_pretrained(root / 'scheduler')
    return str(root)


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    return _save_base(tmp_path_factory.mktemp('fusion_base'))


def _on_base(base, fusion, **extra):
    cfg = _config(fusion, **extra)
    cfg.pop('unet'), cfg.pop('vae')
    return SSRUNet(pretrained_path=base, **cfg)


def _fusion_output_layers(net):
    """The zero-initialised output layers of the network's fusion method."""
    layers = []
    for module in net.fusion_method.modules():
        if isinstance(module, nn.Sequential):
            layers.append(module[-1])
        elif isinstance(module, nn.Conv2d) and net.config['fusion'] == 'concat':
            layers.append(module)
    return layers


def _randomise_fusion(net, seed=0, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in _fusion_output_layers(net):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * std)


def _bare_unet(net):
    bare = copy.deepcopy(net.unet)
    for module in bare.modules():
        module._forward_hooks.clear()
    return bare


def test_the_three_methods_are_registered_and_an_unknown_one_is_named():
    assert set(METHODS) <= set(fusion_names())
    assert fusion_class('amf').__name__ == 'AMFFusion'
    with pytest.raises(OptionError, match='fusion'):
        SSRUNet(**_config('attention'))
    with pytest.raises(OptionError, match='fusion_opt'):
        SSRUNet(**dict(_config('sft'), fusion_opt=dict(norm='batch')))
    with pytest.raises(OptionError, match='fusion_opt'):  # AMF's options are its amf: block
        SSRUNet(**dict(_config('amf'), fusion_opt=dict(hidden=8)))


def test_amf_keeps_its_weight_names_and_is_the_default():
    net = SSRUNet(**tiny_config())
    assert net.config['fusion'] == 'amf' and net.fusion_method is net.amf
    assert any(k.startswith('amf.down0_lr.mlp_alpha') for k in net.state_dict())


@pytest.mark.parametrize('fusion', METHODS)
def test_a_new_method_on_a_frozen_base_is_the_identity(base, fusion):
    torch.manual_seed(0)
    net = _on_base(base, fusion).eval()
    bare = _bare_unet(net)
    x = _inputs()
    with torch.no_grad():
        ref = bare(x['sample'], x['timestep'], encoder_hidden_states=net.null_embedding(2)).sample
        assert torch.equal(net(**x), ref)
        net.train()
        assert torch.equal(net(**x), ref)


@pytest.mark.parametrize('fusion', METHODS)
def test_each_modality_changes_the_output(fusion):
    torch.manual_seed(1)
    net = SSRUNet(**_config(fusion)).eval()
    _randomise_fusion(net)
    x = _inputs()
    with torch.no_grad():
        ref = net(**x)
        assert (ref - net(x['sample'], x['timestep'], conditions={})).abs().max() > 1e-3
        for m in net.modalities:
            y = dict(x)
            y[INPUT_KEYS[m]] = x[INPUT_KEYS[m]] + torch.randn_like(x[INPUT_KEYS[m]])
            assert (net(**y) - ref).abs().max() > 1e-3, m


@pytest.mark.parametrize('fusion', METHODS)
def test_each_method_drops_a_modality_it_is_not_given(fusion):
    net = SSRUNet(**_config(fusion, modalities=['depth', 'lr'])).eval()
    x = _inputs()
    x.pop('kernel_code')
    with torch.no_grad():
        assert net(**x).shape == x['sample'].shape
    with pytest.raises(ValueError, match='depth'):
        net(x['sample'], x['timestep'], lr_latent=x['lr_latent'])


@pytest.mark.parametrize('fusion', METHODS)
def test_conditions_once_per_image_and_the_inference_form_give_the_direct_prediction(fusion):
    torch.manual_seed(2)
    net = SSRUNet(**_config(fusion)).eval()
    _randomise_fusion(net, 1)
    x = _inputs(size=(6, 10))
    with torch.no_grad():
        direct = net(**x)
        apart = net.encode_conditions(x['lr_latent'], x['depth'], x['kernel_code'], fold=False)
        folded = net.encode_conditions(x['lr_latent'], x['depth'], x['kernel_code'])
        assert set(folded) == {name for name, _, _, _ in net.injection_points()}
        torch.testing.assert_close(net(x['sample'], x['timestep'], conditions=apart), direct, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net(x['sample'], x['timestep'], conditions=folded), direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('fusion', METHODS)
def test_config_and_folder_round_trips_on_a_frozen_base(base, fusion, tmp_path):
    torch.manual_seed(4)
    net = _on_base(base, fusion).eval()
    _randomise_fusion(net, 2)
    twin = SSRUNet.from_config(net.config).eval()
    twin.load_state_dict(net.state_dict())
    net.save_pretrained(str(tmp_path / 'ssr'))
    loaded = SSRUNet.from_pretrained(str(tmp_path / 'ssr')).eval()
    assert loaded.config['fusion'] == fusion and loaded.config['fusion_opt'] == net.config['fusion_opt']
    x = _inputs()
    with torch.no_grad():
        ref = net(**x)
        assert torch.equal(twin(**x), ref)
        assert torch.equal(loaded(**x), ref)


@pytest.mark.parametrize('fusion', METHODS)
def test_training_steps_move_the_fusion_and_leave_the_frozen_base_bit_identical(base, fusion):
    torch.manual_seed(5)
    net = _on_base(base, fusion).train()
    frozen = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(('unet.', 'vae.'))}
    fusion_before = {k: v.clone() for k, v in net.fusion_method.state_dict().items()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert trainable and all(not p.requires_grad for p in net.unet.parameters())
    opt = torch.optim.Adam(trainable, lr=1e-2)
    x = _inputs()
    for step in range(2):
        opt.zero_grad()
        pred, recon = net(**x, return_recon=True)
        loss = pred.square().mean() + sum(r.square().mean() for r in recon.values())
        loss.backward()
        if step == 1:  # from the second step on every trainable parameter has a gradient (DDP needs that)
            missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, missing
        opt.step()
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    moved = net.fusion_method.state_dict()
    assert any(not torch.equal(moved[k], v) for k, v in fusion_before.items())


def test_concat_extends_the_input_convolution_exactly():
    # conv_in(z) + ext(c) is a convolution of [z, c] whose extra input channels carry ext's weights
    torch.manual_seed(6)
    net = SSRUNet(**_config('concat')).eval()
    _randomise_fusion(net, 3)
    x = _inputs()
    conv, ext = net.unet.conv_in, net.fusion_method['conv_in']
    wide = nn.Conv2d(conv.in_channels + ext.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding)
    with torch.no_grad():
        wide.weight.copy_(torch.cat([conv.weight, ext.weight], dim=1))
        wide.bias.copy_(conv.bias)
        depth = nn.functional.interpolate(x['depth'], size=(8, 8), mode='bilinear', antialias=True)
        code = nn.functional.interpolate(x['kernel_code'], size=(8, 8), mode='bilinear', antialias=True)
        stacked = torch.cat([x['sample'], code, depth, x['lr_latent']], dim=1)  # modalities kernel, depth, lr
        seen = {}
        handle = conv.register_forward_hook(lambda m, a, out: seen.setdefault('out', out))
        net(**x)
        handle.remove()
    assert not net.encoders and not net.recon_heads
    torch.testing.assert_close(seen['out'], wide(stacked), rtol=1e-5, atol=1e-5)


def test_a_fourth_method_is_one_registered_class(base):
    # what docs/interfaces.md promises: a new file with one registered class, chosen by `fusion:` alone

    @FUSION_REGISTRY.register()
    class ShiftOnlyTestFusion(ConditionFusion):
        option_name = 'shift_only_test'

        def __init__(self, unet, modalities, inject, feature_channels, input_channels, scale=1.0):
            super().__init__(unet, modalities, inject)
            self.resolved_options = dict(scale=scale)
            for name, _, feat_ch, level in self.points:
                self[name] = nn.Conv2d(sum(feature_channels[m][level] for m in self.modalities), feat_ch, 1)
                nn.init.zeros_(self[name].weight)
                nn.init.zeros_(self[name].bias)

        def conditions(self, feats):
            return {name: [('shift', self[name](torch.cat([feats[m][level] for m in self.modalities], 1)))]
                    for name, _, _, level in self.points}

        def fuse(self, name, hidden, point_conds):
            return hidden + point_conds[0][1]

    assert 'shift_only_test' in fusion_names()
    net = _on_base(base, 'shift_only_test', fusion_opt=dict(scale=2.0)).eval()
    x = _inputs()
    with torch.no_grad():
        ref = _bare_unet(net)(x['sample'], x['timestep'], encoder_hidden_states=net.null_embedding(2)).sample
        assert torch.equal(net(**x), ref)
        for layer in net.fusion_method.values():
            layer.bias.fill_(0.1)
        assert (net(**x) - ref).abs().max() > 1e-3
    assert SSRUNet.from_config(net.config).config['fusion_opt'] == {'scale': 2.0}
