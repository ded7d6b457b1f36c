"""SSRPipeline's named stages, each on its own (tiny random networks, CPU), and ``__call__`` as their composition.

The stages: ``check_inputs`` -> ``prepare_conditions`` -> ``encode_lr`` -> ``condition_windows`` ->
``prepare_timesteps`` / ``prepare_latents`` -> ``denoise`` -> ``decode``.
"""
import pytest
import torch

from ssr_pipelines.builder import load_pipeline
from ssr_pipelines.pipeline_ssr import (LayerwiseVAETiling, SamplingWindows, WindowVAETiling, pad_lr, upsample_lr,
                                        vae_tiling_strategy)
from ssr_utils.color_fix import color_fix
from ssr_utils.errors import OptionError


@pytest.fixture(scope='module')
def pipe(tiny_models):
    return load_pipeline(tiny_models['ssr'], device='cpu')


def _lr(h=12, w=20, seed=0):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _whole(pipe):
    net = pipe.unet
    return SamplingWindows.plan(None, 16, pipe.scale, net.vae_scale_factor, net.size_multiple)


# ------------------------------------------------------------------------------------------ check_inputs
def test_check_inputs_fills_the_defaults_and_plans_the_windows(pipe):
    run = pipe.check_inputs()
    assert (run.num_inference_steps, run.strength, run.sampler, run.seed, run.color_fix) == \
        (pipe.num_inference_steps, pipe.strength, pipe.sampler, pipe.seed, pipe.color_fix)
    assert not run.windows.tiled and run.windows.latent_tile is None and isinstance(run.vae_tiling, WindowVAETiling)
    run = pipe.check_inputs(3, 0.5, 'dpmsolver++', 7, tile=10, tile_overlap=3, color_fix='adain', vae_tiling='layerwise')
    assert (run.num_inference_steps, run.strength, run.sampler, run.seed, run.color_fix) == \
        (3, 0.5, 'dpmsolver++', 7, 'adain')
    # the tiny VAE halves: a latent window is twice the LR window (x4 output / 2)
    w = run.windows
    assert (w.tile, w.overlap, w.lr_tile, w.lr_overlap, w.latent_tile, w.latent_overlap) == (10, 3, 10, 3, 20, 6)
    assert isinstance(run.vae_tiling, LayerwiseVAETiling)
    # untiled, 'layerwise' is the untiled VAE too
    assert isinstance(pipe.check_inputs(vae_tiling='layerwise').vae_tiling, WindowVAETiling)


@pytest.mark.parametrize('kwargs, key', [
    (dict(num_inference_steps=-2), 'num_inference_steps'),
    (dict(strength=0), 'strength'),
    (dict(sampler='euler'), 'sampler'),
    (dict(color_fix='histogram'), 'color_fix'),
    (dict(cond_cache='gpu'), 'cond_cache'),
    (dict(tile=8, tile_overlap=8), 'tile_overlap'),
    (dict(tile=32, vae_tiling='groupnorm'), 'vae_tiling'),
    (dict(dtype='fp8'), 'dtype'),
    (dict(vae_residual='yes'), 'vae_residual'),
])
def test_check_inputs_names_a_bad_argument(pipe, kwargs, key):
    with pytest.raises(OptionError) as err:
        pipe.check_inputs(**kwargs)
    assert err.value.key == key


# ------------------------------------------------------------------------------------------ prepare_conditions
def test_prepare_conditions_takes_given_maps_and_asks_the_svkr_for_the_rest(pipe):
    lr = _lr()
    net = pipe.unet
    depth = torch.rand(1, 1, 12, 20)
    kernel = torch.softmax(torch.randn(1, 441, 12, 20, generator=torch.Generator().manual_seed(1)), 1)
    given = pipe.prepare_conditions(lr, depth=depth, kernel=kernel)
    assert set(given) == {'depth', 'code'} and torch.equal(given['depth'], depth)
    assert torch.equal(given['code'], net.kernel_code(kernel))
    with torch.no_grad():
        svkr = pipe.svkr(lr, need_sr=False)
    estimated = pipe.prepare_conditions(lr, return_maps=True)
    assert set(estimated) == {'depth', 'code', 'kvar'}
    torch.testing.assert_close(estimated['depth'], svkr['depth'], atol=1e-6, rtol=0)
    torch.testing.assert_close(estimated['code'], net.kernel_code(svkr['kernel']), atol=1e-5, rtol=0)
    tiled = pipe.prepare_conditions(lr, tile=8, tile_overlap=2)
    assert {k: v.shape for k, v in tiled.items()} == {k: estimated[k].shape for k in ('depth', 'code')}
    svkr_net, pipe.svkr = pipe.svkr, None
    try:
        with pytest.raises(OptionError, match='network_svkr'):
            pipe.prepare_conditions(lr)
        assert set(pipe.prepare_conditions(lr, depth=depth, kernel=kernel)) == {'depth', 'code'}
    finally:
        pipe.svkr = svkr_net


