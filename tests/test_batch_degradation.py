"""degrade_on: model — the batch synthesis against the per-sample path, noise, JPEG simulation, model hooks."""
import os
import os.path as osp
import shutil
import uuid

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

import ssr_arch  # noqa: F401  (registers)
import ssr_models  # noqa: F401
from conftest import ROOT
from ssr_data import degradations as D
from ssr_data.batch_degradation import DEGRADATION_KEY, BatchDegradation, maybe_degrade_batch
from ssr_data.degradations import GeneratorNoise, SVDegradation, jpeg_compress, quantize, sv_blur_downsample
from ssr_data.jpeg_sim import quant_tables, simulate_jpeg
from ssr_data.lmdb_util import LmdbWriter
from ssr_data.ssr_degradation_dataset import SSRDegradationDataset
from ssr_utils.errors import OptionError


def _images(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):  # smooth colour images with some detail, uint8 BGR
        img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 1.5)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope='module')
def lmdbs(tmp_path_factory):
    root = tmp_path_factory.mktemp('bd')
    rng = np.random.default_rng(1)
    with LmdbWriter(str(root / 'hr.lmdb')) as hr, LmdbWriter(str(root / 'depth.lmdb')) as dep:
        for i, img in enumerate(_images(4, 56, 52)):
            hr.put(f'im{i}', img)
            depth = cv2.GaussianBlur(rng.uniform(0, 65535, (56, 52)).astype(np.float32), (0, 0), 4)
            dep.put(f'im{i}', depth.astype(np.uint16))
    return root


def _opt(root, **kw):
    opt = {'name': 't', 'phase': 'train', 'dataroot_gt': str(root / 'hr.lmdb'),
           'dataroot_depth': str(root / 'depth.lmdb'), 'scale': 4, 'gt_size': 32, 'kernel_size': 9, 'seed': 11}
    opt.update(kw)
    return opt


def _pair_of_batches(root, n=4, **kw):
    """The same seeded samples through both paths: (per-sample batch, degrade_on: model raw batch)."""
    ours = SSRDegradationDataset(_opt(root, degrade_on='model', **kw))
    kw.pop('jpeg_backend', None)
    theirs = SSRDegradationDataset(_opt(root, **kw))
    per_sample = next(iter(DataLoader(theirs, batch_size=n)))
    raw = next(iter(DataLoader(ours, batch_size=n)))
    return per_sample, raw


def test_model_mode_sample_and_batch_layout(lmdbs):
    ds = SSRDegradationDataset(_opt(lmdbs, degrade_on='model'))
    s = ds[0]
    assert 'lq' not in s and 'kernel' not in s
    assert s['gt'].shape == (3, 32, 32) and s['depth'].shape == (1, 32, 32) and s['depth_lq'].shape == (1, 8, 8)
    deg = s[DEGRADATION_KEY]
    assert deg['kernel_params'].shape == (3, 8, 8) and deg['kernel_params'].dtype == torch.float32
    assert set(deg) == {'kernel_params', 'noise_sigma', 'gray_noise', 'poisson_scale', 'jpeg_quality', 'noise_seed',
                        'options'}
    batch = maybe_degrade_batch(next(iter(DataLoader(ds, batch_size=3))), 'cpu')
    assert DEGRADATION_KEY not in batch
    assert batch['lq'].shape == (3, 3, 8, 8) and batch['kernel'].shape == (3, 81, 8, 8)
    assert batch['params']['jpeg_quality'].shape == (3, ) and len(batch['lq_path']) == 3
    assert torch.allclose(batch['kernel'].sum(1), torch.ones(3, 8, 8), atol=1e-5)
    no_kernel = maybe_degrade_batch(next(iter(DataLoader(SSRDegradationDataset(
        _opt(lmdbs, degrade_on='model', return_kernel=False)), batch_size=2))), 'cpu')
    assert 'kernel' not in no_kernel and no_kernel['lq'].shape == (2, 3, 8, 8)
    # any other batch passes the hook untouched
    plain = {'lq': torch.zeros(1, 3, 4, 4), 'gt': torch.zeros(1, 3, 16, 16)}
    assert maybe_degrade_batch(plain, 'cpu') is plain


