"""Tiled encoding and decoding with a diffusers ``AutoencoderKL``, every GroupNorm on whole-image statistics.

Why not simply run the VAE tile by tile: each ``GroupNorm`` would then normalise with the mean and
variance of its own tile, so neighbouring tiles come out in different tones (overlap blending only smears
the seam). Nor is one statistics pass enough: the input of every GroupNorm depends on the statistics of
all GroupNorms before it (about 30 in a row in Stable Diffusion's decoder), so a pass that collects them
all at once collects them from wrongly normalised activations (measured: it diverges).

What this module does instead is run the network **one layer group at a time over the whole image**, in
tiles. The forward of diffusers' ``Encoder`` / ``Decoder`` is cut at every GroupNorm into steps (a step is
GroupNorm → SiLU → one convolution, plus the residual add that closes a ResNet block; or an upsampler, a
downsampler, the attention). A step runs tile by tile: the tile's window is read from the step's input
(the tile's core plus the few pixels of context its one convolution needs, taken from the neighbours,
so the result is exact, not approximated by a wide margin), and its output core is written to the step's
output. While outputs are written, per-channel sums and sums of squares are accumulated (float64); the
next step's GroupNorm turns them into the whole image's per-group mean and variance before it runs,
exactly what the untiled GroupNorm computes. The middle block's self-attention attends over all
positions, streamed: keys and values are written per tile, and each query tile runs an online softmax
over key tiles (the flash-attention recurrence), so no H·W × H·W matrix exists.

The intermediate activations of image size live in an :class:`ActivationStore`, not on the compute
device: in memory (``store='memory'``, on ``store_device``: the host for a GPU run, so GPU memory holds
one tile window whatever the image size) or in a temporary file (``store='disk'``, so that the process's
own memory stays flat too; the operating system's page cache may still hold the file). The result equals
the untiled network up to floating-point summation order (checked by ``tests/test_tiled_vae.py`` and
``scripts/benchmarks/bench_tiled_vae.py``).

Supported: diffusers' ``Encoder`` / ``Decoder`` of ``AutoencoderKL`` (``DownEncoderBlock2D``,
``UpDecoderBlock2D``, ``UNetMidBlock2D`` with or without attention, ``ResnetBlock2D`` without time
embedding, ``Downsample2D`` / ``Upsample2D`` with convolutions); anything else is refused by name.

Public API (no model class of this project is imported):

* ``tiled_decode(vae, latents, tile_size=64, ...)`` -> image tensor, what ``vae.decode(latents).sample``
  returns (latents already divided by the scaling factor); ``out=`` takes a tensor or a callable
  ``(row0, row1, rows)`` that receives finished output rows top to bottom (e.g. a streaming colour fix).
* ``tiled_encode(vae, images, tile_size=512, ...)`` -> ``DiagonalGaussianDistribution``, what
  ``vae.encode(images).latent_dist`` returns.
* ``ActivationStore``, ``tile_grid``.
"""
import math
import os
import shutil
import tempfile
from fractions import Fraction

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

STORES = ('memory', 'disk')

# the working memory a store may take before ``choose_store`` puts it on disk: this share of the memory
# the system reports available (MemAvailable)
AUTO_STORE_SHARE = 0.5

# the middle block's attention: keys and values of the whole image up to this size (both together) go to the
# compute device at once and every query tile runs one fused scaled_dot_product_attention over them (no score
# matrix in memory, no Python loop over bands: the CPU time of the layer-wise VAE at 512² output was mostly this
# attention, docs/inference.md); larger ones stream in bands of ATTENTION_KEY_CHUNK tokens with the online
# softmax, so the device never holds more than a band
ATTENTION_KV_BYTES = 256 * 2**20
ATTENTION_KEY_CHUNK = 4096


