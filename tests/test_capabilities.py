"""Capabilities that declare themselves once: a depth backend and a degradation stage added inside a test, one
registration each, run through option checking, the networks and the datasets (and the batch path)."""
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import ssr_arch  # noqa: F401  (registers)
import ssr_models  # noqa: F401
from basicsr.archs import build_network
from ssr_arch.depth_arch import DepthBackend, MonocularDepth
from ssr_data.batch_degradation import maybe_degrade_batch
from ssr_data.degradations import DegradationStage, per_sample_column, per_sample_values
from ssr_data.lmdb_util import LmdbWriter
from ssr_data.ssr_degradation_dataset import SSRDegradationDataset
from ssr_data.ssr_paired_dataset import SSRPairedDataset
from ssr_utils.errors import OptionError
from ssr_utils.option_check import check_options
from ssr_utils.registry import DEGRADATION_STAGE_REGISTRY, DEPTH_BACKEND_REGISTRY


class VerticalDepth(DepthBackend):
    """Depth from the row alone: 0 at the top (far) to 1 at the bottom (near)."""

    def load(self, depth, model_path, input_size, keep_aspect_ratio):
        depth.input_size = None

    def estimate(self, depth, img):
        b, _, h, w = img.shape
        return torch.linspace(0, 1, h, dtype=img.dtype).view(1, 1, h, 1).expand(b, 1, h, w).clone()


class GainStage(DegradationStage):
    """Scales the LR by a gain ~ U(gain_range) drawn per sample."""
    option_keys = ('gain_range', )
    carried = reported = ('gain', )

    def __init__(self, opt):
        super().__init__(opt)
        low, high = opt.get('gain_range', (0.5, 0.9))
        if not 0 < low <= high:
            raise OptionError('gain_range', opt.get('gain_range'), 'expected 0 < low <= high')
        self.low, self.high = float(low), float(high)

    def draw(self, rng, depth_lq, drawn):
        return {'gain': float(rng.uniform(self.low, self.high))}

    def apply(self, state, numbers, noise):
        gain = per_sample_values(numbers.get('gain'), 1.0, state.batch_size)
        state.lq = (state.lq * per_sample_column(gain, state.lq)).clamp_(0, 1)


@pytest.fixture
def vertical_backend():
    DEPTH_BACKEND_REGISTRY.register('vertical')(VerticalDepth())
    yield 'vertical'
    DEPTH_BACKEND_REGISTRY.unregister('vertical')


@pytest.fixture
def gain_stage():
    DEGRADATION_STAGE_REGISTRY.register('gain')(GainStage)
    yield 'gain'
    DEGRADATION_STAGE_REGISTRY.unregister('gain')


@pytest.fixture(scope='module')
def lmdbs(tmp_path_factory):
    root = tmp_path_factory.mktemp('caps')
    rng = np.random.default_rng(3)
    with LmdbWriter(str(root / 'hr.lmdb')) as hr, LmdbWriter(str(root / 'depth.lmdb')) as dep:
        for i in range(4):
            img = cv2.GaussianBlur(rng.uniform(0, 255, (48, 44, 3)).astype(np.float32), (0, 0), 1.5)
            hr.put(f'im{i}', np.clip(img, 0, 255).astype(np.uint8))
            depth = cv2.GaussianBlur(rng.uniform(0, 65535, (48, 44)).astype(np.float32), (0, 0), 4)
            dep.put(f'im{i}', depth.astype(np.uint16))
    return root