def test_same_kernels_and_lr_as_the_per_sample_path(lmdbs):
    per_sample, raw = _pair_of_batches(lmdbs, use_noise=False, use_jpeg=False)
    for key in ('gt', 'depth', 'depth_lq'):
        assert torch.equal(per_sample[key], raw[key])
    synth = BatchDegradation.from_batch(raw)
    deg = raw[DEGRADATION_KEY]
    pre, kernel = synth.synthesize(raw['gt'], deg['kernel_params'], compress=False)
    assert torch.equal(kernel, per_sample['kernel'])  # identical kernel maps
    # the per-sample path's LR before its 8-bit rounding, from its own kernels
    ref = sv_blur_downsample(per_sample['gt'], per_sample['kernel'], 4).clamp(0, 1)
    assert (pre - ref).abs().max() < 1e-6
    assert torch.equal(quantize(pre), per_sample['lq'])
    batch = maybe_degrade_batch(raw, 'cpu')
    assert torch.equal(batch['lq'], per_sample['lq']) and torch.equal(batch['kernel'], per_sample['kernel'])


def test_same_jpeg_quality_and_close_lr_after_jpeg(lmdbs):
    per_sample, raw = _pair_of_batches(lmdbs, use_noise=False)
    assert torch.equal(per_sample['params']['jpeg_quality'], raw['params']['jpeg_quality'])
    assert (raw['params']['jpeg_quality'] >= 30).all()
    opencv = maybe_degrade_batch(raw, 'cpu')
    assert (opencv['lq'] - per_sample['lq']).abs().mean() * 255 < 0.05  # the same codec on the same LR
    _, raw_sim = _pair_of_batches(lmdbs, use_noise=False, jpeg_backend='torch')
    sim = maybe_degrade_batch(raw_sim, 'cpu')
    clean = quantize(sv_blur_downsample(per_sample['gt'], per_sample['kernel'], 4).clamp(0, 1))
    diff = (sim['lq'] - per_sample['lq']).abs() * 255
    artefacts = (per_sample['lq'] - clean).abs() * 255
    assert diff.mean() < 0.25 * artefacts.mean()  # the simulation is far closer to OpenCV than to no JPEG
    assert ((sim['lq'] * 255).round() == sim['lq'] * 255).all()


def test_noise_follows_the_drawn_law_and_the_seed(lmdbs):
    per_sample, raw = _pair_of_batches(lmdbs, use_jpeg=False, noise_range=[20, 30], gray_noise_prob=0.5)
    for key in ('noise_sigma', 'gray_noise'):  # drawn at the same rng positions in both paths
        assert torch.equal(per_sample['params'][key], raw['params'][key])
    synth = BatchDegradation.from_batch(raw)
    gt = torch.full((8, 3, 64, 64), 0.5)
    params = torch.stack([torch.full((16, 16), 0.3), torch.full((16, 16), 0.3), torch.zeros(16, 16)])[None]
    params = params.expand(8, -1, -1, -1)
    sigma, gray = [20 / 255] * 8, [0.0, 1.0] * 4
    seeds = list(range(100, 108))
    clean, _ = BatchDegradation({'scale': 4, 'kernel_size': 9}).synthesize(gt, params, compress=False)
    noisy, _ = synth.synthesize(gt, params, sigma, gray, [0.0] * 8, None, seeds, compress=False)
    res = noisy - clean
    for i in range(8):
        assert res[i].std().item() == pytest.approx(sigma[i], rel=0.15)
        same_channels = torch.equal(res[i, 0], res[i, 1]) and torch.equal(res[i, 1], res[i, 2])
        assert same_channels == bool(gray[i])
    again, _ = synth.synthesize(gt, params, sigma, gray, [0.0] * 8, None, seeds, compress=False)
    other, _ = synth.synthesize(gt, params, sigma, gray, [0.0] * 8, None, [s + 1 for s in seeds], compress=False)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    # the batch composition does not matter: sample i depends on its own seed only
    alone, _ = synth.synthesize(gt[3:4], params[3:4], sigma[3:4], gray[3:4], [0.0], None, seeds[3:4], compress=False)
    assert torch.equal(alone[0], noisy[3])
    # Poisson (shot) noise: variance scale²·x/255, so it grows with the intensity
    dark_bright = torch.cat([torch.full((1, 3, 64, 64), 0.1), torch.full((1, 3, 64, 64), 0.8)])
    shot, _ = synth.synthesize(dark_bright, params[:2], None, [0.0, 0.0], [1.0, 1.0], None, [5, 6], compress=False)
    clean2, _ = synth.synthesize(dark_bright, params[:2], compress=False)
    var = (shot - clean2).var(dim=(1, 2, 3))
    assert var[0].item() == pytest.approx(0.1 / 255, rel=0.2) and var[1].item() == pytest.approx(0.8 / 255, rel=0.2)
    # a batch mixing grey / colour noise and shot / no shot noise: every sample as it is alone
    mixed = (sigma[:4], [1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], None, seeds[:4])
    batch, _ = synth.synthesize(gt[:4], params[:4], *mixed, compress=False)
    for i in range(4):
        one, _ = synth.synthesize(gt[i:i + 1], params[i:i + 1], *[None if v is None else v[i:i + 1] for v in mixed],
                                  compress=False)
        assert torch.equal(one[0], batch[i]), i
        assert torch.equal(batch[i, 0], batch[i, 2]) == bool(mixed[1][i])  # grey: one field for all channels


