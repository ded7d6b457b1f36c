"""StreamingColorFix (row bands in, colour-corrected rows out) against color_fix on the whole image."""
import pytest
import torch

from ssr_utils.color_fix import StreamingColorFix, color_fix


def _stream(method, img, ref, cuts, target=None):
    h = img.shape[-2]
    target = torch.full_like(img, float('nan')) if target is None else target
    fixer = StreamingColorFix(method, lambda a, b: ref[..., a:b, :], h, target)
    edges = [0] + cuts + [h]
    for a, b in zip(edges[:-1], edges[1:]):
        rows = img[..., a:b, :].clone()
        fixer.push(a, b, rows)
        rows.fill_(float('nan'))  # as tiling's band reuses its buffer: rows are only valid during push
    return fixer.finish()


@pytest.mark.parametrize('method', ['wavelet', 'adain', 'none'])
def test_streamed_equals_whole_image(method):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 150, 70, generator=g) * 1.2 - 0.1
    ref = torch.rand(1, 3, 150, 70, generator=g)
    whole = color_fix(img, ref, method)
    # bands thinner and thicker than the wavelet's reach (31 rows)
    out = _stream(method, img, ref, [5, 12, 40, 41, 100])
    assert torch.isfinite(out).all()
    assert (out - whole).abs().max().item() < 1e-5
    if method == 'wavelet':  # the test can fail: a reach that is too short shows at the band borders
        short = StreamingColorFix(method, lambda a, b: ref[..., a:b, :], 150, torch.empty_like(img))
        short.margin = 8
        for a, b in ((0, 50), (50, 100), (100, 150)):
            short.push(a, b, img[..., a:b, :].clone())
        assert (short.finish() - whole).abs().max().item() > 1e-3


def test_cropped_target_and_order_check():
    g = torch.Generator().manual_seed(1)
    img, ref = torch.rand(1, 3, 64, 40, generator=g), torch.rand(1, 3, 64, 40, generator=g)
    target = torch.zeros(1, 3, 60, 37)
    _stream('wavelet', img, ref, [32], target)
    assert (target - color_fix(img, ref, 'wavelet')[..., :60, :37]).abs().max().item() < 1e-5
    fixer = StreamingColorFix('wavelet', lambda a, b: ref[..., a:b, :], 64, torch.zeros_like(img))
    with pytest.raises(RuntimeError, match='expected row 0'):
        fixer.push(10, 20, img[..., 10:20, :])
    with pytest.raises(RuntimeError, match='rows arrived'):
        fixer.finish()