# ------------------------------------------------------------------------------------------ encode_lr
def test_encode_lr_is_the_vae_latent_of_the_upsampled_lr_tiled_or_not(pipe):
    net, s = pipe.unet, pipe.scale
    lq, _ = pad_lr(_lr(), s, net.size_multiple)
    whole = pipe.encode_lr(lq, _whole(pipe))
    with torch.no_grad():
        ref = net.encode_image(upsample_lr(lq, (lq.shape[-2] * s, lq.shape[-1] * s)))
    assert torch.equal(whole, ref)
    tiled = SamplingWindows.plan(6, 2, s, net.vae_scale_factor, net.size_multiple)
    windows = pipe.encode_lr(lq, tiled)
    layerwise = pipe.encode_lr(lq, tiled, LayerwiseVAETiling())
    assert windows.shape == layerwise.shape == ref.shape
    assert (layerwise - ref).abs().max() < 1e-4 < (windows - ref).abs().max()  # whole-image GroupNorms or not


# ------------------------------------------------------------------------------------------ condition_windows
def test_condition_windows_predict_as_the_network_on_the_whole_latent(pipe):
    net = pipe.unet
    lr = _lr()
    lq, _ = pad_lr(lr, pipe.scale, net.size_multiple)
    maps = pipe.prepare_conditions(lr)
    lr_latent = pipe.encode_lr(lq, _whole(pipe))
    conditions = pipe.condition_windows(lr_latent, maps, _whole(pipe))
    assert conditions.cache == 'device'  # one window: computed once, kept
    z = torch.randn(lr_latent.shape, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(50)
    with torch.no_grad():
        feats = net.encode_conditions(lr_latent, maps['depth'], maps['code'], size=lr_latent.shape[-2:])
        ref = net(z, t, conditions=feats)
        assert torch.equal(conditions.predict(z, t), ref)
        assert len(conditions.features) == 1 and torch.equal(conditions.predict(z, t), ref)


def test_condition_windows_cache_where_asked(pipe, monkeypatch):
    net = pipe.unet
    lr = _lr(12, 12)
    lq, _ = pad_lr(lr, pipe.scale, net.size_multiple)
    maps = pipe.prepare_conditions(lr)
    windows = SamplingWindows.plan(8, 2, pipe.scale, net.vae_scale_factor, net.size_multiple)  # 2 × 2 windows
    lr_latent = pipe.encode_lr(lq, windows)
    calls = []
    encode = net.encode_conditions
    monkeypatch.setattr(net, 'encode_conditions', lambda *a, **k: calls.append(1) or encode(*a, **k))
    z = torch.randn(lr_latent.shape, generator=torch.Generator().manual_seed(3))
    preds = {}
    with torch.no_grad():
        for cache in ('device', 'cpu', 'none'):
            conditions = pipe.condition_windows(lr_latent, maps, windows, cache)
            calls.clear()
            preds[cache] = [conditions.predict(z, torch.tensor(t)) for t in (80, 40)]
            per_step = len(conditions.runner.windows(*lr_latent.shape[-2:])[0])
            assert per_step > 1 and len(calls) == (2 * per_step if cache == 'none' else per_step), cache
    assert all(torch.equal(a, b) for cache in ('cpu', 'none') for a, b in zip(preds['device'], preds[cache]))
    assert pipe.condition_windows(lr_latent, maps, windows).cache == 'none'  # auto, several windows on the CPU


# ------------------------------------------------------------------------------------------ latents and loop
def test_prepare_latents_draws_from_the_generator_it_is_given(pipe):
    scheduler, timesteps = pipe.prepare_timesteps(4)
    shape = (1, 4, 6, 8)
    first = pipe.prepare_latents(shape, scheduler, timesteps, torch.Generator().manual_seed(5))
    again = pipe.prepare_latents(shape, scheduler, timesteps, torch.Generator().manual_seed(5))
    other = pipe.prepare_latents(shape, scheduler, timesteps, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    init = torch.ones(shape)
    noised = pipe.prepare_latents(shape, scheduler, timesteps, torch.Generator().manual_seed(5), init_latent=init)
    assert torch.equal(noised, scheduler.add_noise(init, torch.randn(shape, generator=torch.Generator().manual_seed(5)),
                                                   timesteps[:1]))


def test_denoise_is_one_prediction_and_one_scheduler_step_per_timestep(pipe):
    scheduler, timesteps = pipe.prepare_timesteps(3, sampler='ddim')
    start = pipe.prepare_latents((1, 4, 4, 4), scheduler, timesteps, torch.Generator().manual_seed(0))
    seen = []

    def predict(model_input, t):
        seen.append(int(t))
        return 0.1 * model_input

    out = pipe.denoise(start, scheduler, timesteps, predict)
    assert seen == [int(t) for t in timesteps]
    ref_scheduler, _ = pipe.prepare_timesteps(3, sampler='ddim')
    ref = start
    for t in timesteps:
        ref = ref_scheduler.step(0.1 * ref_scheduler.scale_model_input(ref, t), t, ref).prev_sample
    assert torch.equal(out, ref)


# ------------------------------------------------------------------------------------------ decode
@pytest.mark.parametrize('method', ['none', 'wavelet', 'adain'])
def test_decode_writes_the_colour_corrected_decoding_cropped_into_out(pipe, method):
    net, s = pipe.unet, pipe.scale
    lq = _lr(13, 18)
    latents = torch.randn(1, 4, 13 * s // 2, 18 * s // 2, generator=torch.Generator().manual_seed(4))
    out = torch.full((1, 3, 13 * s - 4, 18 * s - 8), -1.0)  # smaller, as for a padded image: the rest is cropped
    assert pipe.decode(latents, lq, _whole(pipe), method, out) is out
    with torch.no_grad():
        ref = color_fix(net.decode_latent(latents), upsample_lr(lq, (13 * s, 18 * s)), method)
    torch.testing.assert_close(out, ref[..., :13 * s - 4, :18 * s - 8], atol=2e-6, rtol=0)


# ------------------------------------------------------------------------------------------ vae_residual
def test_vae_round_trip_loss_makes_the_start_latent_decode_to_the_start_image(pipe):
    net, s = pipe.unet, pipe.scale
    lq, _ = pad_lr(_lr(13, 18, seed=5), s, net.size_multiple)
    whole = _whole(pipe)
    lr_latent = pipe.encode_lr(lq, whole)
    lost = pipe.vae_round_trip_loss(lr_latent, lq, whole)
    start = upsample_lr(lq, (lq.shape[-2] * s, lq.shape[-1] * s))
    with torch.no_grad():
        torch.testing.assert_close(lost, start - net.decode_latent(lr_latent), atol=2e-6, rtol=0)
    assert lost.abs().mean() > 1e-3  # the tiny VAE does lose something: the test below is not trivially true
    out = pipe.decode(lr_latent, lq, whole, 'none', torch.empty_like(start), lost=lost)
    torch.testing.assert_close(out, start, atol=2e-6, rtol=0)
    # layer-wise tiled, the same loss (whole-image GroupNorm statistics: equal up to summation order)
    tiled = pipe.check_inputs(tile=8, tile_overlap=2, vae_tiling='layerwise')
    torch.testing.assert_close(pipe.vae_round_trip_loss(lr_latent, lq, tiled.windows, tiled.vae_tiling), lost,
                               atol=1e-4, rtol=0)


def test_call_with_vae_residual_adds_the_loss_to_every_sample(pipe):
    lr = _lr(10, 14, seed=6)
    kw = dict(strength=0.5, seed=3, color_fix='none', num_images_per_image=2)
    plain = pipe(lr, **kw).images
    assert torch.equal(pipe(lr, vae_residual=False, **kw).images, plain)  # the pipeline's default: off
    res = pipe(lr, vae_residual=True, **kw).images
    lq, (h, w) = pad_lr(lr, pipe.scale, pipe.unet.size_multiple)
    whole = _whole(pipe)
    lost = pipe.vae_round_trip_loss(pipe.encode_lr(lq, whole), lq, whole)[..., :h * 4, :w * 4]
    torch.testing.assert_close(res, (plain + lost.repeat_interleave(2, 0)).clamp(0, 1), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ the call
@pytest.mark.parametrize('tile, strength', [(None, 1.0), (8, 0.5)])
def test_call_is_the_stages_in_order(pipe, tile, strength):
    lr = _lr(10, 14, seed=7)
    images = pipe(lr, tile=tile, tile_overlap=2, strength=strength, seed=3).images
    run = pipe.check_inputs(strength=strength, seed=3, tile=tile, tile_overlap=2)
    maps = pipe.prepare_conditions(lr, tile=run.windows.tile, tile_overlap=run.windows.overlap)
    lq, (h, w) = pad_lr(lr, pipe.scale, pipe.unet.size_multiple)
    lr_latent = pipe.encode_lr(lq, run.windows, run.vae_tiling)
    conditions = pipe.condition_windows(lr_latent, maps, run.windows)
    scheduler, timesteps = pipe.prepare_timesteps(run.num_inference_steps, strength)
    latents = pipe.prepare_latents(lr_latent.shape, scheduler, timesteps, torch.Generator().manual_seed(3),
                                   init_latent=lr_latent if strength < 1 else None)
    latents = pipe.denoise(latents, scheduler, timesteps, conditions.predict)
    out = pipe.decode(latents, lq, run.windows, run.color_fix, torch.empty(1, 3, h * 4, w * 4), run.vae_tiling)
    assert torch.equal(images, out)


def test_vae_tiling_strategy_is_checked_and_chosen_once():
    assert isinstance(vae_tiling_strategy('layerwise', 'disk'), LayerwiseVAETiling)
    assert vae_tiling_strategy('layerwise', 'disk').store == 'disk'
    assert isinstance(vae_tiling_strategy('layerwise', tiled=False), WindowVAETiling)
    assert isinstance(vae_tiling_strategy(), WindowVAETiling)
    with pytest.raises(OptionError, match='vae_store'):
        vae_tiling_strategy('layerwise', 'gpu')
