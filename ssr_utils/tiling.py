"""Overlapping-tile processing with blended overlaps, for image-space and latent-space networks.

``tiled_apply(fn, x, tile, overlap, context)`` cuts ``x`` (B×C×H×W: an LR image, a latent, an HR
image for a VAE encoder ...) into windows of ``tile``×``tile`` whose neighbours overlap by at least
``overlap``, runs ``fn`` on each window grown by ``context`` pixels on every side where the image
has them (receptive field of a convolutional network; the context part of the output is thrown
away), and blends the outputs with weights that ramp (raised cosine by default) across each overlap,
so that no seam shows. ``fn`` may change the size by any rational factor (×4 SR, ×1/8 VAE encoder,
×8 VAE decoder) and may return a tensor or a dict of tensors with different factors (e.g. the SR
image at HR size and a kernel map at LR size); each factor is read from the first window.

Windows (and the whole input, when it is smaller than one window) are padded on the bottom/right by
reflection to ``multiple`` and to ``min_size`` before ``fn`` and the padding is cropped from the
output, so odd sizes and inputs smaller than a network's minimum work.

Outputs accumulate on ``out_device`` (e.g. the CPU while tiles run on a GPU), so the accelerator
holds one window at a time whatever the input size. Windows run row by row. When an output goes to a
float32 tensor on that device (a canvas, or a caller's tensor such as a view of the output image) the
weighted sums accumulate in that tensor itself and are normalised there as rows finish: blending needs
no memory besides the result. When it goes to a callable that streams finished rows on (e.g. a colour
correction), or to a tensor of another dtype or device, the sums are kept in a band of the rows that
windows still reach (one window row high, the image wide), so the working memory grows with the image
width only (``TiledRunner.buffer_rows`` reports the band's height after a call). After each window
that ran on the CPU the C heap's free pages go back to the system (``compat.release_free_heap``): glibc
keeps them otherwise, and windows of varying shapes leave enough behind to matter.
"""
import math
from fractions import Fraction

import torch
from torch.nn import functional as F
from tqdm import tqdm

from ssr_utils.compat import release_free_heap