def test_a_depth_backend_added_in_one_registration(vertical_backend, tmp_path):
    svkr = {'model_type': 'SVKRModel', 'network_g': {'type': 'SVKR', 'depth_opt': {'type': 'MonocularDepth',
                                                                                    'backend': vertical_backend}}}
    check_options(svkr)  # option checking reads the table: a backend without a model path needs none
    with pytest.raises(OptionError, match='network_g:depth_opt:backend'):
        check_options({'network_g': {'type': 'SVKR', 'depth_opt': {'type': 'MonocularDepth', 'backend': 'nope'}}})
    with pytest.raises(OptionError, match='network_g:backend'):  # not a transformers model: nothing to train
        check_options({'network_g': {'type': 'TransformersDepthNet', 'backend': vertical_backend}})
    net = build_network({'type': 'MonocularDepth', 'backend': vertical_backend})
    img = torch.rand(2, 3, 20, 12)
    depth = net(img)
    assert depth.shape == (2, 1, 20, 12) and net.source == vertical_backend
    assert torch.equal(depth[:, :, :, 0], torch.linspace(0, 1, 20).expand(2, 1, 20))
    # through a test set made with it and the dataset that reads it back
    from ssr_app.tools.make_sv_testset import make_sv_testset
    images = [(f'a{i}', np.full((32, 24, 3), 60 * i + 20, np.uint8)) for i in range(2)]
    make_sv_testset(images, str(tmp_path / 'set'), kernel_size=7, depth_net=MonocularDepth(vertical_backend),
                    show_progress=False, report=None)
    sample = SSRPairedDataset({'name': 's', 'phase': 'val', 'dataroot': str(tmp_path / 'set'), 'scale': 4})[0]
    assert torch.allclose(sample['depth'][0, :, 0], torch.linspace(0, 1, 32), atol=1 / 65535)


def _opt(root, **kw):
    return {'name': 't', 'type': 'SSRDegradationDataset', 'phase': 'train', 'dataroot_gt': str(root / 'hr.lmdb'),
            'dataroot_depth': str(root / 'depth.lmdb'), 'scale': 4, 'gt_size': 32, 'kernel_size': 9, 'seed': 5,
            'use_noise': False, **kw}


def test_a_degradation_stage_added_in_one_registration(gain_stage, lmdbs):
    stages = ['blur', 'gaussian_noise', gain_stage, 'jpeg']
    # option checking builds the stages: a bad option of the new stage is named from the file's top
    check_options({'model_type': 'SRModel', 'datasets': {'train': _opt(lmdbs, degradation_stages=stages)}})
    with pytest.raises(OptionError, match='datasets:train:gain_range'):
        check_options({'model_type': 'SRModel',
                       'datasets': {'train': _opt(lmdbs, degradation_stages=stages, gain_range=[0.9, 0.1])}})
    with pytest.raises(OptionError, match='datasets:train:degradation_stages'):
        check_options({'model_type': 'SRModel', 'datasets': {'train': _opt(lmdbs, degradation_stages=['blur', 'x'])}})
    # the per-sample path: the LR of the same crop and kernels, scaled by the drawn gain (then 8-bit levels)
    plain = SSRDegradationDataset(_opt(lmdbs, use_jpeg=False))
    gained = SSRDegradationDataset(_opt(lmdbs, use_jpeg=False, degradation_stages=stages))
    for i in range(len(plain)):
        a, b = plain[i], gained[i]
        gain = b['params']['gain']
        assert 0.5 <= gain <= 0.9 and torch.equal(a['kernel'], b['kernel'])
        assert (b['lq'] - a['lq'] * gain).abs().max() <= 1.0 / 255 + 1e-6
        assert (b['lq'] - a['lq']).abs().max() > 0.05
    # the batch path (degrade_on: model) runs the same stage: with noise off the same images, JPEG included
    per_sample = next(iter(DataLoader(SSRDegradationDataset(_opt(lmdbs, degradation_stages=stages)), batch_size=4)))
    raw = next(iter(DataLoader(SSRDegradationDataset(_opt(lmdbs, degradation_stages=stages, degrade_on='model')),
                               batch_size=4)))
    assert torch.equal(raw['degradation']['gain'], per_sample['params']['gain'])
    batch = maybe_degrade_batch(raw, 'cpu')
    assert torch.equal(batch['kernel'], per_sample['kernel'])
    assert torch.equal(batch['lq'], per_sample['lq'])
