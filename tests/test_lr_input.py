"""``network_g: lr_input: svkr``: the LR encoder (and the img2img start) reads the SVKR's refined image Iᵀ
instead of the bicubic-upsampled LR image, in training (SSRModel) and in sampling (SSRPipeline)."""
import copy

import pytest
import torch

from conftest import tiny_svkr_opt
import ssr_arch  # noqa: F401  (registers)
import ssr_models  # noqa: F401
from ssr_arch.ssr_unet_arch import SSRUNet, tiny_config
from ssr_pipelines import SSRPipeline
from ssr_pipelines.pipeline_ssr import upsample_lr
from ssr_utils.errors import OptionError


def _svkr(pca_path, num_iter=0):
    from basicsr.archs import build_network
    torch.manual_seed(0)
    opt = tiny_svkr_opt(pca_path=pca_path)
    opt['num_iter'] = num_iter  # T = 0: the maps do not depend on the NBSR, Iᵀ does
    return build_network(opt).eval()


def _unet(lr_input, pca_path):
    torch.manual_seed(1)
    net = SSRUNet(**tiny_config(), pca_path=pca_path, lr_input=lr_input).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for amf in net.amf.values():
            for mlp in (amf.mlp_alpha, amf.mlp_beta):
                mlp[-1].weight.copy_(torch.randn(mlp[-1].weight.shape, generator=g) * 0.2)
    return net


def _perturb_nbsr(svkr):
    with torch.no_grad():
        for p in svkr.sr_net.parameters():
            p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize('lr_input', ['bicubic', 'svkr'])
def test_the_sampled_image_follows_the_svkr_image_only_when_the_lr_encoder_reads_it(pca_path, lr_input):
    svkr = _svkr(pca_path)
    pipe = SSRPipeline(_unet(lr_input, pca_path), dict(num_train_timesteps=100), svkr, sampler='ddim',
                       num_inference_steps=2, color_fix='none')
    lr = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    before = pipe(lr).images
    half = pipe(lr, strength=0.5).images
    _perturb_nbsr(svkr)
    after = pipe(lr).images
    after_half = pipe(lr, strength=0.5).images
    if lr_input == 'svkr':
        assert (after - before).abs().max() > 1e-3 and (after_half - half).abs().max() > 1e-3
    else:  # T = 0: depth and kernel maps come before any NBSR pass
        assert torch.equal(after, before) and torch.equal(after_half, half)


def test_tiled_and_layerwise_sampling_read_the_svkr_image_at_output_size(pca_path):
    pipe = SSRPipeline(_unet('svkr', pca_path), dict(num_train_timesteps=100), _svkr(pca_path),
                       sampler='ddim', num_inference_steps=1, color_fix='none')
    lr = torch.rand(1, 3, 7, 13, generator=torch.Generator().manual_seed(3))  # padded to the size multiple
    whole = pipe(lr).images
    assert whole.shape == (1, 3, 28, 52)
    for vae_tiling in ('windows', 'layerwise'):
        tiled = pipe(lr, tile=8, tile_overlap=4, vae_tiling=vae_tiling).images
        assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
        assert (tiled - whole).abs().mean() < 0.1, vae_tiling


def test_vae_residual_takes_the_start_back_to_the_svkr_image(pca_path, tmp_path):
    from ssr_pipelines.pipeline_ssr import SamplingWindows, pad_lr
    pipe = SSRPipeline(_unet('svkr', pca_path), dict(num_train_timesteps=100), _svkr(pca_path, num_iter=1),
                       sampler='ddim', num_inference_steps=1, color_fix='none', vae_residual=True)
    pipe.save_pretrained(str(tmp_path / 'folder'))  # the default travels with the model folder
    assert SSRPipeline.from_pretrained(str(tmp_path / 'folder')).vae_residual is True
    lr = torch.rand(1, 3, 7, 13, generator=torch.Generator().manual_seed(3))  # padded to the size multiple
    maps = pipe.prepare_conditions(lr)
    lq, (h, w) = pad_lr(lr, 4, pipe.unet.size_multiple)
    whole = SamplingWindows.plan(None, 16, 4, pipe.unet.vae_scale_factor, pipe.unet.size_multiple)
    lr_latent = pipe.encode_lr(lq, whole, svkr_sr=maps['sr'])
    lost = pipe.vae_round_trip_loss(lr_latent, lq, whole, svkr_sr=maps['sr'])
    out = pipe.decode(lr_latent, lq, whole, 'none', torch.empty(1, 3, h * 4, w * 4), lost=lost)
    sr = maps['sr'].float().clamp(0, 1)
    torch.testing.assert_close(out, sr, atol=2e-6, rtol=0)
    assert (out - upsample_lr(lr, (h * 4, w * 4))).abs().mean() > 1e-3  # Iᵀ, not the upsampled LR image