class RecordingNoise:
    """The per-sample path's random fields (from the sample's rng), kept to hand the batch path the same ones."""

    def __init__(self, rng):
        self.source, self.fields = GeneratorNoise(rng), []

    def normal(self, index, shape, device):
        self.fields.append(self.source.normal(index, shape, device))
        return self.fields[-1].clone()

    def poisson(self, index, rate):
        self.fields.append(self.source.poisson(index, rate))
        return self.fields[-1].clone()


class ReplayNoise:
    """Each sample's recorded fields, in the order its stages asked for them."""

    def __init__(self, fields):
        self.fields = [list(f) for f in fields]

    def normal(self, index, shape, device):
        field = self.fields[index].pop(0)
        assert tuple(field.shape) == tuple(shape)
        return field.to(device)

    def poisson(self, index, rate):
        counts = self.fields[index].pop(0)
        assert counts.shape == rate.shape
        return counts.to(rate)


@pytest.mark.parametrize('extra', [{}, {'poisson_prob': 0.7},
                                   {'poisson_prob': 0.7, 'gray_noise_prob': 0.5, 'use_jpeg': False},
                                   {'use_noise': False, 'kernel_mode': 'block'}, {'kernel_mode': 'invariant'}])
def test_both_paths_make_the_same_images_from_the_same_numbers(extra):
    # the per-sample path (a batch of one in the worker) and degrade_on: model (the batch) run one executor:
    # given one sample's numbers and random fields, the batch gives each sample's image bit for bit
    opt = {'scale': 4, 'kernel_size': 9, **extra}
    g = torch.Generator().manual_seed(0)
    gts, depths = torch.rand(6, 3, 32, 40, generator=g), torch.rand(6, 1, 32, 40, generator=g)
    deg, samples, recorders = SVDegradation(opt), [], []
    for i in range(6):
        rng = np.random.default_rng([5, i])
        recorders.append(RecordingNoise(rng))
        samples.append(deg(gts[i], depths[i], rng, noise=recorders[i]))
    numbers = default_collate([s['numbers'] for s in samples])
    lq, kernel = BatchDegradation(opt).degrade(gts, numbers, noise=ReplayNoise([r.fields for r in recorders]))
    assert torch.equal(kernel, torch.stack([s['kernel'] for s in samples]))
    assert torch.equal(lq, torch.stack([s['lq'] for s in samples]))
    assert sum(len(r.fields) for r in recorders) > 0 or not deg.stage('gaussian_noise').use_noise


def test_dataset_seed_fixes_the_synthesised_sample(lmdbs):
    ds = SSRDegradationDataset(_opt(lmdbs, degrade_on='model', poisson_prob=0.5))
    a = maybe_degrade_batch(next(iter(DataLoader(ds, batch_size=4))), 'cpu')
    b = maybe_degrade_batch(next(iter(DataLoader(SSRDegradationDataset(_opt(lmdbs, degrade_on='model',
                                                                             poisson_prob=0.5)), batch_size=4))),
                            'cpu')
    c = maybe_degrade_batch(next(iter(DataLoader(SSRDegradationDataset(_opt(lmdbs, degrade_on='model', seed=12,
                                                                             poisson_prob=0.5)), batch_size=4))),
                            'cpu')
    assert torch.equal(a['lq'], b['lq']) and torch.equal(a['kernel'], b['kernel'])
    assert not torch.equal(a['lq'], c['lq'])


