import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import pytest

from ssr_utils.tiling import TiledRunner, pad_to, ramp, tile_starts, tiled_apply, window_1d


def _conv_sr(scale=4, seed=0, layers=3):
    """Small fully convolutional ×scale network; receptive field radius = layers (3×3 convs)."""
    torch.manual_seed(seed)
    mods = []
    ch = 3
    for _ in range(layers - 1):
        mods += [nn.Conv2d(ch, 8, 3, padding=1), nn.LeakyReLU(0.2)]
        ch = 8
    mods += [nn.Conv2d(ch, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale)]
    return nn.Sequential(*mods).eval()


@pytest.mark.parametrize('length,tile,overlap,multiple', [(100, 32, 8, 1), (33, 32, 8, 1), (257, 64, 16, 8),
                                                          (64, 64, 8, 1), (5, 32, 8, 1), (1000, 96, 95, 1)])
def test_tile_starts_cover_and_overlap(length, tile, overlap, multiple):
    starts = tile_starts(length, tile, overlap, multiple)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    for a, b in zip(starts, starts[1:]):
        assert b > a
        assert a + size - b >= overlap - (multiple - 1)  # neighbours overlap enough
    for s in starts[:-1]:
        assert s % multiple == 0


def test_ramps_are_complementary_and_positive():
    for kind in ('cosine', 'linear'):
        r = ramp(16, kind)
        assert torch.allclose(r + r.flip(0), torch.ones(16), atol=1e-6)
        assert bool((r > 0).all()) and bool((r < 1).all())
    w = window_1d(20, 4, 6)
    assert torch.all(w[4:14] == 1) and w[0] < w[3] and w[-1] < w[-5]
    with pytest.raises(ValueError, match='window'):
        ramp(4, 'hann')


@torch.no_grad()
def test_tiled_equals_untiled_for_convolutional_network():
    net = _conv_sr(4)
    x = torch.rand(2, 3, 45, 61)  # odd sizes, a batch
    ref = net(x)
    out = tiled_apply(net, x, tile=16, overlap=4, context=3)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < 1e-5
    # context smaller than the receptive field: not exact, but close, and blended
    approx = tiled_apply(net, x, tile=16, overlap=4, context=1)
    assert (approx - ref).abs().max().item() < 0.1


@torch.no_grad()
def test_seams_no_worse_than_interior_and_smooth():
    """A network with a per-window global step (min-max normalisation, like a depth prior): every window
    differs from the untiled result by its own offset. Blending must not make the error at seams larger
    than inside the windows, and must not leave a step (a visible seam) in the error field."""

    def net(x):
        lo = x.amin(dim=(-2, -1), keepdim=True)
        hi = x.amax(dim=(-2, -1), keepdim=True)
        return F.interpolate((x - lo) / (hi - lo + 1e-8), scale_factor=2, mode='nearest')

    torch.manual_seed(1)
    base = torch.linspace(0, 1, 96)
    x = (base[None, :] * base[:, None])[None, None].repeat(1, 3, 1, 1) + 0.05 * torch.rand(1, 3, 96, 96)
    ref = net(x)
    tiled = tiled_apply(net, x, tile=40, overlap=16)
    hard = tiled_apply(net, x, tile=40, overlap=16, window='linear')
    err = (tiled - ref).abs().mean(1)[0]
    # windows start at 0, 28, 56 (size 40): overlaps at 28..40 and 56..68 -> ×2 output coordinates
    seam = torch.zeros_like(err, dtype=torch.bool)
    for a, b in ((28, 40), (56, 68)):
        seam[2 * a:2 * b, :] = True
        seam[:, 2 * a:2 * b] = True
    assert err[seam].max() <= err[~seam].max() + 1e-6
    # a hard cut (no overlap) as the reference for a visible seam
    cut = tiled_apply(net, x, tile=32, overlap=0)
    jump_cut = (cut - ref).diff(dim=-1).abs().max().item()
    jump_blend = (tiled - ref).diff(dim=-1).abs().max().item()
    assert jump_cut > 0.05  # the per-window offsets are real
    assert jump_blend < 0.3 * jump_cut
    assert (hard - ref).abs().max() <= err.max() * 2 + 1e-3  # linear ramps work too


