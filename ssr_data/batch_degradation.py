"""Degradations synthesised batch-wise on the training device (``degrade_on: model``).

With ``degrade_on: model`` :class:`ssr_data.ssr_degradation_dataset.SSRDegradationDataset` returns the HR
crop, its depth and the numbers of the sample's degradation, drawn per sample with the sample's own rng
exactly as the per-sample path draws them (:meth:`ssr_data.degradations.SVDegradation.draw_params`):
the per-LR-pixel kernel parameters ``(σ_major, σ_minor, θ)``, the noise level, grey-noise flag, Poisson
scale, JPEG quality and a seed for the noise field. :class:`BatchDegradation` turns a collated batch of
those into the training batch on the training device: the kernel maps, the spatially variant blur +
subsampling, the noise and the JPEG round trip of every sample at once.

The model side is one call at the top of ``feed_data`` (docs/degradations.md, "Degradation on the
training device")::

    data = maybe_degrade_batch(data, self.device)

which returns batches without the :data:`DEGRADATION_KEY` entry unchanged, so the same model trains on
``degrade_on: dataset`` batches, paired sets and validation sets alike. The batch carries everything the
synthesis needs (the numbers and the synthesis options as JSON), so nothing has to agree between the
model's and the dataset's option files.
"""
import json
from contextlib import contextmanager

import torch

from ssr_data import kernels as K
from ssr_data.degradations import jpeg_compress, quantize, sv_blur_downsample
from ssr_data.jpeg_sim import simulate_jpeg
from ssr_utils.errors import OptionError
from ssr_utils.huge_pages import empty_on_huge_pages

DEGRADE_ON = ('dataset', 'model')
JPEG_BACKENDS = ('opencv', 'torch')
# entry of a sample / batch that holds the degradation numbers (degrade_on: model)
DEGRADATION_KEY = 'degradation'
# options the synthesis needs; every other degradation option acts through the per-sample numbers
SYNTHESIS_KEYS = ('scale', 'kernel_size', 'return_kernel', 'jpeg_backend')
# LR pixels blurred per group on CPU: enough crops to share each tap's call, few enough that their kernels
# stay near the cache (measured with k = 21 and batches of 16: 8 crops of 32², 3-4 of 48², 2 of 64²)
_CPU_KERNEL_PIXELS = 8192


def _whole_batch_at_once(device):
    """Accelerators take the batch in one go (few large launches); CPUs in cache-sized groups."""
    return device.type != 'cpu'


@contextmanager
def _one_cpu_thread(device):
    """CPU synthesis runs on one thread: it shares the cores with the DataLoader workers, and with busy cores
    every intra-op OpenMP fork/join waits for a descheduled thread (measured on the 2-core development
    machine with 4 workers: a batch of 16 192-px crops took 2.0 s with 2 threads, 0.4 s with one)."""
    if device.type != 'cpu':
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_degrade_on(opt):
    value = opt.get('degrade_on', 'dataset')
    if value not in DEGRADE_ON:
        raise OptionError('degrade_on', value, f'expected one of {", ".join(DEGRADE_ON)}')
    return value


