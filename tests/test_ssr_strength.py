"""SSRModel: img2img-style ``diffusion: strength`` and ``train: vae_warmup_iter`` (tiny models, CPU)."""
import copy
import os.path as osp

import pytest
import torch

import ssr_arch  # noqa: F401  (registers)
import ssr_models  # noqa: F401
from ssr_arch.ssr_unet_arch import tiny_config
from ssr_data.kernels import random_kernels
from ssr_pipelines.pipeline_ssr import pad_lr, upsample_lr
from ssr_utils.errors import OptionError

SCALE = 4


def _opt(tmp_path, pca_path, svkr=False, **train):
    net = dict(type='SSRUNet', pca_path=pca_path, **tiny_config())
    train_opt = dict(optim_g=dict(type='Adam', lr=1e-3),
                     scheduler=dict(type='MultiStepLR', milestones=[1000], gamma=0.5),
                     lambda_kernel=0.1, lambda_depth=0.1, lambda_lr=0.1)
    train_opt.update(train)
    for sub in ('models', 'training_states', 'visualization'):
        (tmp_path / sub).mkdir(exist_ok=True)
    opt = dict(
        name='ssr_strength_test', model_type='SSRModel', scale=SCALE, num_gpu=0, is_train=True, dist=False, rank=0,
        world_size=1, manual_seed=0, network_g=net, conditions=dict(source='gt'),
        diffusion=dict(num_train_timesteps=100, sampler='ddim', num_inference_steps=4, color_fix='none', seed=0),
        path=dict(models=str(tmp_path / 'models'), training_states=str(tmp_path / 'training_states'),
                  visualization=str(tmp_path / 'visualization')),
        train=train_opt)
    if svkr:
        from basicsr.archs import build_network
        opt['network_svkr'] = dict(
            type='SVKR', num_iter=1, gamma=0.9, scale=SCALE, kernel_size=21,
            depth_opt=dict(type='MonocularDepth', backend='prior'),
            kernel_opt=dict(type='DKENet', num_feat=[8, 16], num_depth_feat=[8, 8], reduction=2),
            sr_opt=dict(type='NBSR', num_feat=8, num_block=1, num_grow_ch=8, num_cond=8, pca_path=pca_path))
        torch.manual_seed(0)
        opt['path']['pretrain_network_svkr'] = str(tmp_path / 'svkr.pth')
        torch.save({'params': build_network(copy.deepcopy(opt['network_svkr'])).state_dict()},
                   opt['path']['pretrain_network_svkr'])
        opt['conditions'] = dict(source='svkr')
    return opt


def _build(opt):
    from basicsr.models import build_model
    return build_model(copy.deepcopy(opt))