@pytest.mark.parametrize('keep', [True, False])
def test_grouped_cpu_path_equals_the_accelerator_path(lmdbs, monkeypatch, keep):
    # the whole-batch branch is the one accelerators take; run on CPU it must give the CPU path's numbers
    _, raw = _pair_of_batches(lmdbs, n=5, return_kernel=keep)
    monkeypatch.setattr(D, 'CPU_KERNEL_PIXELS', 128)  # groups of two crops (8×8 LR), the last one alone
    chunked = maybe_degrade_batch(raw, 'cpu')
    monkeypatch.setattr(D, 'whole_batch_at_once', lambda device: True)
    whole = maybe_degrade_batch(raw, 'cpu')
    assert ('kernel' in chunked) == ('kernel' in whole) == keep
    if not keep:
        chunked['kernel'], whole['kernel'] = None, None
    assert chunked['kernel'] is None or torch.equal(chunked['kernel'], whole['kernel'])
    assert (chunked['lq'] - whole['lq']).abs().max() <= 1 / 255 + 1e-6
    assert (chunked['lq'] != whole['lq']).float().mean() < 0.01


def test_cuda_synthesis_matches_cpu(lmdbs):
    if not torch.cuda.is_available():
        pytest.skip('no CUDA device')
    _, raw = _pair_of_batches(lmdbs, n=4, use_noise=False, use_jpeg=False)
    cpu, gpu = maybe_degrade_batch(raw, 'cpu'), maybe_degrade_batch(raw, 'cuda')
    assert gpu['lq'].device.type == 'cuda' and gpu['kernel'].device.type == 'cuda'
    assert (gpu['kernel'].cpu() - cpu['kernel']).abs().max() < 1e-6
    assert (gpu['lq'].cpu() - cpu['lq']).abs().max() <= 1 / 255 + 1e-6


def test_options_are_checked(lmdbs):
    with pytest.raises(OptionError, match='degrade_on'):
        SSRDegradationDataset(_opt(lmdbs, degrade_on='gpu'))
    with pytest.raises(OptionError, match='jpeg_backend'):
        SSRDegradationDataset(_opt(lmdbs, degrade_on='model', jpeg_backend='pil'))
    with pytest.raises(OptionError, match='jpeg_backend'):
        SSRDegradationDataset(_opt(lmdbs, jpeg_backend='torch'))  # the per-sample path has OpenCV only
    a = SSRDegradationDataset(_opt(lmdbs, degrade_on='model'))[0]
    b = SSRDegradationDataset(_opt(lmdbs, degrade_on='model', kernel_size=7))[0]
    mixed = {'gt': torch.stack([a['gt'], b['gt']]),
             DEGRADATION_KEY: {'options': [a[DEGRADATION_KEY]['options'], b[DEGRADATION_KEY]['options']]}}
    with pytest.raises(ValueError, match='mixes'):
        maybe_degrade_batch(mixed, 'cpu')


# ------------------------------------------------------------------------------------------------------
# JPEG simulation against OpenCV
# ------------------------------------------------------------------------------------------------------
def test_quant_tables_follow_ijg_scaling():
    luma, chroma = quant_tables([50, 100, 1, 75])
    assert luma[0, 0, 0] == 16 and luma[0, 7, 7] == 99 and chroma[0, 0, 0] == 17 and chroma[0, 7, 7] == 99
    assert (luma[1] == 1).all() and (chroma[1] == 1).all()
    assert luma[2].max() == 255 and (chroma[2] == 255).all()
    assert luma[3, 0, 0] == 8  # (16·50 + 50) // 100
    with pytest.raises(ValueError, match='1, 100'):
        quant_tables([0])