class BatchDegradation:
    """Applies collated degradation numbers to a batch of HR crops on one device.

    Args:
        opt (dict): the dataset's option dict (``scale``, ``kernel_size`` (21), ``return_kernel`` (true),
            ``jpeg_backend``: ``opencv`` (default; libjpeg-turbo per sample on the CPU, exactly the
            per-sample path's JPEG) or ``torch`` (:func:`ssr_data.jpeg_sim.simulate_jpeg`, batched on
            the device)).
    """

    def __init__(self, opt):
        self.scale = opt.get('scale', 4)
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise OptionError('scale', self.scale, 'expected a positive integer')
        self.kernel_size = K.check_kernel_size(opt.get('kernel_size', 21))
        self.return_kernel = bool(opt.get('return_kernel', True))
        self.jpeg_backend = opt.get('jpeg_backend', 'opencv')
        if self.jpeg_backend not in JPEG_BACKENDS:
            raise OptionError('jpeg_backend', self.jpeg_backend, f'expected one of {", ".join(JPEG_BACKENDS)}')

    def options(self):
        """The synthesis options as a JSON string (what a sample carries, see :meth:`from_batch`)."""
        return json.dumps({key: getattr(self, key) for key in SYNTHESIS_KEYS}, sort_keys=True)

    @classmethod
    def from_batch(cls, batch):
        """The synthesis a collated batch asks for (``batch[DEGRADATION_KEY]['options']``)."""
        options = batch[DEGRADATION_KEY]['options']
        options = [options] if isinstance(options, str) else list(options)
        if len(set(options)) != 1:
            raise ValueError(f'a batch mixes samples of different degradation options: {sorted(set(options))}')
        return cls(json.loads(options[0]))

    # ------------------------------------------------------------------------------------------ stages
    def _kernels_and_blur(self, gt, kernel_params, keep_kernels):
        """Kernel maps (B×k²×h×w, or None) and the clamped blurred, subsampled LR (B×3×h×w).

        The kernels are those of the per-sample path, bit for bit on the same device (the same function on
        the same float32 numbers). On accelerators the whole batch in one go. On CPU, groups of about
        :data:`_CPU_KERNEL_PIXELS` LR pixels: each crop's kernels are written straight into its slice of the
        map (no copy) and the group is blurred while they are still in cache.
        """
        b, c, hh, ww = gt.shape
        s, k = self.scale, self.kernel_size
        h, w = hh // s, ww // s
        if tuple(kernel_params.shape) != (b, 3, h, w):
            raise ValueError(f'kernel_params {tuple(kernel_params.shape)} do not match the LR grid {b}×3×{h}×{w} of '
                             f'HR {tuple(gt.shape)} at scale {s}')
        if _whole_batch_at_once(gt.device):
            kmap = K.kernel_taps(kernel_params[:, 0], kernel_params[:, 1], kernel_params[:, 2], k).transpose(0, 1)
            lq = sv_blur_downsample(gt, kmap, s)
            return (kmap.contiguous() if keep_kernels else None), lq.clamp_(0, 1)
        group = max(1, min(b, _CPU_KERNEL_PIXELS // (h * w)))
        kmap = empty_on_huge_pages((b if keep_kernels else group, k * k, h, w), gt)
        lq = gt.new_empty((b, c, h, w))
        for g0 in range(0, b, group):
            g1 = min(b, g0 + group)
            dest = kmap[g0:g1] if keep_kernels else kmap[:g1 - g0]
            for i in range(g0, g1):
                K.kernel_taps(kernel_params[i, 0], kernel_params[i, 1], kernel_params[i, 2], k, out=dest[i - g0])
            lq[g0:g1] = sv_blur_downsample(gt[g0:g1], dest, s)
        return (kmap if keep_kernels else None), lq.clamp_(0, 1)

    @staticmethod
    def _noise_fields(lq, noise_sigma, gray, poisson_scale, seeds):
        """Gaussian then Poisson noise, per sample from its own generator seeded with ``noise_seed``, laws as
        :func:`ssr_data.degradations.add_gaussian_noise` / :func:`~ssr_data.degradations.add_poisson_noise`.

        Only the draws are per sample (each sample's generator, its own shape: one channel for grey noise);
        scaling, the grey channel copies, the luma and the clamps act on the whole batch, so that an
        accelerator gets a handful of launches instead of a few per sample."""
        b, c, h, w = lq.shape
        if not any(sig > 0 for sig in noise_sigma) and not any(p > 0 for p in poisson_scale):
            return lq

        def per_sample(values):
            return torch.tensor(values, dtype=lq.dtype).view(b, 1, 1, 1).to(lq.device, non_blocking=True)

        gens = []
        fields = lq.new_zeros((b, c, h, w))
        rows = fields.unbind(0)
        for i in range(b):
            gen = torch.Generator(device=lq.device)
            gen.manual_seed(int(seeds[i]))
            gens.append(gen)
            if noise_sigma[i] > 0:
                torch.randn((1 if gray[i] else c, h, w), generator=gen, out=rows[i][:1] if gray[i] else rows[i])
        gray_mask = per_sample([bool(g) for g in gray]).bool()
        fields = torch.where(gray_mask, fields[:, :1], fields).mul_(per_sample([float(x) for x in noise_sigma]))
        lq = lq.add_(fields).clamp_(0, 1)
        shot_idx = [i for i in range(b) if poisson_scale[i] > 0]
        if not shot_idx:
            return lq
        luma = (0.299 * lq[:, 0] + 0.587 * lq[:, 1] + 0.114 * lq[:, 2])[:, None]
        base = torch.where(gray_mask, luma, lq)  # grey: the luma in every channel, drawn once (channel 0)
        rate = base.clamp(0, 1).mul(255.0)
        counts = torch.zeros_like(lq)
        rates, rows = rate.unbind(0), counts.unbind(0)
        for i in shot_idx:
            if gray[i]:
                rows[i][:1].copy_(torch.poisson(rates[i][:1], generator=gens[i]))
            else:
                rows[i].copy_(torch.poisson(rates[i], generator=gens[i]))
        counts = torch.where(gray_mask, counts[:, :1], counts)
        shot = counts.div_(255.0).sub_(base)
        noisy = (lq + shot * per_sample([float(x) for x in poisson_scale])).clamp_(0, 1)
        return torch.where(per_sample([float(x) > 0 for x in poisson_scale]).bool(), noisy, lq)

    def _compress(self, lq, quality):
        """JPEG at each sample's integer quality (< 0: none), otherwise rounded to 8-bit levels."""
        out = quantize(lq)
        idx = [i for i, q in enumerate(quality) if q >= 0]
        if not idx:
            return out
        if self.jpeg_backend == 'torch':
            out[idx] = simulate_jpeg(lq[idx], [quality[i] for i in idx])
        else:
            host = lq[idx].float().cpu()
            out[idx] = torch.stack([jpeg_compress(host[j], int(quality[i])) for j, i in enumerate(idx)]).to(lq.device)
        return out

    @torch.no_grad()
    def synthesize(self, gt, kernel_params, noise_sigma=None, gray_noise=None, poisson_scale=None, jpeg_quality=None,
                   noise_seed=None, compress=True, keep_kernels=None):
        """Degrade a batch of HR crops on their device.

        Args:
            gt (Tensor): B×3×H×W RGB in [0, 1].
            kernel_params (Tensor): B×3×h×w (σ_major, σ_minor, θ per LR pixel).
            noise_sigma, gray_noise, poisson_scale, jpeg_quality, noise_seed: B numbers each (sequences or
                CPU tensors); None = no noise / no JPEG.
            compress (bool): False returns the LR before JPEG / 8-bit rounding.
            keep_kernels (bool): return the kernel map (default: the ``return_kernel`` option).

        Returns:
            (lq B×3×h×w, kernel B×k²×h×w or None)
        """
        b = gt.shape[0]

        def numbers(x, default):
            if x is None:
                return [default] * b
            return x.tolist() if torch.is_tensor(x) else list(x)

        keep = self.return_kernel if keep_kernels is None else keep_kernels
        with _one_cpu_thread(gt.device):
            kmap, lq = self._kernels_and_blur(gt.float(), kernel_params.to(gt.device, torch.float32), keep)
            lq = self._noise_fields(lq, numbers(noise_sigma, 0.0), numbers(gray_noise, 0.0),
                                    numbers(poisson_scale, 0.0), numbers(noise_seed, 0))
            if compress:
                lq = self._compress(lq, [int(q) for q in numbers(jpeg_quality, -1)])
        return lq, kmap

    def __call__(self, batch, device=None):
        """Training batch from a collated ``degrade_on: model`` batch: ``lq``, ``gt``, ``depth``, ``depth_lq``
        on ``device`` (default: the batch's), ``kernel`` with ``return_kernel``, and every other entry
        (paths, ``params``) as it was; the :data:`DEGRADATION_KEY` entry is consumed."""
        deg = batch[DEGRADATION_KEY]
        device = torch.device(device) if device is not None else batch['gt'].device
        gt = batch['gt'].to(device, non_blocking=True)
        lq, kmap = self.synthesize(gt, deg['kernel_params'].to(device, non_blocking=True), deg['noise_sigma'],
                                   deg['gray_noise'], deg['poisson_scale'], deg['jpeg_quality'], deg['noise_seed'])
        out = {key: value for key, value in batch.items() if key != DEGRADATION_KEY}
        out.update(lq=lq, gt=gt)
        for key in ('depth', 'depth_lq'):
            if key in out:
                out[key] = out[key].to(device, non_blocking=True)
        if kmap is not None:
            out['kernel'] = kmap
        return out


def maybe_degrade_batch(data, device):
    """The model-side hook: ``data = maybe_degrade_batch(data, self.device)`` first in ``feed_data``.

    A ``degrade_on: model`` batch (one with a :data:`DEGRADATION_KEY` entry) comes back synthesised on
    ``device``; any other batch is returned as it is.
    """
    if not isinstance(data, dict) or DEGRADATION_KEY not in data:
        return data
    return BatchDegradation.from_batch(data)(data, device)
