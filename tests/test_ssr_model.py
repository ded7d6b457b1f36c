"""SSRModel: training behaviour, save/resume, sampling, validation; colour correction."""
import copy
import logging
import os.path as osp

import cv2
import numpy as np
import pytest
import torch

from conftest import basicsr_messages
import ssr_arch  # noqa: F401  (registers)
import ssr_models  # noqa: F401
from ssr_arch.ssr_unet_arch import tiny_config
from ssr_data.kernels import random_kernels
from ssr_utils.color_fix import adain_color_fix, wavelet_color_fix, wavelet_decompose

SCALE = 4


@pytest.fixture(scope='module')
def base_dir(tmp_path_factory):
    """A tiny random 'Stable Diffusion' folder in the diffusers layout."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    cfg = tiny_config()
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp('sd_tiny')
    UNet2DConditionModel(**cfg['unet']).save_pretrained(str(root / 'unet'))
    AutoencoderKL(**cfg['vae']).save_pretrained(str(root / 'vae'))
    DDPMScheduler(num_train_timesteps=100, beta_schedule='linear').save_pretrained(str(root / 'scheduler'))
    return str(root)


def _opt(tmp_path, pca_path, pretrained=None, **train):
    net = dict(type='SSRUNet', pca_path=pca_path, **tiny_config())
    if pretrained:
        net.pop('unet'), net.pop('vae')
        net['pretrained_path'] = pretrained
    train_opt = dict(
        optim_g=dict(type='Adam', lr=1e-3),
        scheduler=dict(type='MultiStepLR', milestones=[10000], gamma=0.5),
        lambda_kernel=0.1,
        lambda_depth=0.1,
        lambda_lr=0.1)
    train_opt.update(train)
    for sub in ('models', 'training_states', 'visualization'):
        (tmp_path / sub).mkdir(exist_ok=True)
    return dict(
        name='ssr_test',
        model_type='SSRModel',
        scale=SCALE,
        num_gpu=0,
        is_train=True,
        dist=False,
        rank=0,
        world_size=1,
        manual_seed=0,
        network_g=net,
        conditions=dict(source='gt'),
        diffusion=dict(
            num_train_timesteps=100,
            sampler='ddim',
            num_inference_steps=3,
            val_num_inference_steps=2,
            color_fix='none',
            seed=0),
        path=dict(
            models=str(tmp_path / 'models'),
            training_states=str(tmp_path / 'training_states'),
            visualization=str(tmp_path / 'visualization')),
        train=train_opt,
        val=dict(
            metrics=dict(
                psnr=dict(type='calculate_psnr', crop_border=SCALE, test_y_channel=True),
                ssim=dict(type='calculate_ssim', crop_border=SCALE, test_y_channel=True))))


def _batch(batch=2, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    kernels = random_kernels(batch * h * w, kernel_size=21, seed=seed).reshape(batch, h, w, -1).permute(0, 3, 1, 2)
    return dict(
        lq=torch.rand(batch, 3, h, w, generator=g),
        gt=torch.rand(batch, 3, SCALE * h, SCALE * w, generator=g),
        depth_lq=torch.rand(batch, 1, h, w, generator=g),
        kernel=kernels.contiguous().float(),
        lq_path=[f'img{i}.png' for i in range(batch)])


def _build(opt):
    from basicsr.models import build_model
    return build_model(copy.deepcopy(opt))


def _step(model, data, it):
    model.feed_data(data)
    model.optimize_parameters(it)
    return float(model.last_loss)


def test_frozen_base_is_bit_identical_while_amf_and_encoders_move(tmp_path, pca_path, base_dir):
    model = _build(_opt(tmp_path, pca_path, pretrained=base_dir))
    net = model.bare_g
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = _batch()
    for it in range(3):
        _step(model, data, it)
    after = net.state_dict()
    base = [k for k in before if k.startswith(('unet.', 'vae.'))]
    assert base and all(torch.equal(before[k], after[k]) for k in base)
    for prefix in ('amf.', 'encoders.lr.', 'encoders.depth.', 'encoders.kernel.'):
        moved = [
            k for k in before
            if k.startswith(prefix) and before[k].is_floating_point() and not torch.equal(before[k], after[k])
        ]
        assert moved, f'no {prefix} parameter changed'


def test_trainable_fraction_is_logged(tmp_path, pca_path, base_dir):
    """The model logs the fraction of network_g its optimizer trains (the frozen base is not in it)."""
    with basicsr_messages(level=logging.INFO, handler_level=logging.INFO) as records:
        model = _build(_opt(tmp_path, pca_path, pretrained=base_dir))
    params = list(model.bare_g.parameters())
    n_train = sum(p.numel() for p in params if p.requires_grad)
    n_total = sum(p.numel() for p in params)
    assert 0 < n_train < n_total
    line = f'SSRUNet: {n_train:,} of {n_total:,} parameters trainable ({100.0 * n_train / n_total:.2f}%)'
    assert line in records, [r for r in records if 'trainable' in r]


def test_tiny_model_overfits_one_batch(tmp_path, pca_path):
    opt = _opt(tmp_path, pca_path, lambda_kernel=0, lambda_depth=0, lambda_lr=0, optim_g=dict(type='Adam', lr=3e-3))
    opt['network_g']['freeze_vae'] = True
    model = _build(opt)
    data = _batch(batch=1)
    losses = []
    for it in range(12):
        model.train_gen.manual_seed(123)  # one batch = the same images, noise and timestep every step
        losses.append(_step(model, data, it))
    assert set(model.log_dict) == {'l_eps', 'l_total'}  # lambda = 0 switches the C_i terms off
    assert losses[-1] * 5 <= losses[0], losses


def test_save_resume_gives_identical_next_step_loss(tmp_path, pca_path):
    opt = _opt(tmp_path, pca_path, ema_decay=0.9)
    model = _build(opt)
    batches = [_batch(seed=s) for s in range(3)]
    for it in range(2):
        _step(model, batches[it], it)
    model.save(epoch=0, current_iter=2)
    state_path = osp.join(opt['path']['training_states'], '2.state')
    net_path = osp.join(opt['path']['models'], 'net_g_2.pth')
    assert osp.isfile(state_path) and osp.isfile(net_path)
    expected = _step(model, batches[2], 2)
    ema_expected = {k: v.clone() for k, v in model.ema.items()}

    resumed_opt = copy.deepcopy(opt)
    resumed_opt['path']['pretrain_network_g'] = net_path
    resumed = _build(resumed_opt)
    resumed.resume_training(torch.load(state_path, map_location='cpu', weights_only=False))
    assert _step(resumed, batches[2], 2) == expected
    assert all(torch.equal(ema_expected[k], v) for k, v in resumed.ema.items())


def test_non_finite_loss_is_reported_and_skipped(tmp_path, pca_path, caplog):
    model = _build(_opt(tmp_path, pca_path))
    data = _batch()
    data['gt'] = data['gt'].clone()
    data['gt'][0, 0, 0, 0] = float('nan')
    before = {k: v.clone() for k, v in model.bare_g.state_dict().items()}
    logger = logging.getLogger('basicsr')
    logger.addHandler(caplog.handler)
    try:
        _step(model, data, 7)
    finally:
        logger.removeHandler(caplog.handler)
    assert any('non-finite' in r.getMessage() and 'iter 7' in r.getMessage() for r in caplog.records)
    after = model.bare_g.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and batch-norm statistics
    assert torch.isfinite(torch.tensor(_step(model, _batch(), 8)))  # training goes on


def test_sr_inference_shapes_seed_and_padding(tmp_path, pca_path):
    model = _build(_opt(tmp_path, pca_path))
    data = _batch(batch=1, h=5, w=7)  # HR 20x28: not a multiple of the model's size multiple (4)
    out = model.sr(data['lq'], depth=data['depth_lq'], kernel=data['kernel'])
    assert set(out) == {'sr', 'depth', 'kernel'}
    assert out['sr'].shape == (1, 3, 20, 28) and 0 <= out['sr'].min() and out['sr'].max() <= 1
    again = model.sr(data['lq'], depth=data['depth_lq'], kernel=data['kernel'])['sr']
    other = model.sr(data['lq'], depth=data['depth_lq'], kernel=data['kernel'], seed=1)['sr']
    assert torch.equal(out['sr'], again) and not torch.equal(out['sr'], other)
    assert model.net_g.training  # sr() restores the training mode
    model.pipeline.sampler = 'dpmsolver++'
    assert model.sr(data['lq'], depth=data['depth_lq'], kernel=data['kernel'])['sr'].shape == (1, 3, 20, 28)


def test_validation_computes_metrics_and_saves_images(tmp_path, pca_path):
    model = _build(_opt(tmp_path, pca_path))

    class _Val(torch.utils.data.Dataset):
        opt = {'name': 'tiny_val'}

        def __init__(self):
            # HR 32x32: SSIM's 11x11 window needs room after the crop of `scale` pixels
            self.items = [{k: v[0] for k, v in _batch(1, h=8, w=8, seed=s).items()} for s in range(2)]
            for s, item in enumerate(self.items):
                item['lq_path'] = f'val{s}.png'

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    class _TbLogger:

        def __init__(self):
            self.images, self.scalars = {}, {}

        def add_image(self, tag, img, step, dataformats='CHW'):
            self.images[tag] = (img, step, dataformats)

        def add_scalar(self, tag, value, step):
            self.scalars[tag] = (value, step)

    loader = torch.utils.data.DataLoader(_Val(), batch_size=1)
    tb_logger = _TbLogger()
    model.validation(loader, current_iter=5, tb_logger=tb_logger, save_img=True)
    assert set(model.metric_results) == {'psnr', 'ssim'}
    assert all(torch.isfinite(torch.tensor(float(v))) for v in model.metric_results.values())
    for s in range(2):
        folder = osp.join(model.opt['path']['visualization'], f'val{s}')
        sr = cv2.imread(osp.join(folder, f'val{s}_5.png'))
        # the maps that conditioned the result are saved beside it, at its size
        for kind in ('depth', 'kvar'):
            side = cv2.imread(osp.join(folder, f'val{s}_5_{kind}.png'))
            assert side is not None and side.shape == sr.shape
    for s in range(2):
        for kind in ('sr', 'depth', 'kvar'):
            img, step, fmt = tb_logger.images[f'val/tiny_val/val{s}/{kind}']
            assert step == 5 and fmt == 'HWC' and img.shape == sr.shape
    assert set(tb_logger.scalars) == {'metrics/tiny_val/psnr', 'metrics/tiny_val/ssim'}
    # the depth image shows the depth that was fed in: two different validation depths, two images
    depth_0 = tb_logger.images['val/tiny_val/val0/depth'][0]
    depth_1 = tb_logger.images['val/tiny_val/val1/depth'][0]
    assert not np.array_equal(depth_0, depth_1)


def test_adain_color_fix_matches_reference_statistics():
    torch.manual_seed(0)
    img, ref = torch.rand(2, 3, 16, 16) * 0.5, torch.rand(2, 3, 16, 16) * 0.3 + 0.4
    out = adain_color_fix(img, ref)
    torch.testing.assert_close(out.mean((2, 3)), ref.mean((2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std((2, 3)), ref.std((2, 3)), atol=1e-3, rtol=0)


def test_wavelet_color_fix_takes_low_band_from_reference():
    torch.manual_seed(1)
    img = torch.rand(1, 3, 32, 32) * 0.4 + 0.3
    high, low = wavelet_decompose(img)
    torch.testing.assert_close(high + low, img)
    ref = (img + 0.1).clamp(0, 1)  # same detail, shifted colour
    out = wavelet_color_fix(img, ref)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='differ'):
        wavelet_color_fix(img, ref[..., :16])


def test_sr_with_a_frozen_svkr_estimates_the_maps(tmp_path, pca_path):
    from basicsr.archs import build_network
    opt = _opt(tmp_path, pca_path)
    opt['network_g'].pop('pca_path')  # the basis then comes from the SVKR's NBSR
    opt['network_svkr'] = dict(
        type='SVKR',
        num_iter=1,
        gamma=0.9,
        scale=SCALE,
        kernel_size=21,
        depth_opt=dict(type='MonocularDepth', backend='prior'),
        kernel_opt=dict(type='DKENet', num_feat=[8, 16], num_depth_feat=[8, 8], reduction=2),
        sr_opt=dict(type='NBSR', num_feat=8, num_block=1, num_grow_ch=8, num_cond=8, pca_path=pca_path))
    torch.manual_seed(0)
    svkr_ckpt = str(tmp_path / 'svkr.pth')
    torch.save({'params': build_network(copy.deepcopy(opt['network_svkr'])).state_dict()}, svkr_ckpt)
    opt['path']['pretrain_network_svkr'] = svkr_ckpt
    opt['conditions'] = dict(source='svkr')
    model = _build(opt)
    assert model.bare_g.has_pca
    assert not any(p.requires_grad for p in model.net_svkr.parameters())
    lq = _batch(batch=1)['lq']
    out = model.sr(lq)
    assert out['sr'].shape == (1, 3, 16, 16)
    assert out['depth'].shape == (1, 1, 4, 4) and out['kernel'].shape == (1, 441, 4, 4)
    torch.testing.assert_close(out['kernel'].sum(1), torch.ones(1, 4, 4), atol=1e-4, rtol=0)


def test_option_files_full_and_table2_ablations():
    import yaml
    root = osp.join(osp.dirname(__file__), osp.pardir, 'options')
    with open(osp.join(root, 'train_ssr.yml')) as f:
        full = yaml.safe_load(f)
    assert full['model_type'] == 'SSRModel' and full['scale'] == 4
    assert full['network_g']['amf']['hidden'] == 128 and full['network_g']['kernel_size'] == 21
    assert full['network_svkr']['num_iter'] == 3 and full['network_svkr']['gamma'] == 0.9
    assert full['network_g']['modalities'] == ['kernel', 'depth', 'lr']
    expected = {'kernel_only': ['kernel', 'lr'], 'depth_only': ['depth', 'lr'], 'no_svkr': ['kernel', 'depth', 'lr']}
    for name, modalities in expected.items():
        with open(osp.join(root, f'train_ssr_ablation_{name}.yml')) as f:
            abl = yaml.safe_load(f)
        assert abl['network_g']['modalities'] == modalities
        assert abl['network_svkr']['num_iter'] == 0
        # nothing else differs from the full setting but the experiment name
        for key in ('network_g', 'network_svkr'):
            a, b = dict(abl[key]), dict(full[key])
            for d in (a, b):
                d.pop('modalities', None), d.pop('num_iter', None)
            assert a == b, (name, key)
        assert {k: v for k, v in abl.items() if k not in ('name', 'network_g', 'network_svkr')} == \
            {k: v for k, v in full.items() if k not in ('name', 'network_g', 'network_svkr')}


def test_v_prediction_and_ddim_options(tmp_path, pca_path):
    opt = _opt(tmp_path, pca_path, lambda_depth=0)
    opt['diffusion'].update(prediction_type='v_prediction', sampler='ddim')
    model = _build(opt)
    assert model.pipeline.scheduler.config.prediction_type == 'v_prediction'
    assert torch.isfinite(torch.tensor(_step(model, _batch(), 0)))
    assert 'l_c_depth' not in model.log_dict and 'l_c_kernel' in model.log_dict
    from ssr_utils.errors import OptionError
    opt['diffusion']['sampler'] = 'euler'
    with pytest.raises(OptionError, match='sampler'):
        _build(opt)