def tile_starts(length, tile, overlap, multiple=1):
    """Start offsets of windows of size ``tile`` covering ``[0, length)``, spread evenly so consecutive
    windows overlap by at least ``overlap`` (less at most ``multiple - 1`` when starts are rounded down to
    multiples of ``multiple``). One window at 0 when ``length <= tile``."""
    if tile <= 0:
        raise ValueError(f'tile_starts: tile must be > 0, got {tile}')
    if not 0 <= overlap < tile:
        raise ValueError(f'tile_starts: overlap must be in [0, tile), got overlap={overlap}, tile={tile}')
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    n = max(n, 2)
    last = length - tile
    starts = [(round(i * last / (n - 1)) // multiple) * multiple for i in range(n - 1)] + [last]
    return sorted(set(starts))


def ramp(length, kind='cosine', device=None, dtype=torch.float32):
    """Increasing weights over ``length`` samples, strictly inside (0, 1); ``w + w.flip(0) == 1``."""
    u = (torch.arange(length, device=device, dtype=torch.float64) + 0.5) / length
    if kind == 'cosine':
        w = 0.5 - 0.5 * torch.cos(math.pi * u)
    elif kind == 'linear':
        w = u
    else:
        raise ValueError(f"ramp: unknown window {kind!r} (expected 'cosine' or 'linear')")
    return w.to(dtype)


def window_1d(size, left, right, kind='cosine', device=None):
    """Weights of one window of ``size`` samples that overlaps its neighbours by ``left`` / ``right``."""
    w = torch.ones(size, dtype=torch.float32, device=device)
    if left > 0:
        w[:left] *= ramp(left, kind, device)
    if right > 0:
        w[size - right:] *= ramp(right, kind, device).flip(0)
    return w


def _pad_bottom_right(x, ph, pw):
    if ph == 0 and pw == 0:
        return x
    h, w = x.shape[-2:]
    if ph < h and pw < w:
        return F.pad(x, (0, pw, 0, ph), mode='reflect')
    # reflection needs the pad smaller than the image: reflect what fits, replicate the rest
    rh, rw = min(ph, h - 1), min(pw, w - 1)
    if rh or rw:
        x = F.pad(x, (0, rw, 0, rh), mode='reflect')
    return F.pad(x, (0, pw - rw, 0, ph - rh), mode='replicate')


def pad_to(x, multiple=1, min_size=1):
    """Pad bottom/right (reflect) so H and W are multiples of ``multiple`` and at least ``min_size``.
    Returns the padded tensor and the original (H, W)."""
    h, w = x.shape[-2:]

    def target(n):
        n = max(n, min_size)
        return int(math.ceil(n / multiple) * multiple)

    return _pad_bottom_right(x, target(h) - h, target(w) - w), (h, w)


def _scale_of(out_shape, in_shape, name):
    sh, sw = Fraction(out_shape[-2], in_shape[-2]), Fraction(out_shape[-1], in_shape[-1])
    if sh != sw:
        raise ValueError(f'tiled_apply: output {name!r} is {tuple(out_shape[-2:])} for an input window of '
                         f'{tuple(in_shape[-2:])}: not one scale factor')
    return sh


def _as_int(value, what):
    if value.denominator != 1:
        raise ValueError(f'tiled_apply: {what} = {value} is not a whole number of output pixels; choose tile, '
                         'overlap and context as multiples of the scale denominator')
    return int(value)


class TiledRunner:
    """Cuts, runs and blends (see the module doc). Use ``tiled_apply`` for one call."""

    def __init__(self, tile, overlap=16, context=0, multiple=1, min_size=1, window='cosine', out_device=None,
                 progress=False, desc='tiles', with_window=False):
        if tile is not None and tile <= 0:
            tile = None
        if tile is not None:
            tile = int(math.ceil(tile / multiple) * multiple)
            if overlap >= tile:
                raise ValueError(f'tiled_apply: overlap {overlap} must be smaller than the tile {tile}')
        self.tile, self.overlap, self.context = tile, int(overlap), int(context)
        self.multiple, self.min_size, self.window = int(multiple), int(min_size), window
        self.out_device, self.progress, self.desc = out_device, progress, desc
        # fn(window_input, (y0, y1, x0, x1)) with the context-inclusive window: lets a caller attach
        # per-window state (e.g. diffusion condition features computed once per window)
        self.with_window = with_window
        # output name -> rows of the blending buffer in the last call (0: blended in the destination)
        self.buffer_rows = {}

    def windows(self, h, w):
        """List of ``(y0, y1, x0, x1)`` windows (before context)."""
        th = self.tile if self.tile is not None and h > self.tile else h
        tw = self.tile if self.tile is not None and w > self.tile else w
        ys = tile_starts(h, th, min(self.overlap, th - 1), self.multiple)
        xs = tile_starts(w, tw, min(self.overlap, tw - 1), self.multiple)
        return [(y, y + th, x, x + tw) for y in ys for x in xs], ys, xs, th, tw

    def __call__(self, fn, x, into=None):
        """Run ``fn`` over the windows of ``x`` and blend. ``into`` (optional) maps an output name (``out``
        for a tensor-valued ``fn``) to where its rows go: a tensor (rows and columns beyond its size, i.e.
        padding, are dropped) or a callable ``(row0, row1, rows)`` that receives the finished rows in
        order, top to bottom (``rows`` is a view into the blending band, valid during the call only:
        copy what must be kept). Outputs not named get a canvas of their own. Returns the canvases (a
        callable's entry is None), a tensor when ``fn`` returns one."""
        squeeze = x.dim() == 3
        if squeeze:
            x = x[None]
        h, w = x.shape[-2:]
        wins, ys, xs, th, tw = self.windows(h, w)
        into = dict(into or {})
        bands, scales, dests = {}, {}, {}
        is_dict = None
        by_row = [[win for win in wins if win[0] == y] for y in ys]
        bar = tqdm(total=len(wins), desc=self.desc, disable=not self.progress or len(wins) == 1, leave=False)
        for yi, row in enumerate(by_row):
            for (y0, y1, x0, x1) in row:
                cy0, cy1 = max(0, y0 - self.context), min(h, y1 + self.context)
                cx0, cx1 = max(0, x0 - self.context), min(w, x1 + self.context)
                inp, _ = pad_to(x[..., cy0:cy1, cx0:cx1], self.multiple, self.min_size)
                res = fn(inp, (cy0, cy1, cx0, cx1)) if self.with_window else fn(inp)
                if is_dict is None:
                    is_dict = isinstance(res, dict)
                    for k, v in (res if is_dict else {'out': res}).items():
                        if v is not None:
                            scales[k] = _scale_of(v.shape, inp.shape, k)
                    if not is_dict and set(into) - {'out'}:
                        raise ValueError(f'tiled_apply: into names {sorted(into)} but fn returns one tensor (out)')
                res_d = res if is_dict else {'out': res}
                xi = xs.index(x0)
                left = (xs[xi - 1] + tw - x0) if xi > 0 else 0
                right = (x1 - xs[xi + 1]) if xi + 1 < len(xs) else 0
                top = (ys[yi - 1] + th - y0) if yi > 0 else 0
                bottom = (y1 - ys[yi + 1]) if yi + 1 < len(ys) else 0
                for k, s in scales.items():
                    v = res_d[k]
                    if _scale_of(v.shape, inp.shape, k) != s:
                        raise ValueError(f'tiled_apply: output {k!r} changed its scale between windows')
                    # crop padding, then context
                    oy0, ox0 = _as_int((y0 - cy0) * s, 'context·scale'), _as_int((x0 - cx0) * s, 'context·scale')
                    oh, ow = _as_int((y1 - y0) * s, 'tile·scale'), _as_int((x1 - x0) * s, 'tile·scale')
                    band = bands.get(k)
                    if band is None:
                        lead, dev = tuple(v.shape[:-2]), self._device(v)
                        width, height = _as_int(w * s, 'W·scale'), _as_int(h * s, 'H·scale')
                        dest = dests[k] = self._destination(into.get(k), lead, height, width, dev)
                        band = bands[k] = _Band(lead, width, dev, dest.accumulator(lead, dev, x))
                    py0, py1 = _as_int(y0 * s, 'start·scale'), _as_int(y1 * s, 'end·scale')
                    band.extend_to(py1)
                    wy = window_1d(oh, _as_int(top * s, 'overlap·scale'), _as_int(bottom * s, 'overlap·scale'),
                                   self.window, band.device)
                    wx = window_1d(ow, _as_int(left * s, 'overlap·scale'), _as_int(right * s, 'overlap·scale'),
                                   self.window, band.device)
                    px0 = _as_int(x0 * s, 'start·scale')
                    band.add(py0, px0, v[..., oy0:oy0 + oh, ox0:ox0 + ow], wy, wx, first_in_row=xi == 0,
                             first_row=yi == 0)
                on_cpu = any(v is not None and v.device.type == 'cpu' for v in res_d.values())
                del res, res_d
                if on_cpu:  # CPU windows of varying shapes fragment the C heap (compat.release_free_heap)
                    release_free_heap()
                bar.update(1)
            # rows above the next window row receive nothing more: hand them on and free them
            for k, band in bands.items():
                done = _as_int(ys[yi + 1] * scales[k], 'start·scale') if yi + 1 < len(ys) else band.end
                band.release(done, dests[k].put)
        bar.close()
        self.buffer_rows = {k: band.buffer_rows for k, band in bands.items()}
        result = {k: d.canvas for k, d in dests.items()}
        if squeeze:
            result = {k: (None if v is None else v[0]) for k, v in result.items()}
        return result if is_dict else result['out']

    def _device(self, v):
        return torch.device(self.out_device) if self.out_device is not None else v.device

    @staticmethod
    def _destination(target, lead, height, width, device):
        if target is None:
            target = torch.empty((*lead, height, width), dtype=torch.float32, device=device)
        return _Destination(target)


class _Band:
    """Weighted sums of the output rows that windows still add to (one window row plus the overlap
    from the row above), so that blending costs at most a band of the output, not the whole output.
    The windows form a full grid and each one's weight is a product ``wy(y)·wx(x)``, so the summed
    weight is ``(Σ wy)(y)·(Σ wx)(x)``: two vectors, not a plane.

    With ``target`` (the destination tensor, when it is float32 on the band's device: a canvas or a
    view of the output image) the sums accumulate in the target's own rows, which are zeroed as windows
    first reach them and normalised in place when finished: no band buffer at all, and the result is
    the same to the bit (the same float32 operations on the same values in the same order). Rows and
    columns beyond the target (padding) are dropped as they come. Otherwise (a callable, another dtype
    or device) the sums live in a buffer of one window's height, allocated once and reused: finished
    rows are handed out and the overlap rows moved to the top."""

    def __init__(self, lead, width, device, target=None):
        self.lead, self.width, self.device = tuple(lead), int(width), device
        self.target = target
        self.start = self.end = 0
        self.acc = None if target is not None else torch.zeros(
            (*self.lead, 0, self.width), dtype=torch.float32, device=device)
        self.row_weight = torch.zeros(0, dtype=torch.float32, device=device)
        self.col_weight = torch.zeros(self.width, dtype=torch.float32, device=device)

    @property
    def buffer_rows(self):
        """Rows of the band's own buffer (0 when the sums accumulate in the target)."""
        return 0 if self.acc is None else self.acc.shape[-2]

    def extend_to(self, end):
        need = end - self.start
        if need > self.row_weight.shape[0]:
            row_weight = self.row_weight.new_zeros(need)
            used = self.end - self.start
            row_weight[:used] = self.row_weight[:used]
            self.row_weight = row_weight
            if self.acc is not None:
                acc = self.acc.new_zeros((*self.lead, need, self.width))
                acc[..., :used, :] = self.acc[..., :used, :]
                self.acc = acc
        if self.target is not None and end > self.end:
            rows, cols = self.target.shape[-2:]
            if min(end, rows) > self.end:
                self.target[..., self.end:min(end, rows), :min(self.width, cols)].zero_()
        self.end = max(self.end, end)

    def add(self, row0, col0, piece, wy, wx, first_in_row, first_row):
        oh, ow = wy.shape[0], wx.shape[0]
        r = row0 - self.start
        if r < 0:
            raise RuntimeError('tiled_apply: a window reached rows that were already finished')
        piece = piece.to(device=self.device, dtype=torch.float32)
        weight = wy[:, None] * wx[None, :]
        if self.target is None:
            self.acc[..., r:r + oh, col0:col0 + ow].addcmul_(piece, weight)
        else:
            rows, cols = self.target.shape[-2:]
            nh, nw = min(oh, rows - row0), min(ow, cols - col0)
            if nh > 0 and nw > 0:
                self.target[..., row0:row0 + nh, col0:col0 + nw].addcmul_(piece[..., :nh, :nw], weight[:nh, :nw])
        if first_in_row:
            self.row_weight[r:r + oh] += wy
        if first_row:
            self.col_weight[col0:col0 + ow] += wx

    def release(self, row, put):
        """Normalises rows ``[start, row)`` in place and calls ``put(start, row, rows)`` with them (a view
        into the band, valid during the call only); keeps the rest. With a target the rows are
        normalised where they are and ``put`` is not called."""
        n = row - self.start
        if n <= 0:
            return
        if self.target is None:
            rows = self.acc[..., :n, :]
            rows.div_(self.row_weight[:n, None]).div_(self.col_weight)
            put(self.start, row, rows)
        else:
            last, cols = min(row, self.target.shape[-2]), min(self.width, self.target.shape[-1])
            if last > self.start:
                rows = self.target[..., self.start:last, :cols]
                rows.div_(self.row_weight[:last - self.start, None]).div_(self.col_weight[:cols])
        left = self.end - row
        if left > 0:
            if self.acc is not None:
                self.acc[..., :left, :] = self.acc[..., n:n + left, :].clone()
            self.row_weight[:left] = self.row_weight[n:n + left].clone()
        if self.acc is not None:
            self.acc[..., left:, :].zero_()
        self.row_weight[left:].zero_()
        self.start = row


class _Destination:
    """Where finished rows of one output go: a tensor (cropped to its size) or a callable."""

    def __init__(self, target):
        self.target = target
        self.canvas = None if callable(target) else target

    def accumulator(self, lead, device, source):
        """The target itself when the blending sums can accumulate in it (see ``_Band``): a float32 tensor
        on ``device`` with leading dims ``lead`` that shares no memory with the input ``source`` (its rows
        are zeroed while later windows may still read the input). None otherwise."""
        t = self.target
        if callable(t) or t.dtype != torch.float32 or t.device != torch.device(device) or tuple(t.shape[:-2]) != lead:
            return None
        if t.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
            return None
        return t

    def put(self, r0, r1, rows):
        if callable(self.target):
            self.target(r0, r1, rows)
            return
        t = self.target
        r1 = min(r1, t.shape[-2])
        if r1 > r0:
            cols = min(rows.shape[-1], t.shape[-1])
            t[..., r0:r1, :cols] = rows[..., :r1 - r0, :cols].to(device=t.device, dtype=t.dtype)


def tiled_apply(fn, x, tile, overlap=16, context=0, multiple=1, min_size=1, window='cosine', out_device=None,
                progress=False, desc='tiles', into=None):
    """Run ``fn`` over overlapping windows of ``x`` and blend (see the module doc).

    Args:
        fn: window (B×C×h×w) -> tensor or dict of tensors, each B×C'×(h·s)×(w·s) for a rational s.
        x: B×C×H×W (or C×H×W).
        tile: window size in input pixels (rounded up to ``multiple``); None or <= 0: one window.
        overlap: minimum overlap of neighbouring windows, in input pixels.
        context: extra input pixels on every side given to ``fn`` and cropped from its output.
        multiple, min_size: every input to ``fn`` is padded (reflect) to these; outputs are cropped back.
        window: ``cosine`` (raised cosine) or ``linear`` blending ramps.
        out_device: where the blended outputs accumulate (default: that of ``fn``'s outputs).
        into: name -> tensor to write the rows into, or callable receiving finished rows (``TiledRunner``).
    """
    return TiledRunner(tile, overlap, context, multiple, min_size, window, out_device, progress, desc)(fn, x, into)