@torch.no_grad()
def test_small_inputs_are_padded_and_cropped_back():
    calls = []

    def net(x):
        calls.append(tuple(x.shape[-2:]))
        if x.shape[-1] < 32 or x.shape[-2] < 32 or x.shape[-1] % 8 or x.shape[-2] % 8:
            raise AssertionError(f'network minimum not respected: {tuple(x.shape)}')
        return F.interpolate(x, scale_factor=4, mode='nearest')

    x = torch.rand(1, 3, 5, 7)
    out = tiled_apply(net, x, tile=64, overlap=8, multiple=8, min_size=32)
    assert out.shape == (1, 3, 20, 28)
    assert torch.allclose(out, F.interpolate(x, scale_factor=4, mode='nearest'))
    assert calls == [(32, 32)]
    y = torch.rand(3, 1, 2)  # C×H×W and smaller than a reflection pad
    assert tiled_apply(lambda t: t, y, tile=16, overlap=4, min_size=8).shape == y.shape
    padded, size = pad_to(torch.rand(1, 1, 3, 3), 8, 1)
    assert padded.shape[-2:] == (8, 8) and size == (3, 3)


@torch.no_grad()
def test_dict_outputs_with_different_scales_and_fractional_scale():
    net = _conv_sr(2)

    def fn(x):
        return {'sr': net(x), 'lr_map': x.mean(1, keepdim=True), 'none': None}

    x = torch.rand(1, 3, 40, 36)
    out = tiled_apply(fn, x, tile=16, overlap=4, context=3)
    assert set(out) == {'sr', 'lr_map'}
    assert (out['sr'] - net(x)).abs().max() < 1e-5
    assert (out['lr_map'] - x.mean(1, keepdim=True)).abs().max() < 1e-6
    # a VAE-encoder-like ×1/8 (average pooling is exact when windows are aligned to 8)
    img = torch.rand(1, 3, 80, 72)
    enc = tiled_apply(lambda t: F.avg_pool2d(t, 8), img, tile=32, overlap=16, multiple=8)
    assert (enc - F.avg_pool2d(img, 8)).abs().max() < 1e-6
    with pytest.raises(ValueError, match='whole number'):
        tiled_apply(lambda t: F.avg_pool2d(t, 8), img, tile=32, overlap=12, context=4, multiple=1)


@torch.no_grad()
def test_latent_tiling_matches_for_local_function_and_out_device():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    z = torch.randn(1, 4, 30, 22)
    out = tiled_apply(conv, z, tile=12, overlap=4, context=1, out_device='cpu')
    assert (out - conv(z)).abs().max() < 1e-5
    with pytest.raises(ValueError, match='overlap'):
        tiled_apply(conv, z, tile=8, overlap=8)


