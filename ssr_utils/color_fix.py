"""Colour correction of a diffusion SR result against the (upsampled) LR input, as in StableSR.

* ``adain_color_fix``: per image and channel, give the result the mean and standard deviation of the
  reference.
* ``wavelet_color_fix``: keep the result's high frequencies and take the low-frequency band from the
  reference (an a-trous decomposition with a 3x3 binomial kernel and dilations 1, 2, 4, ...).

Both take B x 3 x H x W RGB tensors in [0, 1] of the same size and return the same.
"""
import torch
from torch.nn import functional as F


def adain_color_fix(img, ref, eps=1e-5):
    if img.shape != ref.shape:
        raise ValueError(f'adain_color_fix: image {tuple(img.shape)} and reference {tuple(ref.shape)} differ')
    mean_i, std_i = img.mean((2, 3), keepdim=True), img.std((2, 3), keepdim=True)
    mean_r, std_r = ref.mean((2, 3), keepdim=True), ref.std((2, 3), keepdim=True)
    return ((img - mean_i) / (std_i + eps) * std_r + mean_r).clamp(0, 1)


def _blur(img, dilation):
    k1 = torch.tensor([1., 2., 1.], dtype=img.dtype, device=img.device) / 4
    kernel = (k1[:, None] * k1[None, :]).expand(img.shape[1], 1, 3, 3)
    pad = dilation
    mode = 'reflect' if min(img.shape[-2:]) > pad else 'replicate'
    img = F.pad(img, (pad, pad, pad, pad), mode=mode)
    return F.conv2d(img, kernel, groups=img.shape[1], dilation=dilation)


def wavelet_decompose(img, levels=5):
    """``(high, low)`` with ``high + low == img``."""
    high = torch.zeros_like(img)
    low = img
    for i in range(levels):
        blurred = _blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(img, ref, levels=5):
    if img.shape != ref.shape:
        raise ValueError(f'wavelet_color_fix: image {tuple(img.shape)} and reference {tuple(ref.shape)} differ')
    high, _ = wavelet_decompose(img, levels)
    _, low_ref = wavelet_decompose(ref, levels)
    return (high + low_ref).clamp(0, 1)


def color_fix(img, ref, method):
    """``method``: ``adain``, ``wavelet`` or ``none`` / None."""
    if method in (None, 'none'):
        return img
    if method == 'adain':
        return adain_color_fix(img, ref)
    if method == 'wavelet':
        return wavelet_color_fix(img, ref)
    from ssr_utils.errors import OptionError
    raise OptionError('color_fix', method, 'expected adain, wavelet or none')


class StreamingColorFix:
    """``color_fix`` for an image that arrives as row bands, top to bottom (``push``), written into
    ``target`` (B×3×H'×W', H' and W' at most the image's: rows and columns beyond are dropped), so that
    the whole image is never held twice. Same result as ``color_fix`` on the whole image:

    * ``wavelet``: the decomposition only reaches ``2**levels - 1`` rows away, so each row is corrected
      once that many rows below it have arrived, from a buffer of those rows and the reference rows
      ``ref_rows(row0, row1)`` (the reference is made band by band too);
    * ``adain``: the statistics are global: rows go to ``target`` as they come, the image and reference
      moments are summed on the way, and ``finish`` rescales ``target`` in place.
    """

    def __init__(self, method, ref_rows, height, target, levels=5, chunk_rows=256):
        if method not in (None, 'none', 'adain', 'wavelet'):
            from ssr_utils.errors import OptionError
            raise OptionError('color_fix', method, 'expected adain, wavelet or none')
        self.method = 'none' if method is None else method
        self.ref_rows, self.height, self.target = ref_rows, int(height), target
        self.levels, self.chunk_rows = levels, chunk_rows
        self.margin = 2**levels - 1
        self.buffer, self.buf_start, self.done, self.received = None, 0, 0, 0
        self.sums, self.count = None, 0

    def _write(self, r0, rows):
        t = self.target
        r1 = min(r0 + rows.shape[-2], t.shape[-2])
        if r1 > r0:
            cols = min(rows.shape[-1], t.shape[-1])
            t[..., r0:r1, :cols] = rows[..., :r1 - r0, :cols].to(device=t.device, dtype=t.dtype)

    def push(self, r0, r1, rows):
        if r0 != self.received:
            raise RuntimeError(f'StreamingColorFix: rows {r0}..{r1} arrived, expected row {self.received} next')
        self.received = r1
        if self.method == 'none':
            self._write(r0, rows)
            self.done = r1
            return
        if self.method == 'adain':
            self._moments(rows, self.ref_rows(r0, r1))
            self._write(r0, rows)
            self.done = r1
            return
        # rows may be a view into the producer's buffer: cat / clone copy them
        self.buffer = rows.clone() if self.buffer is None else torch.cat([self.buffer, rows], dim=-2)
        self._flush(final=r1 >= self.height)

    def _flush(self, final):
        buf_end = self.buf_start + self.buffer.shape[-2]
        ready = self.height if final else buf_end - self.margin
        if ready <= self.done:
            return
        a, b = self.buf_start, buf_end
        fixed = wavelet_color_fix(self.buffer, self.ref_rows(a, b).to(self.buffer), self.levels)
        self._write(self.done, fixed[..., self.done - a:ready - a, :])
        self.done = ready
        keep = max(self.buf_start, ready - self.margin)
        self.buffer = self.buffer[..., keep - self.buf_start:, :].clone()
        self.buf_start = keep

    def _moments(self, img, ref):
        parts = [x.double().sum((2, 3)) for x in (img, img * img, ref, ref * ref)]
        self.sums = parts if self.sums is None else [s + p for s, p in zip(self.sums, parts)]
        self.count += img.shape[-2] * img.shape[-1]

    def finish(self, eps=1e-5):
        """Completes the correction once every row has arrived; returns ``target``."""
        if self.done < self.height:
            raise RuntimeError(f'StreamingColorFix: only {self.done} of {self.height} rows arrived')
        if self.method != 'adain':
            return self.target
        n = float(self.count)
        s_i, ss_i, s_r, ss_r = self.sums
        mean_i, mean_r = s_i / n, s_r / n
        # unbiased, as torch.std in adain_color_fix
        std_i = ((ss_i - n * mean_i**2).clamp_min(0) / (n - 1)).sqrt()
        std_r = ((ss_r - n * mean_r**2).clamp_min(0) / (n - 1)).sqrt()
        gain = (std_r / (std_i + eps)).float()[..., None, None]
        shift = (mean_r - mean_i * std_r / (std_i + eps)).float()[..., None, None]
        t = self.target
        for r in range(0, t.shape[-2], self.chunk_rows):
            rows = t[..., r:r + self.chunk_rows, :]
            rows.copy_((rows * gain.to(t.device) + shift.to(t.device)).clamp_(0, 1))
        return t