def test_a_pipeline_without_svkr_says_the_lr_encoder_needs_it(pca_path):
    pipe = SSRPipeline(_unet('svkr', pca_path), dict(num_train_timesteps=100), None, scale=4, num_inference_steps=1)
    lr = torch.rand(1, 3, 8, 8)
    with pytest.raises(OptionError, match='lr_input'):
        pipe(lr, depth=torch.rand(1, 1, 8, 8), kernel=torch.full((1, 441, 8, 8), 1 / 441))
    with pytest.raises(OptionError, match='lr_input'):
        SSRUNet(**tiny_config(), lr_input='hr')


def _model_opt(tmp_path, pca_path, svkr_ckpt=None):
    from basicsr.archs import build_network
    for sub in ('models', 'training_states', 'visualization'):
        (tmp_path / sub).mkdir(exist_ok=True)
    opt = dict(name='lr_input', model_type='SSRModel', scale=4, num_gpu=0, is_train=True, dist=False, rank=0,
               world_size=1, manual_seed=0,
               network_g=dict(type='SSRUNet', pca_path=pca_path, lr_input='svkr', **tiny_config()),
               conditions=dict(source='gt'),
               diffusion=dict(num_train_timesteps=100, sampler='ddim', num_inference_steps=1, color_fix='none'),
               path=dict(models=str(tmp_path / 'models'), training_states=str(tmp_path / 'training_states'),
                         visualization=str(tmp_path / 'visualization')),
               train=dict(optim_g=dict(type='Adam', lr=1e-3),
                          scheduler=dict(type='MultiStepLR', milestones=[100], gamma=0.5)))
    if svkr_ckpt is not None:
        opt['network_svkr'] = tiny_svkr_opt(pca_path=pca_path)
        torch.manual_seed(0)
        torch.save({'params': build_network(copy.deepcopy(opt['network_svkr'])).state_dict()}, svkr_ckpt)
        opt['path']['pretrain_network_svkr'] = svkr_ckpt
    return opt


def test_training_encodes_the_svkr_image_and_needs_the_svkr(tmp_path, pca_path):
    from basicsr.models import build_model
    bad = _model_opt(tmp_path, pca_path, str(tmp_path / 'svkr.pth'))
    bad['diffusion']['vae_residual'] = 'yes'
    with pytest.raises(OptionError, match='diffusion:vae_residual'):
        build_model(bad)
    with pytest.raises(OptionError, match='network_svkr'):
        build_model(_model_opt(tmp_path, pca_path))
    model = build_model(_model_opt(tmp_path, pca_path, str(tmp_path / 'svkr.pth')))
    lq = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model.net_svkr(lq)['sr'].float().clamp(0, 1)
    seen = model.lr_encoder_image(lq, (32, 32))
    assert torch.equal(seen, expected) and not torch.equal(seen, upsample_lr(lq, (32, 32)))
    encoded = []
    handle = model.bare_g.vae.encoder.register_forward_hook(lambda m, a, out: encoded.append(a[0].detach()))
    model.feed_data(dict(lq=lq, gt=torch.rand(2, 3, 32, 32), depth_lq=torch.rand(2, 1, 8, 8),
                         kernel=torch.full((2, 441, 8, 8), 1 / 441)))
    model.optimize_parameters(1)
    handle.remove()
    assert any(torch.allclose(x, expected * 2 - 1) for x in encoded)
    # a sample that carries Iᵀ of the whole image its crop comes from is encoded as given
    given = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    encoded.clear()
    handle = model.bare_g.vae.encoder.register_forward_hook(lambda m, a, out: encoded.append(a[0].detach()))
    model.feed_data(dict(lq=lq, gt=torch.rand(2, 3, 32, 32), depth_lq=torch.rand(2, 1, 8, 8),
                         kernel=torch.full((2, 441, 8, 8), 1 / 441), svkr_sr=given))
    model.optimize_parameters(2)
    handle.remove()
    assert any(torch.allclose(x, given * 2 - 1) for x in encoded)