def test_rows_stream_out_in_order_before_the_last_window_row_runs():
    """Blending keeps only the rows windows still reach: finished rows reach an ``into`` callable top to
    bottom, most of them before the last row of windows runs, and together equal the canvas result."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Upsample(scale_factor=2))
    x = torch.rand(1, 3, 70, 50)
    events, got = [], []

    def fn(t):
        events.append(('window', sum(r1 - r0 for r0, r1 in got)))
        return net(t)

    def sink(r0, r1, rows):
        assert r0 == sum(b - a for a, b in got), 'rows arrive in order, without gaps'
        got.append((r0, r1))
        events.append(('rows', r1))
        blocks.append(rows.clone())

    blocks = []
    with torch.no_grad():
        ref = tiled_apply(net, x, tile=16, overlap=4, context=2)
        assert tiled_apply(fn, x, tile=16, overlap=4, context=2, into={'out': sink}) is None
    streamed = torch.cat(blocks, dim=-2)
    assert streamed.shape == ref.shape and torch.equal(streamed, ref)
    # the last window row starts at LR row 54: everything above its overlap was handed on before
    rows_before_last = [n for kind, n in events if kind == 'window'][-1]
    assert rows_before_last >= (70 - 16) * 2
    assert max(r1 - r0 for r0, r1 in got) <= 16 * 2


def test_into_a_view_of_an_image_array_and_a_cropped_target():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.rand(1, 3, 30, 26)
    with torch.no_grad():
        ref = tiled_apply(net, x, tile=12, overlap=4, context=2)
        arr = np.full((30, 26, 3), np.nan, dtype=np.float32)
        view = torch.from_numpy(arr).permute(2, 0, 1)[None]
        assert tiled_apply(net, x, tile=12, overlap=4, context=2, into={'out': view}) is view
        assert np.array_equal(arr, ref[0].permute(1, 2, 0).numpy())
        small = torch.zeros(1, 3, 20, 21)  # padding rows / columns are dropped
        tiled_apply(net, x, tile=12, overlap=4, context=2, into={'out': small})
        assert torch.equal(small, ref[..., :20, :21])


@pytest.mark.parametrize('h,w,tile,overlap,context,multiple', [(45, 61, 16, 4, 3, 1), (70, 50, 16, 4, 2, 2),
                                                               (100, 30, 20, 19, 2, 1), (7, 9, 16, 4, 2, 8)])
def test_blending_in_the_destination_equals_the_band_to_the_bit(h, w, tile, overlap, context, multiple):
    """A float32 destination (canvas, a view of an HWC image array, a cropped or larger tensor) holds the
    blending sums itself, without a band buffer; a callable, or a destination of another dtype, gets the
    band (one window high). Both give the same numbers to the bit."""
    net = _conv_sr(4)
    x = torch.rand(2, 3, h, w)
    kw = dict(tile=tile, overlap=overlap, context=context, multiple=multiple)
    th = min(tile, h) if h > tile else -(-max(h, 1) // multiple) * multiple  # one window's LR height
    with torch.no_grad():
        streamed = []
        runner = TiledRunner(**kw)
        assert runner(net, x, into={'out': lambda r0, r1, rows: streamed.append(rows.clone())}) is None
        ref = torch.cat(streamed, dim=-2)
        assert 0 < runner.buffer_rows['out'] <= th * 4  # the band: at most one window row

        canvas = runner(net, x)
        assert torch.equal(canvas, ref) and runner.buffer_rows['out'] == 0

        arr = np.full((2, h * 4, w * 4, 3), np.nan, dtype=np.float32)  # images as H×W×3 arrays
        view = torch.from_numpy(arr).permute(0, 3, 1, 2)
        assert runner(net, x, into={'out': view}) is view and runner.buffer_rows['out'] == 0
        assert np.array_equal(arr, ref.permute(0, 2, 3, 1).numpy())

        for shape, dtype in (((2, 3, h * 4 - 3, w * 4 - 5), torch.float32), ((2, 3, h * 4 + 3, w * 4 + 2), torch.float32),
                             ((2, 3, h * 4, w * 4), torch.float16)):
            target = torch.full(shape, 7.0, dtype=dtype)
            runner(net, x, into={'out': target})
            rows, cols = min(shape[-2], h * 4), min(shape[-1], w * 4)
            assert torch.equal(target[..., :rows, :cols], ref[..., :rows, :cols].to(dtype))
            assert bool((target[..., rows:, :] == 7).all()) and bool((target[..., :, cols:] == 7).all())
            assert (runner.buffer_rows['out'] == 0) == (dtype == torch.float32)


def test_destination_sharing_the_input_falls_back_to_the_band():
    """In-place use (the destination is the input, ×1 network): zeroing rows in the destination while later
    windows still read them as context would change the result, so the band is used."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    x = torch.rand(1, 3, 40, 36)
    with torch.no_grad():
        ref = tiled_apply(conv, x, tile=16, overlap=4, context=1)
        runner = TiledRunner(16, 4, context=1)
        y = x.clone()
        runner(conv, y, into={'out': y})
    assert runner.buffer_rows['out'] > 0
    # the first window row read the untouched input (the band writes rows only when they are finished);
    # blending in the destination would have zeroed rows that its second window still reads
    first_done = tile_starts(40, 16, 4)[1]
    assert torch.equal(y[..., :first_done, :], ref[..., :first_done, :])
