"""Degradations synthesised batch-wise on the training device (``degrade_on: model``).

With ``degrade_on: model`` :class:`ssr_data.ssr_degradation_dataset.SSRDegradationDataset` returns the HR
crop, its depth and the numbers of the sample's degradation, drawn per sample with the sample's own rng by
the recipe's one draw function (:meth:`ssr_data.degradations.SVDegradation.draw_params`): the per-LR-pixel
kernel parameters ``(σ_major, σ_minor, θ)``, the noise level, grey-noise flag, Poisson scale, JPEG quality
(the default stages' numbers) and a seed for the noise fields. :class:`BatchDegradation` turns a collated
batch of those into the training batch on the training device with the recipe's one executor
(:meth:`ssr_data.degradations.DegradationRecipe.apply`, the per-sample path's too): the kernel maps, the
spatially variant blur + subsampling, the noise and the JPEG round trip of every sample at once.

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

from ssr_data.degradations import DegradationRecipe, SeededNoise, per_sample_values
from ssr_utils.errors import OptionError

DEGRADE_ON = ('dataset', 'model')
# entry of a sample / batch that holds the degradation numbers (degrade_on: model)
DEGRADATION_KEY = 'degradation'
# entries of DEGRADATION_KEY besides the stages' numbers
NOISE_SEED_KEY, OPTIONS_KEY = 'noise_seed', 'options'


@contextmanager
def one_cpu_thread(device):
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
        opt (dict): the dataset's option dict (``scale``, ``degradation_stages`` and the options the stages
            apply with: ``kernel_size`` (21), ``jpeg_backend``: ``opencv`` (default; libjpeg-turbo per sample
            on the CPU, exactly the per-sample path's JPEG) or ``torch`` (:func:`ssr_data.jpeg_sim.simulate_jpeg`,
            batched on the device)), ``return_kernel`` (true).
    """

    def __init__(self, opt):
        self.recipe = DegradationRecipe(opt)
        self.return_kernel = bool(opt.get('return_kernel', True))

    def options(self):
        """The synthesis options as a JSON string (what a sample carries, see :meth:`from_batch`)."""
        return json.dumps({**self.recipe.synthesis_options(), 'return_kernel': self.return_kernel}, sort_keys=True)

    @classmethod
    def from_batch(cls, batch):
        """The synthesis a collated batch asks for (``batch[DEGRADATION_KEY]['options']``)."""
        options = batch[DEGRADATION_KEY][OPTIONS_KEY]
        options = [options] if isinstance(options, str) else list(options)
        if len(set(options)) != 1:
            raise ValueError(f'a batch mixes samples of different degradation options: {sorted(set(options))}')
        return cls(json.loads(options[0]))

    @torch.no_grad()
    def degrade(self, gt, numbers, noise_seed=None, keep_kernels=None, until=None, noise=None):
        """Degrade a batch of HR crops on their device with the recipe's executor.

        Args:
            gt (Tensor): B×3×H×W RGB in [0, 1].
            numbers (dict): the stages' numbers, B of each (tensors or sequences; ``kernel_params`` B×3×h×w);
                a missing one means "not applied".
            noise_seed: B seeds of the samples' noise fields (None: 0 for all).
            keep_kernels (bool): return the kernel map (default: the ``return_kernel`` option).
            until (str): stop before the stage of that name (e.g. ``'jpeg'``: the LR before its 8-bit output).
            noise: where the random fields come from (default: :class:`~ssr_data.degradations.SeededNoise` of
                ``noise_seed`` on ``gt``'s device).

        Returns:
            (lq B×3×h×w, kernel B×k²×h×w or None)
        """
        keep = self.return_kernel if keep_kernels is None else keep_kernels
        if noise is None:
            noise = SeededNoise(per_sample_values(noise_seed, 0, gt.shape[0]), gt.device)
        with one_cpu_thread(gt.device):
            state = self.recipe.apply(gt, numbers, noise, keep, until)
        return state.lq, state.kernel

    def synthesize(self, gt, kernel_params, noise_sigma=None, gray_noise=None, poisson_scale=None, jpeg_quality=None,
                   noise_seed=None, compress=True, keep_kernels=None):
        """:meth:`degrade` with the default stages' numbers as arguments.

        Args:
            gt (Tensor): B×3×H×W RGB in [0, 1].
            kernel_params (Tensor): B×3×h×w (σ_major, σ_minor, θ per LR pixel).
            noise_sigma, gray_noise, poisson_scale, jpeg_quality, noise_seed: B numbers each (sequences or
                CPU tensors); None = no noise / no JPEG.
            compress (bool): False returns the LR before JPEG / 8-bit rounding (the ``jpeg`` stage).
            keep_kernels (bool): return the kernel map (default: the ``return_kernel`` option).

        Returns:
            (lq B×3×h×w, kernel B×k²×h×w or None)
        """
        numbers = {'kernel_params': kernel_params, 'noise_sigma': noise_sigma, 'gray_noise': gray_noise,
                   'poisson_scale': poisson_scale, 'jpeg_quality': jpeg_quality}
        return self.degrade(gt, {k: v for k, v in numbers.items() if v is not None}, noise_seed, keep_kernels,
                            until=None if compress else 'jpeg')

    def __call__(self, batch, device=None):
        """Training batch from a collated ``degrade_on: model`` batch: ``lq``, ``gt``, ``depth``, ``depth_lq``
        on ``device`` (default: the batch's), ``kernel`` with ``return_kernel``, and every other entry
        (paths, ``params``) as it was; the :data:`DEGRADATION_KEY` entry is consumed."""
        deg = batch[DEGRADATION_KEY]
        device = torch.device(device) if device is not None else batch['gt'].device
        gt = batch['gt'].to(device, non_blocking=True)
        numbers = {key: (value.to(device, non_blocking=True) if torch.is_tensor(value) and value.dim() > 1 else value)
                   for key, value in deg.items() if key not in (NOISE_SEED_KEY, OPTIONS_KEY)}
        lq, kmap = self.degrade(gt, numbers, deg[NOISE_SEED_KEY])
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
