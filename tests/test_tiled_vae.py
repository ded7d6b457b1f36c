"""Tiled VAE with whole-image GroupNorm statistics (ssr_utils.tiled_vae) against the untiled diffusers VAE."""
import math

import pytest
import torch
from torch import nn

from ssr_utils.tiled_vae import ActivationStore, tile_grid, tiled_decode, tiled_encode
from ssr_utils.tiling import tiled_apply


def _vae(attention=True):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(16, 32, 32), down_block_types=('DownEncoderBlock2D', ) * 3,
                         up_block_types=('UpDecoderBlock2D', ) * 3, layers_per_block=1, norm_num_groups=8,
                         latent_channels=4, mid_block_add_attention=attention).eval()


def _latent(b=1, h=20, w=28):
    """A latent with regions of different tone (what makes per-tile statistics drift)."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing='ij')
    base = torch.stack([2 * xx, torch.sin(3 * yy), (xx * yy > 0).float() * 2 - 1, yy], 0)
    return (base[None] + 0.3 * torch.randn(b, 4, h, w, generator=g)).contiguous()


def _psnr(a, b):
    mse = float(((a - b)**2).mean()) / 4  # [-1, 1] images
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def test_tile_grid_partitions_the_image():
    rows = tile_grid(50, 37, 16, multiple=1)
    covered = torch.zeros(50, 37, dtype=torch.int32)
    for row in rows:
        for t in row:
            y0, y1, x0, x1 = t.core
            covered[y0:y1, x0:x1] += 1
    assert covered.eq(1).all()
    assert len(rows) == 4 and len(rows[0]) == 3
    assert all(t.core[0] % 8 == 0 and t.core[2] % 8 == 0 for row in tile_grid(64, 48, 24, multiple=8) for t in row)
    with pytest.raises(ValueError, match='multiple'):
        tile_grid(10, 10, 12, multiple=8)


@pytest.mark.parametrize('store', ['memory', 'disk'])
def test_tiled_decode_equals_untiled_and_naive_tiles_do_not(store):
    vae = _vae()
    z = _latent()
    with torch.no_grad():
        ref = vae.decode(z).sample
    out = tiled_decode(vae, z, tile_size=8, store=store)
    assert out.shape == ref.shape == (1, 3, 80, 112)
    assert (out - ref).abs().max() < 1e-4
    # what the project did before: windows with their own GroupNorm statistics, overlapped and blended
    with torch.no_grad():
        naive = tiled_apply(lambda t: vae.decode(t).sample, z, 8, 2, context=2)
    assert _psnr(naive, ref) < 35 < _psnr(out, ref)
    # the tone of a tile shifts with naive tiles: the mean colour of some 32×32 block moves by > 2 levels
    block_shift = (naive - ref).unfold(2, 32, 32).unfold(3, 32, 32).mean(dim=(-1, -2)).abs().max() * 127.5
    assert block_shift > 2


def test_middle_attention_streamed_in_key_bands_equals_untiled(monkeypatch):
    # keys and values too large for ATTENTION_KV_BYTES stream in bands with the online softmax
    from ssr_utils import tiled_vae
    monkeypatch.setattr(tiled_vae, 'ATTENTION_KV_BYTES', 0)
    monkeypatch.setattr(tiled_vae, 'ATTENTION_KEY_CHUNK', 64)  # 2 latent rows of 28 per band: 10 bands
    vae = _vae()
    z = _latent()
    with torch.no_grad():
        ref = vae.decode(z).sample
    assert (tiled_decode(vae, z, tile_size=8) - ref).abs().max() < 1e-4


def test_middle_attention_holds_no_query_tile_by_keys_scores():
    # the fused attention over the whole image's keys must take SDPA's fused kernel: with strided keys the CPU
    # takes the math path and allocates the query tile × keys score matrix
    from torch.profiler import ProfilerActivity, profile
    vae = _vae()
    z = _latent(h=96, w=96)  # the middle block at 96² latent pixels: 9216 keys
    with torch.no_grad():
        ref = vae.decode(z).sample
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = tiled_decode(vae, z, tile_size=48)  # query tiles of 2304 positions
    assert (out - ref).abs().max() < 1e-4
    scores = 2304 * 9216 * 4  # one head, float32: 81 MiB (the largest store map: 32 × 384² floats, 18 MiB)
    largest = max(e.self_cpu_memory_usage for e in prof.events())
    assert largest < scores / 3, (largest, scores)


def test_tiled_decode_batch_streaming_rows_and_no_attention():
    vae = _vae(attention=False)
    z = _latent(b=2, h=13, w=17)  # sizes that do not divide into tiles
    with torch.no_grad():
        ref = vae.decode(z).sample
    got = []

    def sink(r0, r1, rows):
        got.append((r0, r1, rows.clone()))

    assert tiled_decode(vae, z, tile_size=5, out=sink) is None
    assert [g[0] for g in got] == sorted(g[0] for g in got) and got[0][0] == 0 and got[-1][1] == 52
    assert all(a[1] == b[0] for a, b in zip(got, got[1:]))  # contiguous bands, top to bottom
    assert (torch.cat([g[2] for g in got], dim=2) - ref).abs().max() < 1e-4
    canvas = torch.zeros(2, 3, 52, 68, dtype=torch.float64)
    assert tiled_decode(vae, z, tile_size=6, out=canvas) is canvas
    assert (canvas.float() - ref).abs().max() < 1e-4


def test_tiled_encode_equals_untiled():
    vae = _vae()
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(1, 3, 72, 96, generator=g) * 2 - 1)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some spatial structure
    with torch.no_grad():
        ref = vae.encode(x).latent_dist
    for store in ('memory', 'disk'):
        dist = tiled_encode(vae, x, tile_size=24, store=store)
        assert dist.mean.shape == ref.mean.shape == (1, 4, 18, 24)
        assert (dist.mean - ref.mean).abs().max() < 1e-4
        assert (dist.logvar - ref.logvar).abs().max() < 1e-4
    with pytest.raises(ValueError, match='multiple of 4'):
        tiled_encode(vae, x[..., :70, :], tile_size=24)


def test_disk_store_round_trip_and_cleanup(tmp_path):
    with ActivationStore('disk', folder=str(tmp_path)) as store:
        t = torch.randn(2, 5, 9, 11)
        store.create('a', t.shape, torch.float32)
        store.write('a', 0, 0, t[..., :4, :])
        store.write('a', 4, 0, t[..., 4:, :6])
        store.write('a', 4, 6, t[..., 4:, 6:])
        assert torch.equal(store.read('a', 2, 7, 3, 10), t[..., 2:7, 3:10])
        folder = store.folder
        assert len(list(tmp_path.iterdir())) == 1
    assert folder is not None and not list(tmp_path.iterdir())  # files removed on close


def test_unsupported_blocks_are_named():
    vae = _vae()
    vae.decoder.up_blocks[0].resnets[0].time_emb_proj = nn.Linear(4, 32)
    with pytest.raises(NotImplementedError, match='ResnetBlock2D'):
        tiled_decode(vae, _latent(h=8, w=8), tile_size=4)
    with pytest.raises(TypeError, match='AutoencoderKL'):
        tiled_decode(nn.Conv2d(4, 3, 1), _latent(h=8, w=8))


def _tiny_pipeline():
    """A tiny random SSRPipeline (tiny UNet / VAE with GroupNorms, demo-size SVKR) on the CPU."""
    import ssr_arch  # noqa: F401
    from basicsr.archs import build_network
    from ssr_arch.ssr_unet_arch import tiny_config
    from ssr_pipelines import SSRPipeline
    from ssr_pipelines.builder import scheduler_from_options
    from conftest import tiny_svkr_opt
    torch.manual_seed(0)
    unet = build_network(dict(type='SSRUNet', **tiny_config()))
    return SSRPipeline(unet, scheduler_from_options(), build_network(tiny_svkr_opt()), scale=4, sampler='ddim',
                       num_inference_steps=2, seed=0, color_fix='none')


@pytest.mark.parametrize('store', ['memory', 'disk'])
def test_pipeline_layerwise_vae_tiling_is_the_untiled_vae(store):
    """SSRPipeline(vae_tiling='layerwise'): with the sampler taken out (the final latent = the LR latent), a
    tiled run is decode(encode(upsampled LR)) of the untiled VAE, and is the default; the window tiling is not."""
    pipe = _tiny_pipeline()
    lr = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(1))
    # VAE only: with strength < 1 the start is the LR latent, kept as it is to the end
    pipe.prepare_latents = lambda shape, scheduler, timesteps, generator, init_latent=None: init_latent
    pipe.denoise = lambda latents, *a, **k: latents
    ref = pipe(lr, strength=0.5).images
    lay = pipe(lr, strength=0.5, tile=8, tile_overlap=4, vae_tiling='layerwise', vae_store=store).images
    win = pipe(lr, strength=0.5, tile=8, tile_overlap=4, vae_tiling='windows').images
    assert torch.equal(pipe(lr, strength=0.5, tile=8, tile_overlap=4, vae_store=store).images, lay)  # the default
    err_lay, err_win = (lay - ref).abs().max().item(), (win - ref).abs().max().item()
    assert err_lay < 1e-4, err_lay
    assert err_win > 10 * max(err_lay, 1e-6), (err_win, err_lay)  # the test tells the two apart


def test_pipeline_layerwise_vae_tiling_samples_and_bad_values_are_named():
    from ssr_utils.errors import OptionError
    pipe = _tiny_pipeline()
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    out = torch.full((1, 3, 64, 64), -1.0)
    res = pipe(lr, tile=8, tile_overlap=4, vae_tiling='layerwise', out=out).images
    assert res.data_ptr() == out.data_ptr() and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    # untiled, the option changes nothing: one window is the untiled VAE either way
    assert torch.equal(pipe(lr, vae_tiling='layerwise').images, pipe(lr).images)
    with pytest.raises(OptionError, match='vae_tiling'):
        pipe(lr, tile=8, vae_tiling='groupnorm')
    with pytest.raises(OptionError, match='vae_store'):
        pipe(lr, tile=8, vae_tiling='layerwise', vae_store='gpu')
