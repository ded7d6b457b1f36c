"""diffusers' calling conventions and memory switches on SSRPipeline (tiny random networks, CPU).

``generator`` (one or a list), ``num_images_per_image`` / ``num_images_per_prompt`` (the conditions computed once
per image), ``callback_on_step_end``, ``output_type``, ``return_dict``, progress bars; ``enable_vae_tiling``,
``enable_model_cpu_offload``, ``enable_attention_slicing``, half-precision weights (``to(dtype)``,
``from_pretrained(torch_dtype=...)``).
"""
import numpy as np
import pytest
import torch

from ssr_pipelines import SSRPipeline
from ssr_pipelines.builder import load_pipeline
from ssr_pipelines.pipeline_ssr import LayerwiseVAETiling, float32_modules
from ssr_utils.errors import OptionError


@pytest.fixture(scope='module')
def pipe(tiny_models):
    return load_pipeline(tiny_models['ssr'], device='cpu')


def _lr(b=1, h=12, w=16, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _count_svkr_runs(pipe):
    calls = []
    handle = pipe.svkr.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


# ------------------------------------------------------------------------------------------ calling conventions
@torch.no_grad()
def test_acceptance_two_generators_np_callback_one_svkr_run(pipe):
    lr = _lr()
    steps = []

    def cb(p, step, timestep, kwargs):
        assert p is pipe and set(kwargs) == {'latents'}
        steps.append((step, int(timestep)))
        return kwargs

    calls, handle = _count_svkr_runs(pipe)
    try:
        out = pipe(lr, generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)],
                   output_type='np', callback_on_step_end=cb, num_inference_steps=3)
    finally:
        handle.remove()
    assert isinstance(out.images, np.ndarray) and out.images.shape == (2, 48, 64, 3)
    assert [s for s, _ in steps] == [0, 1, 2] and len(calls) == 1
    # each sample is the one its generator gives alone: the shared conditions change nothing
    for k, seed in enumerate((5, 6)):
        alone = pipe(lr, generator=torch.Generator().manual_seed(seed), num_inference_steps=3).images
        np.testing.assert_allclose(out.images[k], alone[0].permute(1, 2, 0).numpy(), atol=1e-5, rtol=0)
    assert not np.allclose(out.images[0], out.images[1])