def _photos(size=48):
    import skimage.data
    out = []
    for name in ('astronaut', 'coffee', 'chelsea', 'rocket'):
        img = getattr(skimage.data, name)()[..., :3]
        img = cv2.resize(img, (img.shape[1] // 4, img.shape[0] // 4), interpolation=cv2.INTER_AREA)
        out.append(torch.from_numpy(np.ascontiguousarray(img[:size, :size])).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


@pytest.mark.parametrize('quality', [30, 60, 90])
def test_simulated_jpeg_is_close_to_opencv(quality):
    imgs = _photos()
    sim = simulate_jpeg(imgs, [quality] * len(imgs))
    ref = torch.stack([jpeg_compress(i, quality) for i in imgs])
    levels = quantize(imgs)
    diff = (sim - ref).abs() * 255
    artefacts = (ref - levels).abs() * 255
    # measured (docs/degradations.md): 0.1-0.55 levels mean, against 2-7 levels of JPEG error
    assert diff.mean() < 0.7
    assert (diff > 0).float().mean() < 0.4
    assert ((sim - levels).abs() * 255).mean() == pytest.approx(artefacts.mean().item(), rel=0.05)
    # sizes that are not whole macro-blocks are padded as libjpeg pads them
    odd = imgs[:, :, :40, :36]
    d_odd = (simulate_jpeg(odd, [quality] * len(imgs)) - torch.stack([jpeg_compress(i, quality) for i in odd]))
    assert (d_odd.abs() * 255).mean() < 0.7


# ------------------------------------------------------------------------------------------------------
# the model hooks
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def folder_data(tmp_path_factory):
    from ssr_data.dataset_io import write_depth_png
    root = tmp_path_factory.mktemp('bd_folder')
    (root / 'hr').mkdir()
    (root / 'depth').mkdir()
    for i, img in enumerate(_images(2, 40, 40, seed=3)):
        cv2.imwrite(str(root / 'hr' / f'im{i}.png'), img)
        write_depth_png(str(root / 'depth' / f'im{i}.png'), np.linspace(0, 1, 40 * 40).reshape(40, 40))
    return root


def _model_batch(root, scale, kernel_size, gt_size):
    ds = SSRDegradationDataset({'name': 't', 'phase': 'train', 'dataroot_gt': str(root / 'hr'),
                                'dataroot_depth': str(root / 'depth'), 'scale': scale, 'gt_size': gt_size,
                                'kernel_size': kernel_size, 'seed': 0, 'degrade_on': 'model'})
    return next(iter(DataLoader(ds, batch_size=2)))


def _svkr_models(tmp_path):
    from test_svkr_models import SCALE, TINY_KE, TINY_SR, _opt
    svkr = {'type': 'SVKR', 'num_iter': 1, 'scale': SCALE, 'depth_opt': {'type': '_TestDepth'}, 'kernel_opt': TINY_KE,
            'sr_opt': TINY_SR}
    return SCALE, TINY_KE['kernel_size'], {
        'DKENetModel': _opt(tmp_path, 'DKENetModel', dict(TINY_KE, scale=SCALE), {'kernel_opt': {'type': 'L1Loss'}},
                            {}, name='dke'),
        'NBSRModel': _opt(tmp_path, 'NBSRModel', dict(TINY_SR, scale=SCALE), {'pixel_opt': {'type': 'L1Loss'}}, {},
                          name='nbsr'),
        'SVKRModel': _opt(tmp_path, 'SVKRModel', svkr, {'pixel_opt': {'type': 'L1Loss'}}, {}, name='svkr')}


def test_every_model_feed_data_synthesises_model_mode_batches(tmp_path, folder_data, pca_path):
    from basicsr.models import build_model
    from test_ssr_model import _opt as ssr_opt
    scale, k, opts = _svkr_models(tmp_path)
    raw = _model_batch(folder_data, scale, k, 16)
    expected = maybe_degrade_batch(raw, 'cpu')
    for name, opt in opts.items():
        model = build_model(opt)
        model.feed_data(raw)
        assert torch.equal(model.lq, expected['lq']), name
        assert torch.equal(model.kernel_gt, expected['kernel']), name
        model.optimize_parameters(1)
        assert all(np.isfinite(float(v)) for v in model.get_current_log().values()), name
    raw = _model_batch(folder_data, 4, 21, 32)
    expected = maybe_degrade_batch(raw, 'cpu')
    model = build_model(ssr_opt(tmp_path, pca_path))
    model.feed_data(raw)
    assert torch.equal(model.lq, expected['lq']) and torch.equal(model.kernel_in, expected['kernel'])
    assert torch.equal(model.depth_in, expected['depth_lq'])


@pytest.fixture
def run_name():
    name = f'pytest_degrade_on_model_{uuid.uuid4().hex[:6]}'
    yield name
    for folder in ('experiments', 'tb_logger', 'results'):
        shutil.rmtree(osp.join(ROOT, folder, name), ignore_errors=True)


def test_stage1_trains_through_basicsr_with_degrade_on_model(tmp_path, run_name):
    from test_svkr_models import _run_stage, _shrink, _stage_data
    data = _stage_data(tmp_path)
    opt = _shrink('train_dkenet_demo.yml', run_name, data, 2, num_feat=[8, 12], num_depth_feat=[4, 6])
    opt['datasets']['train']['degrade_on'] = 'model'
    out = _run_stage(tmp_path, opt)
    assert 'l_kernel' in out
    assert sorted(os.listdir(osp.join(ROOT, 'experiments', run_name, 'models'))) == ['net_g_2.pth',
                                                                                     'net_g_latest.pth']
