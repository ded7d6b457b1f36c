"""Condition encoders of SSR (paper section 3.3): one feature map per UNet level.

* ``SSRLREncoder``: the largest encoder, for the primary modality (the VAE latent of the upsampled
  LR image): a half UNet of input blocks (IB: residual blocks and stride-2 downsampling per level),
  a middle block (MB, with optional self-attention) and a feature-translate block (FTB: one small
  conv head per level that maps encoder features into the feature space the AMF layers expect).
* ``SSRMapEncoder``: the smaller encoder used for the depth map and for the kernel map's PCA code.

Neither encoder sees the diffusion timestep: their outputs (and the AMF modulations computed from
them) are computed once per image and reused at every sampling step, which is what keeps SSR's
sampling overhead over the bare UNet small (scripts/benchmarks/bench_ssr_sampling.py).
Both downsample with stride-2 3x3 convolutions (padding 1), the same size rule as diffusers'
``Downsample2D``, so level ``l`` has the UNet's level-``l`` resolution for any input size.
"""
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY

from ssr_utils.errors import OptionError


def _groups(channels, wanted=32):
    groups = min(wanted, channels)
    while channels % groups:
        groups -= 1
    return groups


def _check_channels(key, channels):
    if not isinstance(channels, (list, tuple)) or not channels or \
            not all(isinstance(c, int) and c > 0 for c in channels):
        raise OptionError(key, channels, 'expected a non-empty list of positive integers')
    return list(channels)


def _level_channels(block_out_channels, out_channels):
    """Checked (widths, output widths) per UNet level; output widths default to the widths."""
    chans = _check_channels('block_out_channels', block_out_channels)
    outs = _check_channels('out_channels', out_channels) if out_channels is not None else list(chans)
    if len(outs) != len(chans):
        raise OptionError('out_channels', out_channels, f'needs {len(chans)} entries (one per level)')
    return chans, outs


class _ResBlock(nn.Module):

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(in_ch), in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, 1, 1),
            nn.GroupNorm(_groups(out_ch), out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, 1, 1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x):
        return self.skip(x) + self.body(x)


class _SelfAttention(nn.Module):

    def __init__(self, channels, heads):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x):
        # nn.MultiheadAttention's weights, but scaled_dot_product_attention for the product: the module's own
        # inference fast path (eval, no grad) materialises the heads × N × N weights on the CPU (torch 2.14:
        # 1 TiB for the 512² latent of a 512² LR input, untiled), which SDPA's fused kernels never do
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        heads = self.attn.num_heads
        q, k, v = (t.reshape(b, h * w, heads, c // heads).transpose(1, 2)
                   for t in F.linear(tokens, self.attn.in_proj_weight, self.attn.in_proj_bias).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        out = self.attn.out_proj(out)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def _translate(in_ch, out_ch):
    return nn.Sequential(nn.Conv2d(in_ch, in_ch, 3, 1, 1), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 1))


@ARCH_REGISTRY.register()
class SSRLREncoder(nn.Module):
    """Half-UNet encoder of the LR latent: IB -> MB -> FTB, one output per level.

    Args:
        in_channels (int): input channels (the VAE's latent channels, 4 for Stable Diffusion).
        block_out_channels (list[int]): encoder width per level (one entry per UNet level).
        out_channels (list[int] | None): output width per level after the FTB (default: same).
        layers_per_block (int): residual blocks per level in the IB.
        mid_attention (bool): self-attention in the MB.
        attention_heads (int): heads of that attention.
    """

    def __init__(self,
                 in_channels=4,
                 block_out_channels=(64, 128, 256, 256),
                 out_channels=None,
                 layers_per_block=1,
                 mid_attention=True,
                 attention_heads=4):
        super().__init__()
        chans, outs = _level_channels(block_out_channels, out_channels)
        if not isinstance(layers_per_block, int) or layers_per_block < 1:
            raise OptionError('layers_per_block', layers_per_block, 'expected an integer >= 1')
        self.out_channels = outs
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, 1, 1)
        self.input_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        prev = chans[0]
        for level, ch in enumerate(chans):
            blocks = []
            for _ in range(layers_per_block):
                blocks.append(_ResBlock(prev, ch))
                prev = ch
            self.input_blocks.append(nn.Sequential(*blocks))
            if level < len(chans) - 1:
                self.downsamplers.append(nn.Conv2d(ch, ch, 3, 2, 1))
        deep = chans[-1]
        mid = [_ResBlock(deep, deep)]
        if mid_attention:
            heads = attention_heads if deep % attention_heads == 0 else 1
            mid.append(_SelfAttention(deep, heads))
        mid.append(_ResBlock(deep, deep))
        self.middle_block = nn.Sequential(*mid)
        self.translate_blocks = nn.ModuleList([_translate(c, o) for c, o in zip(chans, outs)])

    def forward(self, x):
        h = self.conv_in(x)
        skips = []
        for level, block in enumerate(self.input_blocks):
            h = block(h)
            skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
        skips[-1] = self.middle_block(skips[-1])
        return [ftb(s) for ftb, s in zip(self.translate_blocks, skips)]


@ARCH_REGISTRY.register()
class SSRMapEncoder(nn.Module):
    """Small encoder for a dense map (depth: 1 channel; kernel PCA code: L channels).

    Args:
        in_channels (int): input channels.
        block_out_channels (list[int]): width per level (one entry per UNet level).
        out_channels (list[int] | None): output width per level (default: same).
    """

    def __init__(self, in_channels=1, block_out_channels=(32, 64, 64, 64), out_channels=None):
        super().__init__()
        chans, outs = _level_channels(block_out_channels, out_channels)
        if not isinstance(in_channels, int) or in_channels < 1:
            raise OptionError('in_channels', in_channels, 'expected a positive integer')
        self.out_channels = outs
        self.conv_in = nn.Sequential(nn.Conv2d(in_channels, chans[0], 3, 1, 1), nn.SiLU())
        self.levels = nn.ModuleList()
        prev = chans[0]
        for level, ch in enumerate(chans):
            stride = 1 if level == 0 else 2
            self.levels.append(
                nn.Sequential(nn.Conv2d(prev, ch, 3, stride, 1), nn.SiLU(), nn.Conv2d(ch, ch, 3, 1, 1), nn.SiLU()))
            prev = ch
        self.out_convs = nn.ModuleList([nn.Conv2d(c, o, 1) for c, o in zip(chans, outs)])

    def forward(self, x):
        h = self.conv_in(x)
        feats = []
        for block, out_conv in zip(self.levels, self.out_convs):
            h = block(h)
            feats.append(out_conv(h))
        return feats