def _batch(batch=2, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    kernels = random_kernels(batch * h * w, kernel_size=21, seed=seed).reshape(batch, h, w, -1).permute(0, 3, 1, 2)
    return dict(lq=torch.rand(batch, 3, h, w, generator=g), gt=torch.rand(batch, 3, SCALE * h, SCALE * w, generator=g),
                depth_lq=torch.rand(batch, 1, h, w, generator=g), kernel=kernels.contiguous().float())


# ------------------------------------------------------------------------------------------ strength
def _sample_latents(pipe, shape, predict, steps=None, seed=0, strength=None, init_latent=None):
    """The latent stages of ``SSRPipeline.__call__`` on a given prediction: timesteps, starting latent, loop."""
    scheduler, timesteps = pipe.prepare_timesteps(steps, strength)
    latents = pipe.prepare_latents(shape, scheduler, timesteps, torch.Generator().manual_seed(seed), init_latent)
    return pipe.denoise(latents, scheduler, timesteps, predict)


def test_strength_one_is_the_pure_noise_start(tmp_path, pca_path):
    pipe = _build(_opt(tmp_path, pca_path)).pipeline
    shape = (1, 4, 4, 4)
    fn = (lambda z, t: 0.1 * z)
    scheduler, timesteps = pipe.prepare_timesteps(3)  # the options' strength: 1, the whole schedule
    assert torch.equal(timesteps, pipe.prepare_timesteps(3, strength=1.0)[1]) and len(timesteps) == 3
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    start = pipe.prepare_latents(shape, scheduler, timesteps, torch.Generator().manual_seed(5))
    assert torch.equal(start, noise * scheduler.init_noise_sigma)
    default = _sample_latents(pipe, shape, fn, 3, 5)
    assert torch.equal(default, pipe.denoise(start, scheduler, timesteps, fn))
    pipe.strength = 0.5  # the options' strength now: the last step of three
    assert torch.equal(pipe.prepare_timesteps(3)[1], timesteps[2:])
    with pytest.raises(ValueError, match='does not match'):
        pipe.prepare_latents(shape, scheduler, timesteps, torch.Generator(), init_latent=torch.ones(1, 4, 2, 2))
    for bad in (0, 1.5, -0.1, 'half'):
        with pytest.raises(OptionError, match='strength'):
            pipe.prepare_timesteps(3, strength=bad)


@pytest.mark.parametrize('sampler', ['ddim', 'dpmsolver++'])
def test_strength_runs_the_last_steps_from_the_noised_init_latent(tmp_path, pca_path, sampler):
    pipe = _build(_opt(tmp_path, pca_path)).pipeline
    pipe.sampler = sampler
    shape = (2, 4, 4, 6)
    init = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    acp = pipe.scheduler.alphas_cumprod
    seen = []

    def oracle(z, t):  # the exact noise of z around init: every step must then land on init
        seen.append((int(t), z.clone()))
        a = acp[int(t)]
        return (z - a.sqrt() * init) / (1 - a).sqrt()

    out = _sample_latents(pipe, shape, oracle, steps=10, seed=7, strength=0.35, init_latent=init)
    start, run = pipe.strength_steps(10, 0.35)
    assert (start, run) == (7, 3)  # diffusers' rule: int(10 * 0.35) steps, the last ones of the schedule
    sched = pipe.sampling_scheduler()
    sched.set_timesteps(10)
    assert [t for t, _ in seen] == [int(t) for t in sched.timesteps[7:]]
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    t0 = seen[0][0]
    torch.testing.assert_close(seen[0][1], acp[t0].sqrt() * init + (1 - acp[t0]).sqrt() * noise, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, init, atol=1e-4, rtol=0)
    assert pipe.strength_steps(4, 0.1) == (3, 1)  # at least one step


def test_sr_with_strength_keeps_shape_seed_and_stays_closer_to_the_lr(tmp_path, pca_path):
    model = _build(_opt(tmp_path, pca_path))
    data = _batch(batch=1, h=5, w=7)  # padded to the size multiple and cropped back
    args = (data['lq'], data['depth_lq'], data['kernel'])
    full = model.sr(*args)['sr']
    model.pipeline.strength = 0.3
    part = model.sr(*args)['sr']
    assert part.shape == full.shape == (1, 3, 20, 28)
    assert torch.equal(part, model.sr(*args)['sr']) and not torch.equal(part, full)
    # a random network: only the last (low-noise) step runs, from the LR latent, so the result stays near the
    # VAE reconstruction of the upsampled LR image
    net = model.bare_g
    lq, _ = pad_lr(data['lq'], SCALE, net.size_multiple)
    with torch.no_grad():
        up = upsample_lr(lq, (lq.shape[-2] * SCALE, lq.shape[-1] * SCALE))
        rec = net.decode_latent(net.encode_image(up))[..., :20, :28]
    assert (part - rec).abs().mean() < (full - rec).abs().mean()


def test_tiled_sampling_with_strength_equals_sr_for_one_window(tmp_path, pca_path):
    model = _build(_opt(tmp_path, pca_path, svkr=True))
    model.pipeline.strength, model.pipeline.color_fix = 0.5, 'wavelet'
    lr = torch.rand(1, 3, 6, 10, generator=torch.Generator().manual_seed(2))
    ref = model.sr(lr, num_steps=4, seed=3)['sr']  # the SVKR on the whole image, maps given to the pipeline
    one = model.pipeline(lr, num_inference_steps=4, seed=3, tile=64, tile_overlap=4).images
    assert one.shape == ref.shape and (one - ref).abs().max().item() < 1e-5


# ------------------------------------------------------------------------------------------ VAE warm-up
def _step(model, data, it):
    model.feed_data(data)
    model.optimize_parameters(it)
    return float(model.last_loss)


def test_vae_warmup_trains_the_vae_alone_then_freezes_it(tmp_path, pca_path):
    opt = _opt(tmp_path, pca_path, vae_warmup_iter=2, ema_decay=0.9)
    model = _build(opt)
    net = model.bare_g

    def snap(prefix):
        return {k: v.detach().clone() for k, v in net.named_parameters() if k.startswith(prefix)}

    data = [_batch(seed=s) for s in range(5)]
    unet0, vae0 = snap('unet.'), snap('vae.')
    for it in (1, 2):  # BasicSR counts iterations from 1
        _step(model, data[it], it)
        assert set(model.log_dict) == {'l_vae', 'l_total'}
    assert all(torch.equal(unet0[k], v) for k, v in snap('unet.').items())
    assert all(torch.equal(snap('encoders.')[k], v) for k, v in snap('encoders.').items())
    assert any(not torch.equal(vae0[k], v) for k, v in snap('vae.').items())
    vae2 = snap('vae.')
    _step(model, data[3], 3)
    assert 'l_eps' in model.log_dict and 'l_vae' not in model.log_dict
    assert not any(p.requires_grad for p in net.vae.parameters())
    assert all(torch.equal(vae2[k], v) for k, v in snap('vae.').items())
    assert any(not torch.equal(unet0[k], v) for k, v in snap('unet.').items())
    # the EMA holds the frozen VAE itself (the diffusion part learns this VAE's latents)
    assert not any(k.startswith('vae.') for k in model.ema)
    ema_state = model.network_g_state(use_ema=True)
    assert all(torch.equal(ema_state[k], v) for k, v in snap('vae.').items())

    # a resume after the warm-up freezes the VAE again and continues identically
    model.save(epoch=0, current_iter=3)
    expected = _step(model, data[4], 4)
    resumed_opt = copy.deepcopy(opt)
    resumed_opt['path']['pretrain_network_g'] = osp.join(opt['path']['models'], 'net_g_3.pth')
    resumed = _build(resumed_opt)
    resumed.resume_training(torch.load(osp.join(opt['path']['training_states'], '3.state'), map_location='cpu',
                                       weights_only=False))
    assert _step(resumed, data[4], 4) == expected
    assert not any(p.requires_grad for p in resumed.bare_g.vae.parameters())


def test_vae_warmup_options(tmp_path, pca_path):
    opt = _opt(tmp_path, pca_path, vae_warmup_iter=1, vae_freeze_after_warmup=False)
    model = _build(opt)
    for it in (1, 2):
        _step(model, _batch(seed=it), it)
    assert 'l_eps' in model.log_dict and 'l_vae' in model.log_dict  # joint training goes on
    assert all(p.requires_grad for p in model.bare_g.vae.parameters())
    opt = _opt(tmp_path, pca_path, vae_warmup_iter=2)
    opt['network_g']['freeze_vae'] = True
    with pytest.raises(OptionError, match='vae_warmup_iter'):
        _build(opt)
    with pytest.raises(OptionError, match='vae_warmup_iter'):
        _build(_opt(tmp_path, pca_path, vae_warmup_iter=-1))