@torch.no_grad()
def test_samples_per_image_share_conditions_and_keep_the_seed_rule(pipe):
    lr = _lr(2, seed=1)
    calls, handle = _count_svkr_runs(pipe)
    try:
        both = pipe(lr, seed=3, num_images_per_image=2).images
    finally:
        handle.remove()
    assert both.shape == (4, 3, 48, 64) and len(calls) == 1
    # sample k of image i is the image alone with seed + k (the old seed= keyword)
    for i, k in ((0, 1), (1, 0)):
        alone = pipe(lr[i:i + 1], seed=3 + k).images
        torch.testing.assert_close(both[2 * i + k:2 * i + k + 1], alone, atol=1e-5, rtol=0)
    # diffusers' spelling, and a generator seeded as seed= draws the same noise (a batch of another size may
    # round differently: 1e-5)
    torch.testing.assert_close(pipe(lr[:1], seed=3, num_images_per_prompt=2).images, both[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(pipe(lr[:1], generator=torch.Generator().manual_seed(3)).images, both[:1],
                               atol=1e-5, rtol=0)
    with pytest.raises(OptionError, match='num_images_per_prompt'):
        pipe(lr, num_images_per_image=2, num_images_per_prompt=3)
    with pytest.raises(ValueError, match='generators'):
        pipe(lr, generator=[torch.Generator()] * 3)
    with pytest.raises(ValueError, match='seed= or generator='):
        pipe(lr[:1], seed=1, generator=torch.Generator())


@torch.no_grad()
def test_output_types_return_dict_and_the_input_kind_default(pipe):
    lr = _lr()
    pt = pipe(lr, seed=2, output_type='pt').images
    assert torch.is_tensor(pt) and pt.shape == (1, 3, 48, 64)
    assert torch.equal(pipe(lr, seed=2).images, pt)  # default: the input's kind
    pil = pipe(lr, seed=2, output_type='pil').images
    assert isinstance(pil, list) and pil[0].size == (64, 48)
    expected = np.clip(np.round(pt[0].permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(pil[0]), expected)
    latent = pipe(lr, seed=2, output_type='latent').images
    assert latent.shape[:2] == (1, 4) and latent.shape[-1] * pipe.unet.vae_scale_factor == 64
    images, depth = pipe(lr, seed=2, return_dict=False)
    assert torch.equal(images, pt) and depth.shape == (1, 1, 12, 16)
    # a uint8 array in, several samples: a stack of uint8 arrays out
    arr = (lr[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    two = pipe(arr, seed=2, num_images_per_image=2).images
    assert two.dtype == np.uint8 and two.shape == (2, 48, 64, 3)
    with pytest.raises(OptionError, match='output_type'):
        pipe(lr, output_type='jpeg')


@torch.no_grad()
def test_callback_can_replace_latents_and_interrupt(pipe):
    lr = _lr()
    seen = []

    def zero_after_first(p, step, t, kwargs):
        seen.append(sorted(kwargs))
        if step == 0:
            p._interrupt = True
        return {'latents': torch.zeros_like(kwargs['latents'])}

    out = pipe(lr, seed=1, num_inference_steps=3, output_type='latent', callback_on_step_end=zero_after_first,
               callback_on_step_end_tensor_inputs=['latents', 'noise_pred', 'lr_latent'])
    assert len(seen) == 1 and seen[0] == ['latents', 'lr_latent', 'noise_pred'] and pipe.interrupt
    assert torch.equal(out.images, torch.zeros_like(out.images)) and pipe.num_timesteps == 3
    with pytest.raises(OptionError, match='callback_on_step_end_tensor_inputs'):
        pipe(lr, callback_on_step_end=zero_after_first, callback_on_step_end_tensor_inputs=['prompt_embeds'])


@torch.no_grad()
def test_progress_bar_config(pipe, capsys):
    lr = _lr(h=8, w=8)
    pipe(lr, seed=1)
    assert 'SSR sampling' not in capsys.readouterr().err  # no bars by default
    pipe.set_progress_bar_config(disable=False, desc='mine')
    try:
        pipe(lr, seed=1)
        assert 'mine' in capsys.readouterr().err
        pipe(lr, seed=1, progress=False)  # the old keyword wins
        assert 'mine' not in capsys.readouterr().err
    finally:
        pipe.set_progress_bar_config(disable=True)


# ------------------------------------------------------------------------------------------ memory switches
@torch.no_grad()
def test_vae_tiling_switch_and_layerwise_default_with_tiles(pipe):
    lr = _lr(h=16, w=16)
    ref = pipe(lr, seed=1).images
    pipe.enable_vae_tiling(tile_size=16)
    try:
        assert isinstance(pipe.check_inputs().vae_tiling, LayerwiseVAETiling)
        torch.testing.assert_close(pipe(lr, seed=1).images, ref, atol=1e-4, rtol=0)
    finally:
        pipe.disable_vae_tiling()
    assert not isinstance(pipe.check_inputs().vae_tiling, LayerwiseVAETiling)
    # a tiled call tiles the VAE layer-wise unless asked for windows
    assert isinstance(pipe.check_inputs(tile=8, tile_overlap=2).vae_tiling, LayerwiseVAETiling)
    assert not isinstance(pipe.check_inputs(tile=8, tile_overlap=2, vae_tiling="windows").vae_tiling, LayerwiseVAETiling)


@torch.no_grad()
def test_model_offload_moves_one_component_per_stage_and_changes_nothing(tiny_models):
    pipe = load_pipeline(tiny_models['ssr'], device='cpu')
    lr = _lr()
    ref = pipe(lr, seed=1).images
    pipe.enable_model_cpu_offload(device='cpu')  # the moves are what is tested: CPU to CPU here
    out = pipe(lr, seed=1).images
    assert torch.equal(out, ref)
    stages = [name for name, role in pipe._offload.log if role == 'execution']
    assert stages == ['svkr', 'vae', 'unet', 'vae']  # SVKR maps, encode, denoise, decode
    pipe.to('cpu')
    assert pipe._offload is None


def test_model_offload_without_cuda_is_refused_with_the_reason(tiny_models, monkeypatch):
    # a CPU-only machine (as this one; forced where CUDA is there): nothing to offload to, a clear message
    pipe = load_pipeline(tiny_models['ssr'], device='cpu')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(RuntimeError, match='no CUDA device to run on .*host memory'):
        pipe.enable_model_cpu_offload()
    assert pipe._offload is None


@torch.no_grad()
def test_attention_slicing_gives_the_same_image(pipe):
    lr = _lr()
    ref = pipe(lr, seed=1).images
    pipe.enable_attention_slicing('max')
    try:
        torch.testing.assert_close(pipe(lr, seed=1).images, ref, atol=1e-5, rtol=0)
    finally:
        pipe.disable_attention_slicing()


@torch.no_grad()
@pytest.mark.parametrize('dtype, atol', [(torch.bfloat16, 0.03), (torch.float16, 0.01)])
def test_half_weights_keep_what_must_stay_float32_and_are_close(tiny_models, dtype, atol):
    pipe = load_pipeline(tiny_models['ssr'], device='cpu')
    lr = _lr()
    ref = pipe(lr, seed=1).images
    pipe.to(dtype)
    assert pipe.torch_dtype == dtype
    kept = {id(p) for m in float32_modules(pipe.unet, dtype) + float32_modules(pipe.svkr, dtype)
            for p in m.parameters()}
    for net in pipe.networks():
        for p in net.parameters():
            assert p.dtype == (torch.float32 if id(p) in kept else dtype)
    assert pipe.unet.pca.components.dtype == torch.float32
    bns = [m for m in pipe.unet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.running_var.dtype == torch.float32 for m in bns)
    assert any(p.dtype == dtype for p in pipe.unet.unet.parameters())
    half = pipe(lr, seed=1).images
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    err = (half - ref).abs()
    assert err.max() < atol and err.mean() < atol / 4
    with pytest.raises(OptionError, match='dtype'):
        pipe(lr, dtype='fp32')


def test_from_pretrained_torch_dtype(tiny_models, tmp_path):
    load_pipeline(tiny_models['ssr'], device='cpu').save_pretrained(str(tmp_path / 'm'))
    pipe = SSRPipeline.from_pretrained(str(tmp_path / 'm'), torch_dtype=torch.bfloat16)
    assert pipe.torch_dtype == torch.bfloat16 and pipe.dtype == torch.bfloat16
    assert next(pipe.unet.unet.parameters()).dtype == torch.bfloat16
    with pytest.raises(OptionError, match='torch_dtype'):
        SSRPipeline.from_pretrained(str(tmp_path / 'm'), torch_dtype=torch.bfloat16, dtype='fp16')


@torch.no_grad()
def test_tiled_call_with_the_layerwise_vae_is_within_40db_of_the_whole_vae(pipe):
    # the acceptance of the layer-wise default, at test size: the same tiled call (UNet on the same windows)
    # with the whole VAE is the reference (scripts/benchmarks/bench_inference.py --vae-psnr at larger sizes)
    import math
    from ssr_app.benchmarks.bench_inference import whole_vae_call
    lr = torch.nn.functional.interpolate(_lr(h=8, w=8, seed=4), size=(32, 32), mode='bicubic').clamp(0, 1)
    ref = whole_vae_call(pipe, lr, 16, 4, 2, seed=0)
    layerwise = pipe(lr, num_inference_steps=2, seed=0, tile=16, tile_overlap=4).images
    assert 10 * math.log10(1 / (layerwise - ref).pow(2).mean().item()) >= 40
    windows = pipe(lr, num_inference_steps=2, seed=0, tile=16, tile_overlap=4, vae_tiling='windows').images
    assert (windows - ref).abs().max() > 10 * (layerwise - ref).abs().max()  # the reference tells them apart