def available_memory_bytes():
    """The memory the system can give without swapping (Linux: ``MemAvailable`` of /proc/meminfo), or None where
    it cannot be read."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def layerwise_store_bytes(vae, height, width, batch=1, part='decoder', element_size=4):
    """About the most a store holds when ``part`` (``encoder`` / ``decoder``) of ``vae`` runs over an image of
    ``height × width`` output (decoder) or input (encoder) pixels: the input and output of one step at full
    resolution plus a residual, i.e. (2·C₀ + C₁) channels of that size (C₀, C₁: the VAE's first two widths; for
    SD's decoder the 256-channel input and 128-channel output of its last up block)."""
    widths = list(vae.config.block_out_channels)
    channels = 2 * widths[0] + (widths[1] if len(widths) > 1 else widths[0])
    return int(batch) * channels * int(height) * int(width) * int(element_size)


def choose_store(nbytes, available=None):
    """``memory`` when ``nbytes`` fit in ``AUTO_STORE_SHARE`` of the available memory (or when that is unknown),
    else ``disk``."""
    available = available_memory_bytes() if available is None else available
    if available is None or nbytes <= AUTO_STORE_SHARE * available:
        return 'memory'
    return 'disk'


class TileWindow:
    """One tile of the base grid: its core ``(y0, y1, x0, x1)`` in base pixels (latent pixels for
    decoding, image pixels for encoding)."""

    __slots__ = ('core', )

    def __init__(self, core):
        self.core = tuple(core)

    def __repr__(self):
        return f'TileWindow(core={self.core})'


def tile_grid(height, width, tile, multiple=1):
    """Tiles whose cores partition ``height × width``, as rows (top to bottom) of :class:`TileWindow`.

    Cores are about ``tile`` × ``tile``, spread evenly (no sliver at the end), with edges on multiples of
    ``multiple``."""
    if tile <= 0 or tile % multiple:
        raise ValueError(f'tile_grid: tile must be a positive multiple of {multiple}, got {tile}')

    def cuts(length):
        n = max(1, math.ceil(length / tile))
        edges = [min(length, (round(i * length / n) // multiple) * multiple) for i in range(n)] + [length]
        return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    return [[TileWindow((y0, y1, x0, x1)) for x0, x1 in cuts(width)] for y0, y1 in cuts(height)]


# ------------------------------------------------------------------------------------------ storage
class ActivationStore:
    """Image-size intermediate tensors (B×C×H×W) of a tiled run, written and read by windows.

    ``kind='memory'``: tensors on ``device`` (default CPU). ``kind='disk'``: one file per tensor in a
    temporary folder under ``folder`` (channels-last rows, read and written with ``pread``/``pwrite``,
    never memory-mapped, so they do not count in the process's resident memory). ``close()`` (or
    ``with``) deletes the files.
    """

    def __init__(self, kind='memory', device='cpu', folder=None):
        if kind not in STORES:
            raise ValueError(f'ActivationStore: kind must be one of {STORES}, got {kind!r}')
        self.kind = kind
        self.device = torch.device(device)
        self.tensors = {}
        self._serial = 0
        self.folder = tempfile.mkdtemp(prefix='ssr_tiled_vae_', dir=folder) if kind == 'disk' else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def create(self, name, shape, dtype):
        self.delete(name)
        if self.kind == 'memory':
            self.tensors[name] = torch.empty(shape, dtype=dtype, device=self.device)
        else:
            self._serial += 1
            path = os.path.join(self.folder, f'{self._serial:05d}.bin')
            itemsize = torch.empty((), dtype=dtype).element_size()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fd, int(np.prod(shape)) * itemsize)
            self.tensors[name] = (fd, path, tuple(shape), dtype, itemsize)

    def shape(self, name):
        t = self.tensors[name]
        return tuple(t.shape) if torch.is_tensor(t) else t[2]

    def dtype(self, name):
        t = self.tensors[name]
        return t.dtype if torch.is_tensor(t) else t[3]

    def __contains__(self, name):
        return name in self.tensors

    def read(self, name, y0, y1, x0, x1):
        t = self.tensors[name]
        if torch.is_tensor(t):
            return t[..., y0:y1, x0:x1]
        fd, _, (b, c, h, w), dtype, itemsize = t
        rows = np.empty((b, y1 - y0, (x1 - x0) * c * itemsize), np.uint8)
        for bi in range(b):
            for y in range(y0, y1):
                offset = (((bi * h + y) * w) + x0) * c * itemsize
                got = os.preadv(fd, [memoryview(rows[bi, y - y0])], offset)
                if got != rows.shape[-1]:
                    raise OSError(f'ActivationStore: short read from {t[1]}')
        out = torch.from_numpy(rows).view(dtype).reshape(b, y1 - y0, x1 - x0, c)
        return out.permute(0, 3, 1, 2)

    def write(self, name, y0, x0, value):
        t = self.tensors[name]
        if torch.is_tensor(t):
            t[..., y0:y0 + value.shape[-2], x0:x0 + value.shape[-1]] = value.to(t.device, t.dtype)
            return
        fd, _, (b, c, h, w), dtype, itemsize = t
        rows = value.to('cpu', dtype).permute(0, 2, 3, 1).contiguous()
        raw = rows.view(torch.uint8).numpy().reshape(b, rows.shape[1], -1)
        for bi in range(b):
            for r in range(rows.shape[1]):
                offset = ((((bi * h) + y0 + r) * w) + x0) * c * itemsize
                if os.pwrite(fd, memoryview(raw[bi, r]), offset) != raw.shape[-1]:
                    raise OSError(f'ActivationStore: short write to {t[1]}')

    def delete(self, name):
        t = self.tensors.pop(name, None)
        if t is not None and not torch.is_tensor(t):
            os.close(t[0])
            os.remove(t[1])

    def rename(self, old, new):
        self.delete(new)
        self.tensors[new] = self.tensors.pop(old)

    def close(self):
        for name in list(self.tensors):
            self.delete(name)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


# ------------------------------------------------------------------------------------------ executor
def _unsupported(module, what):
    raise NotImplementedError(f'tiled VAE: {type(module).__name__} {what} is not supported (diffusers '
                              'AutoencoderKL encoders/decoders are)')


class _LayerwiseTiles:
    """Runs steps over the tiles of a base grid, reading and writing the store (see the module doc).

    Every stored tensor has a resolution factor relative to the base grid (a Fraction) and per-channel
    float64 sums of its values and squares, filled as its tiles are written."""

    def __init__(self, rows, store, device, dtype, progress=False, desc='tiles'):
        self.rows, self.store, self.device, self.dtype = rows, store, device, dtype
        self.factor, self.sums = {}, {}
        self.progress, self.desc = progress, desc

    def add_input(self, name, x):
        self.store.create(name, tuple(x.shape), self.dtype)
        for row in self.rows:
            for t in row:
                y0, y1, x0, x1 = t.core
                self.store.write(name, y0, x0, x[..., y0:y1, x0:x1].to(self.dtype))
        self.factor[name] = Fraction(1)

    def core_box(self, t, factor):
        """Tile ``t``'s core ``[y0, y1, x0, x1]`` in the pixels of a tensor at ``factor`` × the input's size."""
        y0, y1, x0, x1 = t.core
        vals = [y0 * factor, y1 * factor, x0 * factor, x1 * factor]
        if any(v.denominator != 1 for v in vals):
            raise ValueError(f'tiled VAE: tile core {t.core} does not fall on whole pixels at scale {factor}')
        return [int(v) for v in vals]

    def _accumulate(self, name, value):
        v = value.float()
        s1 = v.sum(dim=(2, 3)).double()
        s2 = torch.linalg.vector_norm(v, ord=2, dim=(2, 3)).double().square()
        acc = self.sums.get(name)
        if acc is None:
            self.sums[name] = [s1, s2]
        else:
            acc[0] += s1
            acc[1] += s2

    def norm_affine(self, name, norm):
        """Per (batch, channel) scale and shift of ``norm`` (an nn.GroupNorm) over the whole tensor."""
        s1, s2 = self.sums[name]
        b, c = s1.shape
        if c % norm.num_groups:
            raise ValueError(f'tiled VAE: {c} channels do not split into {norm.num_groups} groups')
        h, w = self.store.shape(name)[-2:]
        per = c // norm.num_groups
        n = per * h * w
        mean = s1.reshape(b, norm.num_groups, per).sum(-1) / n
        var = (s2.reshape(b, norm.num_groups, per).sum(-1) / n - mean * mean).clamp_min(0.0)
        rstd = (var + norm.eps).rsqrt()
        scale = rstd.repeat_interleave(per, dim=1)
        shift = -(mean * rstd).repeat_interleave(per, dim=1)
        if norm.affine:
            weight = norm.weight.detach().double().to(scale.device)
            scale = scale * weight
            shift = shift * weight + norm.bias.detach().double().to(shift.device)
        return scale.float()[:, :, None, None], shift.float()[:, :, None, None]

    def _normalise(self, x, affine):
        scale, shift = affine
        return torch.addcmul(shift, x.float(), scale).to(x.dtype)

    def spatial(self, src, dst, fn, halo, ratio=Fraction(1), norm=None, residual=None, residual_fn=None,
                out_scale=1.0, sink=None, keep_src=False):
        """One step: ``dst = fn(norm(src window))`` cropped to the core, ``(+ residual_fn(residual core)) /
        out_scale``. ``ratio``: output resolution over input; ``halo``: input pixels of context.
        ``sink(row_cores)``: instead of storing, hand each finished row of tiles on (the last step)."""
        f_in = self.factor[src]
        f_out = f_in * ratio
        h_in, w_in = self.store.shape(src)[-2:]
        affine = self.norm_affine(src, norm) if norm is not None else None
        tmp = f'{dst}.new'
        created = False
        self.sums.pop(tmp, None)
        if residual == dst:  # may be overwritten in place (below): its sums start again
            self.sums.pop(dst, None)
        for row in self.rows:
            pieces = []
            for t in row:
                cy0, cy1, cx0, cx1 = self.core_box(t, f_in)
                wy0, wy1 = max(0, cy0 - halo), min(h_in, cy1 + halo)
                wx0, wx1 = max(0, cx0 - halo), min(w_in, cx1 + halo)
                if ratio < 1:  # strided steps: the window must start on the stride grid
                    step = int(1 / ratio)
                    wy0, wx0 = wy0 // step * step, wx0 // step * step
                x = self.store.read(src, wy0, wy1, wx0, wx1).to(self.device, self.dtype)
                if affine is not None:
                    x = self._normalise(x, affine)
                y = fn(x)
                del x
                oy0, oy1, ox0, ox1 = self.core_box(t, f_out)
                ry, rx = oy0 - int(wy0 * ratio), ox0 - int(wx0 * ratio)
                y = y[..., ry:ry + oy1 - oy0, rx:rx + ox1 - ox0]
                if residual is not None:
                    r = self.store.read(residual, *self.core_box(t, self.factor[residual])).to(self.device, self.dtype)
                    if residual_fn is not None:
                        r = residual_fn(r)
                    y = r + y
                if out_scale != 1.0:
                    y = y / out_scale
                if sink is not None:
                    pieces.append((t, y))
                    continue
                if not created:
                    b, c = y.shape[:2]
                    hb, wb = self.store.shape(src)[-2:]
                    shape = (b, c, int(hb * ratio), int(wb * ratio))
                    # the residual is read at the tile's own core only, before the core is written: the
                    # output may overwrite it in place (one image-size tensor less in the store)
                    if residual is not None and residual == dst and self.store.shape(dst) == shape:
                        tmp = dst
                    else:
                        self.store.create(tmp, shape, self.dtype)
                    created = True
                self.store.write(tmp, oy0, ox0, y)
                self._accumulate(tmp, y)
                del y
            if sink is not None:
                sink(pieces, f_out)
        if sink is None:
            if not keep_src and src != residual:
                self.drop(src)
            if tmp != dst:
                self.store.rename(tmp, dst)
            self.sums[dst] = self.sums.pop(tmp)
            self.factor[dst] = f_out

    def drop(self, name):
        self.store.delete(name)
        self.sums.pop(name, None)
        self.factor.pop(name, None)

    def attention(self, src, dst, attn):
        """diffusers' ``Attention`` (self-attention over all positions of ``src``), exact: fused over keys and values
        of the whole image when they fit ``ATTENTION_KV_BYTES``, else streamed in bands."""
        for flag, what in ((attn.spatial_norm, 'spatial_norm'), (attn.norm_q, 'norm_q'), (attn.norm_k, 'norm_k')):
            if flag is not None:
                _unsupported(attn, f'with {what}')
        affine = self.norm_affine(src, attn.group_norm) if attn.group_norm is not None else None
        f = self.factor[src]
        heads = attn.heads

        def tokens(t):
            x = self.store.read(src, *self.core_box(t, f)).to(self.device, self.dtype)
            if affine is not None:
                x = self._normalise(x, affine)
            b, c, h, w = x.shape
            return x.reshape(b, c, h * w).transpose(1, 2), (h, w)

        def split(z):  # B×N×(heads·d) -> B×heads×N×d
            b, n, inner = z.shape
            return z.reshape(b, n, heads, inner // heads).transpose(1, 2)

        # keys and values of every position, stored as B×inner×h×w maps
        for row in self.rows:
            for t in row:
                tok, (h, w) = tokens(t)
                y0, _, x0, _ = self.core_box(t, f)
                for name, proj in (('k', attn.to_k), ('v', attn.to_v)):
                    z = proj(tok)
                    full = f'{dst}.{name}'
                    if full not in self.store:
                        hb, wb = self.store.shape(src)[-2:]
                        self.store.create(full, (z.shape[0], z.shape[-1], hb, wb), self.dtype)
                    self.store.write(full, y0, x0, z.transpose(1, 2).reshape(z.shape[0], z.shape[-1], h, w))
        hb, wb = self.store.shape(src)[-2:]
        band = max(1, ATTENTION_KEY_CHUNK // wb)
        tmp = f'{dst}.new'
        created = False
        self.sums.pop(tmp, None)

        def keys_values(ky0, ky1, dtype):  # B×heads×n×d keys and values of rows ky0:ky1, contiguous: with the
            # head dimension strided (as the stored maps give it) the CPU's SDPA takes its math path, which
            # materialises the query tile × keys scores (2.3 GB of working memory at 512² output, tiny VAE)
            kk = self.store.read(f'{dst}.k', ky0, ky1, 0, wb).to(self.device, self.dtype)
            vv = self.store.read(f'{dst}.v', ky0, ky1, 0, wb).to(self.device, self.dtype)
            b, inner = kk.shape[:2]
            return (split(z.reshape(b, inner, -1).transpose(1, 2)).to(dtype).contiguous() for z in (kk, vv))

        kv_bytes = 2 * math.prod(self.store.shape(f'{dst}.k')) * torch.empty((), dtype=self.dtype).element_size()
        whole = tuple(keys_values(0, hb, self.dtype)) if kv_bytes <= ATTENTION_KV_BYTES else None
        for row in self.rows:
            for t in row:
                tok, (h, w) = tokens(t)
                if whole is not None:
                    out = F.scaled_dot_product_attention(split(attn.to_q(tok)).contiguous(), *whole)  # B×heads×N×d
                else:
                    out = self._online_softmax(split(attn.to_q(tok)).float(), hb, band, keys_values).to(self.dtype)
                out = self._attention_out(attn, out, src, t, h, w)
                y0, _, x0, _ = self.core_box(t, f)
                if not created:
                    self.store.create(tmp, (out.shape[0], out.shape[1], hb, wb), self.dtype)
                    created = True
                self.store.write(tmp, y0, x0, out)
                self._accumulate(tmp, out)
        self.drop(f'{dst}.k')
        self.drop(f'{dst}.v')
        if src != dst:
            self.drop(src)
        self.store.rename(tmp, dst)
        self.sums[dst] = self.sums.pop(tmp)
        self.factor[dst] = f


    @staticmethod
    def _online_softmax(q, rows, band, keys_values):
        """softmax(q kᵀ / √d) v over keys and values read in bands of ``band`` rows (flash attention's recurrence):
        no score matrix larger than one query tile × one band exists."""
        q = q * q.shape[-1] ** -0.5  # what diffusers' AttnProcessor2_0 uses
        m = l = acc = None
        for ky0 in range(0, rows, band):
            kk, vv = keys_values(ky0, min(rows, ky0 + band), torch.float32)
            s = q @ kk.transpose(-1, -2)
            smax = s.amax(dim=-1, keepdim=True)
            m_new = smax if m is None else torch.maximum(m, smax)
            p = torch.exp(s - m_new)
            del s
            pv = p @ vv
            if m is None:
                l, acc = p.sum(-1, keepdim=True), pv
            else:
                corr = torch.exp(m - m_new)
                l = l * corr + p.sum(-1, keepdim=True)
                acc = acc * corr + pv
            m = m_new
            del p, pv, kk, vv
        return acc / l

    def _attention_out(self, attn, out, src, t, h, w):
        """The output projection, residual and rescale of ``attn`` on tile ``t``'s B×heads×N×d attention result."""
        b, heads, n, d = out.shape
        out = out.transpose(1, 2).reshape(b, n, heads * d)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(1, 2).reshape(b, -1, h, w)
        if attn.residual_connection:
            out = out + self.store.read(src, *self.core_box(t, self.factor[src])).to(self.device, self.dtype)
        return out / attn.rescale_output_factor


def _resnet(ex, name, block):
    """diffusers' ``ResnetBlock2D`` as two steps; returns the output's name."""
    if getattr(block, 'time_emb_proj', None) is not None or block.upsample is not None or block.downsample is not None:
        _unsupported(block, 'with a time embedding or an internal up/downsampling')
    if getattr(block, 'time_embedding_norm', 'default') not in ('default', 'group'):
        _unsupported(block, f'with time_embedding_norm {block.time_embedding_norm!r}')
    for norm in (block.norm1, block.norm2):
        if not isinstance(norm, nn.GroupNorm):
            _unsupported(block, f'with a {type(norm).__name__} norm')
    act = block.nonlinearity
    ex.spatial(name, f'{name}.h', lambda x: block.conv1(act(x)), halo=block.conv1.kernel_size[0] // 2,
               norm=block.norm1, keep_src=True)
    ex.spatial(f'{name}.h', name, lambda x: block.conv2(block.dropout(act(x))), halo=block.conv2.kernel_size[0] // 2,
               norm=block.norm2, residual=name, residual_fn=block.conv_shortcut,
               out_scale=float(block.output_scale_factor))
    return name


def _mid(ex, name, mid):
    _resnet(ex, name, mid.resnets[0])
    for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            ex.attention(name, name, attn)
        _resnet(ex, name, resnet)


def _upsample(ex, name, up):
    if getattr(up, 'norm', None) is not None or getattr(up, 'use_conv_transpose', False) or not up.interpolate:
        _unsupported(up, 'with a norm, a transposed convolution or without interpolation')
    conv = up.conv if up.name == 'conv' else up.Conv2d_0
    if not up.use_conv:
        conv = None

    def fn(x):
        x = F.interpolate(x, scale_factor=2.0, mode='nearest')
        return conv(x) if conv is not None else x

    ex.spatial(name, name, fn, halo=1, ratio=Fraction(2))


def _downsample(ex, name, down):
    if getattr(down, 'norm', None) is not None or not down.use_conv:
        _unsupported(down, 'with a norm or without a convolution')
    if tuple(down.conv.stride) != (2, 2):
        _unsupported(down, f'with stride {down.conv.stride}')
    pad = down.padding == 0

    def fn(x):
        if pad:
            x = F.pad(x, (0, 1, 0, 1), mode='constant', value=0)
        return down.conv(x)

    ex.spatial(name, name, fn, halo=2, ratio=Fraction(1, 2))


def _check_vae(vae, part):
    if not hasattr(vae, part):
        raise TypeError(f'tiled VAE: expected a diffusers AutoencoderKL (with .{part}), got {type(vae).__name__}')


def _store_for(store, store_device, device):
    if isinstance(store, ActivationStore):
        return store, False
    if store_device is None:
        store_device = 'cpu'
    return ActivationStore(store, store_device if store == 'memory' else 'cpu'), True


def _compute_device(module, device):
    return torch.device(device) if device is not None else next(module.parameters()).device


@torch.no_grad()
def tiled_decode(vae, latents, tile_size=64, out=None, out_device=None, store='memory', store_device=None,
                 progress=False):
    """Decode ``latents`` (B×C×h×w, already divided by the VAE's scaling factor) tile by tile, equal to
    the untiled ``vae.decode(latents).sample`` (see the module doc).

    Args:
        vae: a diffusers ``AutoencoderKL`` (``post_quant_conv`` and ``decoder`` are used).
        tile_size: tile core in latent pixels (×8 output pixels for SD's VAE); the compute device holds
            one such window (plus a few pixels of context) of one layer at a time.
        out: None (a new tensor is returned), a tensor to write into (B×3×H×W, any device and dtype), or
            a callable ``(row0, row1, rows)`` receiving finished output rows top to bottom (``rows`` is
            B×3×n×W on ``out_device``).
        out_device: device of the returned tensor / the bands handed to ``out`` (default: the latents').
        store: ``memory`` or ``disk`` (an :class:`ActivationStore` instance is also accepted);
            store_device: where a memory store lives (default: CPU).

    Returns the decoded image (B×3×8h×8w, in [-1, 1] for SD), ``out`` when it is a tensor, or None when it
    is a callable.
    """
    _check_vae(vae, 'decoder')
    dec = vae.decoder
    if latents.dim() != 4:
        raise ValueError(f'tiled_decode: expected B×C×h×w latents, got shape {tuple(latents.shape)}')
    device = _compute_device(dec, None)
    dtype = next(dec.parameters()).dtype
    out_device = torch.device(out_device) if out_device is not None else latents.device
    b, _, h, w = latents.shape
    factor = 2 ** sum(1 for blk in dec.up_blocks if getattr(blk, 'upsamplers', None))
    rows = tile_grid(h, w, max(1, int(tile_size)))
    store_obj, own = _store_for(store, store_device, device)
    result = None
    if out is None:
        result = torch.empty((b, dec.conv_out.out_channels, h * factor, w * factor), dtype=torch.float32,
                             device=out_device)
        target = result
    else:
        target = out
    try:
        ex = _LayerwiseTiles(rows, store_obj, device, dtype)
        ex.add_input('x', latents)
        post = getattr(vae, 'post_quant_conv', None)
        stages = 3 + len(dec.mid_block.resnets) + sum(len(blk.resnets) + 1 for blk in dec.up_blocks)
        bar = tqdm(total=stages, desc='VAE decode (tiled)', disable=not progress)

        def conv_in(x):
            return dec.conv_in(post(x) if post is not None else x)

        ex.spatial('x', 'x', conv_in, halo=dec.conv_in.kernel_size[0] // 2)
        bar.update()
        _mid(ex, 'x', dec.mid_block)
        bar.update(len(dec.mid_block.resnets))
        for blk in dec.up_blocks:
            for resnet in blk.resnets:
                _resnet(ex, 'x', resnet)
                bar.update()
            for up in (blk.upsamplers or []):
                _upsample(ex, 'x', up)
            bar.update()
        if getattr(dec, 'conv_norm_out', None) is None or not isinstance(dec.conv_norm_out, nn.GroupNorm):
            _unsupported(dec, 'without a GroupNorm conv_norm_out (e.g. a SpatialNorm decoder)')

        def sink(pieces, f_out):
            oy0, oy1 = ex.core_box(pieces[0][0], f_out)[:2]
            band = torch.empty((b, pieces[0][1].shape[1], oy1 - oy0, w * factor), dtype=torch.float32,
                               device=out_device)
            for t, y in pieces:
                _, _, ox0, ox1 = ex.core_box(t, f_out)
                band[..., ox0:ox1] = y.to(out_device, torch.float32)
            if callable(target):
                target(oy0, oy1, band)
            else:
                target[..., oy0:oy1, :] = band.to(target.device, target.dtype)

        ex.spatial('x', 'out', lambda x: dec.conv_out(dec.conv_act(x)), halo=dec.conv_out.kernel_size[0] // 2,
                   norm=dec.conv_norm_out, sink=sink)
        bar.update()
        bar.close()
    finally:
        if own:
            store_obj.close()
    if out is None:
        return result
    return out if torch.is_tensor(out) else None


@torch.no_grad()
def tiled_encode(vae, images, tile_size=512, out_device=None, store='memory', store_device=None, progress=False):
    """Encode ``images`` (B×3×H×W in [-1, 1]; H, W multiples of the VAE's factor, 8 for SD) tile by tile,
    equal to the untiled ``vae.encode(images).latent_dist``. ``tile_size``: tile core in image pixels
    (rounded to the factor); ``store`` / ``store_device`` as in :func:`tiled_decode`.

    Returns a diffusers ``DiagonalGaussianDistribution``.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    _check_vae(vae, 'encoder')
    enc = vae.encoder
    if images.dim() != 4:
        raise ValueError(f'tiled_encode: expected B×3×H×W images, got shape {tuple(images.shape)}')
    device = _compute_device(enc, None)
    dtype = next(enc.parameters()).dtype
    out_device = torch.device(out_device) if out_device is not None else images.device
    b, _, h, w = images.shape
    factor = 2 ** sum(1 for blk in enc.down_blocks if getattr(blk, 'downsamplers', None))
    if h % factor or w % factor:
        raise ValueError(f'tiled_encode: image size {h}×{w} must be a multiple of {factor}')
    tile = max(factor, int(tile_size) // factor * factor)
    rows = tile_grid(h, w, tile, factor)
    store_obj, own = _store_for(store, store_device, device)
    moments = torch.empty((b, 0, h // factor, w // factor), device=out_device)
    quant = getattr(vae, 'quant_conv', None)
    try:
        ex = _LayerwiseTiles(rows, store_obj, device, dtype)
        ex.add_input('x', images)
        bar = tqdm(total=len(enc.down_blocks) + 2, desc='VAE encode (tiled)', disable=not progress)
        ex.spatial('x', 'x', enc.conv_in, halo=enc.conv_in.kernel_size[0] // 2)
        for blk in enc.down_blocks:
            for resnet in blk.resnets:
                _resnet(ex, 'x', resnet)
            for down in (blk.downsamplers or []):
                _downsample(ex, 'x', down)
            bar.update()
        _mid(ex, 'x', enc.mid_block)
        bar.update()

        def conv_out(x):
            y = enc.conv_out(enc.conv_act(x))
            return quant(y) if quant is not None else y

        def sink(pieces, f_out):
            nonlocal moments
            for t, y in pieces:
                if moments.shape[1] != y.shape[1]:
                    moments = torch.empty((b, y.shape[1], h // factor, w // factor), dtype=torch.float32,
                                          device=out_device)
                oy0, oy1, ox0, ox1 = ex.core_box(t, f_out)
                moments[..., oy0:oy1, ox0:ox1] = y.to(out_device, torch.float32)

        ex.spatial('x', 'out', conv_out, halo=enc.conv_out.kernel_size[0] // 2, norm=enc.conv_norm_out, sink=sink)
        bar.update()
        bar.close()
    finally:
        if own:
            store_obj.close()
    return DiagonalGaussianDistribution(moments)
