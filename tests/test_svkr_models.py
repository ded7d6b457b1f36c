"""DKENetModel, NBSRModel, SVKRModel in process: train a few iterations, save, resume, validate (CPU, tiny)."""
import math
import os
import os.path as osp
import re
import shutil
import sys
import uuid
from copy import deepcopy

import pytest
import torch
import yaml
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import ssr_arch  # noqa: F401
import ssr_models  # noqa: F401
from basicsr.models import build_model
from conftest import ROOT, run_python
from ssr_arch.nbsr_arch import NBSR
from ssr_data.kernels import kernel_map_from_params
from test_svkr_archs import TINY_KE, TINY_SR, K, _TestDepth  # noqa: F401  (registers _TestDepth)

SCALE = 2


class _TinySet(Dataset):
    """Samples with the keys of docs/interfaces.md §5 (lq, gt, depth, depth_lq, kernel, lq_path, gt_path)."""

    def __init__(self, num, hr=24, name='tiny', with_kernel=True, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        h = hr // SCALE
        for i in range(num):
            gt = F.interpolate(torch.rand(1, 3, hr // 4, hr // 4, generator=g), size=(hr, hr), mode='bilinear',
                               align_corners=False)[0]
            depth = torch.linspace(0, 1, hr).expand(1, hr, hr).clone()
            depth_lq = F.interpolate(depth[None], size=(h, h), mode='area')[0]
            sigma = 0.4 + 1.5 * depth_lq[0]
            kernel = kernel_map_from_params(sigma, 0.6 * sigma, torch.full((h, h), 0.3 * i), K)[0]
            lq = F.avg_pool2d(gt[None], SCALE)[0]
            item = {'lq': lq, 'gt': gt, 'depth': depth, 'depth_lq': depth_lq, 'lq_path': f'img{i:02d}.png',
                    'gt_path': f'img{i:02d}.png'}
            if with_kernel:
                item['kernel'] = kernel
            self.items.append(item)
        self.opt = {'name': name}

    def __len__(self):
        return len(self.items)

    def __getitem__(self, idx):
        return self.items[idx]


class _TB:
    """Records what the model logs to TensorBoard."""

    def __init__(self):
        self.scalars, self.images = {}, {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = value

    def add_image(self, tag, img, step, dataformats='CHW'):
        self.images[tag] = (img.shape, dataformats)


def _opt(tmp_path, model_type, network_g, train_extra, metrics, name='m'):
    root = tmp_path / name
    paths = {k: str(root / k) for k in ('models', 'training_states', 'visualization', 'log')}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    paths.update(pretrain_network_g=None, strict_load_g=True, resume_state=None, experiments_root=str(root))
    train = {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [100],
                                                                   'gamma': 0.5}, 'total_iter': 10}
    train.update(train_extra)
    return {'name': name, 'model_type': model_type, 'is_train': True, 'num_gpu': 0, 'dist': False, 'rank': 0,
            'world_size': 1, 'scale': SCALE, 'network_g': network_g, 'path': paths, 'train': train,
            'val': {'save_img': True, 'metrics': metrics, 'tb_images': 1}}


def _batches(dataset, batch_size=2):
    return list(DataLoader(dataset, batch_size=batch_size, shuffle=False))


def _train_save_resume(opt, dataset, iters=3):
    model = build_model(deepcopy(opt))
    params0 = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    for it, batch in zip(range(1, iters + 1), _batches(dataset) * iters):
        model.feed_data(batch)
        model.optimize_parameters(it)
        model.update_learning_rate(it)
        assert all(math.isfinite(float(v)) for v in model.get_current_log().values())
    changed = [k for k, v in model.net_g.state_dict().items() if not torch.equal(v, params0[k])]
    assert changed, 'training changed no weight'
    model.save(0, iters)
    ckpt = osp.join(opt['path']['models'], f'net_g_{iters}.pth')
    state_path = osp.join(opt['path']['training_states'], f'{iters}.state')
    assert osp.isfile(ckpt) and osp.isfile(state_path)

    # resume as BasicSR does: weights from the checkpoint, optimizer/scheduler from the state
    opt2 = deepcopy(opt)
    opt2['path']['pretrain_network_g'] = ckpt
    resumed = build_model(opt2)
    resumed.resume_training(torch.load(state_path, map_location='cpu', weights_only=False))
    for k, v in model.net_g.state_dict().items():
        torch.testing.assert_close(resumed.net_g.state_dict()[k], v)
    if model.ema is not None:  # the average of the trainable parameters comes back from params_ema
        assert resumed.ema.keys() == model.ema.keys()
        for k, v in model.ema.items():
            assert torch.equal(resumed.ema[k], v)
    s1, s2 = model.optimizer_g.state_dict()['state'], resumed.optimizer_g.state_dict()['state']
    assert s1.keys() == s2.keys() and all(torch.equal(s1[i]['exp_avg'], s2[i]['exp_avg']) for i in s1)
    assert resumed.schedulers[0].last_epoch == model.schedulers[0].last_epoch > 0
    # and keeps training
    batch = _batches(dataset)[0]
    resumed.feed_data(batch)
    resumed.optimize_parameters(iters + 1)
    return resumed


def _validate(model, dataset):
    tb = _TB()
    loader = DataLoader(dataset, batch_size=1, shuffle=False)
    model.validation(loader, 7, tb, save_img=True)
    return tb


def test_dkenet_model_trains_resumes_validates(tmp_path):
    torch.manual_seed(0)
    net = dict(TINY_KE, scale=SCALE)
    opt = _opt(tmp_path, 'DKENetModel', net, {'kernel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
               {'kernel_psnr': {'type': 'calculate_kernel_psnr'}})
    model = _train_save_resume(opt, _TinySet(2))
    tb = _validate(model, _TinySet(2, name='val'))
    psnr = model.all_metric_results['kernel_psnr']
    assert 10 < psnr < 200
    vis = osp.join(opt['path']['visualization'], 'img00')
    assert sorted(os.listdir(vis)) == ['img00_7_depth.png', 'img00_7_kvar.png', 'img00_7_kvar_gt.png']
    assert 'metrics/val/kernel_psnr' in tb.scalars
    # the LR input and the ground truth beside the maps, logged once (not again at the next validation)
    assert set(tb.images) == {f'val/val/img00/{k}' for k in ('depth', 'kvar', 'kvar_gt', 'lr', 'gt')}
    again = _validate(model, _TinySet(2, name='val'))
    assert set(again.images) == {f'val/val/img00/{k}' for k in ('depth', 'kvar', 'kvar_gt')}


def test_nbsr_model_trains_resumes_validates(tmp_path):
    torch.manual_seed(0)
    net = dict(TINY_SR, scale=SCALE)
    opt = _opt(tmp_path, 'NBSRModel', net, {'pixel_opt': {'type': 'L1Loss'}, 'ema_decay': 0.9},
               {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE}, 'ssim': {'type': 'calculate_ssim',
                                                                                 'crop_border': SCALE}})
    model = _train_save_resume(opt, _TinySet(2))
    ckpt = torch.load(osp.join(opt['path']['models'], 'net_g_3.pth'), weights_only=True)
    assert set(ckpt) == {'params', 'params_ema'}
    tb = _validate(model, _TinySet(2, name='val'))
    assert 5 < model.all_metric_results['psnr'] < 100 and 0 < model.all_metric_results['ssim'] <= 1
    assert 'img00_7.png' in os.listdir(osp.join(opt['path']['visualization'], 'img00'))
    assert 'val/val/img00/sr' in tb.images
    with pytest.raises(KeyError, match='kernel'):
        model.feed_data(_batches(_TinySet(1, with_kernel=False))[0])


def test_nbsr_model_draws_the_code_scale_from_its_training_kernels(tmp_path):
    """Without network_g:kernel_distribution, NBSRModel builds NBSR on the kernel keys of datasets:train."""
    narrow = {'sigma_range': [0.2, 1.5], 'rho_min': 0.5}
    opt = _opt(tmp_path, 'NBSRModel', dict(TINY_SR, scale=SCALE), {'pixel_opt': {'type': 'L1Loss'}}, {})
    opt['datasets'] = {'train': dict(narrow, type='SSRDegradationDataset', gt_size=32, use_noise=False)}
    model = build_model(deepcopy(opt))
    net_kw = {k: v for k, v in TINY_SR.items() if k != 'type'}
    expected = NBSR(scale=SCALE, kernel_distribution=narrow, **net_kw).code_scale
    assert torch.equal(model.net_g.code_scale, expected)
    assert not torch.allclose(expected, NBSR(scale=SCALE, **net_kw).code_scale, rtol=0.05)
    opt['network_g']['kernel_distribution'] = {}  # an explicit network option wins
    assert torch.equal(build_model(opt).net_g.code_scale, NBSR(scale=SCALE, **net_kw).code_scale)


def test_svkr_model_per_iterate_metrics(tmp_path):
    torch.manual_seed(0)
    net = {'type': 'SVKR', 'num_iter': 2, 'gamma': 0.9, 'scale': SCALE, 'depth_opt': {'type': '_TestDepth'},
           'kernel_opt': TINY_KE, 'sr_opt': TINY_SR}
    opt = _opt(tmp_path, 'SVKRModel', net, {'pixel_opt': {'type': 'L1Loss'}, 'kernel_opt': {'type': 'L1Loss'},
                                            'ema_decay': 0.5, 'grad_clip': 1.0, 'all_iterates': True},
               {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE}, 'kpsnr': {'type': 'calculate_kernel_psnr'}})
    model = _train_save_resume(opt, _TinySet(2))
    tb = _validate(model, _TinySet(1, name='val'))
    res = model.all_metric_results
    expected = {f'{m}{s}' for m in ('psnr', 'kpsnr') for s in ('', '_t0', '_t1', '_t2')}
    assert set(res) == expected
    assert res['psnr'] == res['psnr_t2'] and res['kpsnr'] == res['kpsnr_t2']
    assert set(model.metric_results) == {'psnr', 'kpsnr'}
    assert {f'metrics/val/{k}' for k in expected} <= set(tb.scalars)
    files = os.listdir(osp.join(opt['path']['visualization'], 'img00'))
    assert {'img00_7.png', 'img00_7_depth.png', 'img00_7_kvar.png', 'img00_7_kvar_gt.png'} <= set(files)


def test_svkr_model_ground_truth_kernel_loss_trains_nbsr_on_the_true_kernels(tmp_path):
    """train:gt_kernel_pixel_opt adds the L1 of NBSR given the sample's ground-truth kernels (through SVKR's
    forward, so DDP sees it) to the loop's losses."""
    torch.manual_seed(0)
    net = {'type': 'SVKR', 'num_iter': 1, 'scale': SCALE, 'depth_opt': {'type': '_TestDepth'},
           'kernel_opt': TINY_KE, 'sr_opt': TINY_SR}
    opt = _opt(tmp_path, 'SVKRModel', net, {'pixel_opt': {'type': 'L1Loss'},
                                            'gt_kernel_pixel_opt': {'type': 'L1Loss', 'loss_weight': 0.5}}, {})
    model = build_model(opt)
    batch = _batches(_TinySet(2))[0]
    model.feed_data(batch)
    with torch.no_grad():
        expected = 0.5 * F.l1_loss(model.net_g.sr_net(model.lq, model.kernel_gt), model.gt)
        _, losses = model.compute_losses()
    assert torch.allclose(losses['l_pix_gt_kernel'], expected)
    # the term alone moves NBSR towards what it gives with the true kernels: its gradient is that loss's
    model.net_g.zero_grad()
    model.compute_losses()[1]['l_pix_gt_kernel'].backward()
    grads = {n: p.grad for n, p in model.net_g.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith('sr_net.') for n in grads)
    model.optimize_parameters(1)
    assert 'l_pix_gt_kernel' in model.get_current_log()
    batch.pop('kernel')
    model.feed_data(batch)
    with pytest.raises(KeyError, match='gt_kernel_pixel_opt'):
        model.compute_losses()


def test_shipped_stage3_files_keep_nbsr_on_the_true_kernels():
    """Every shipped file that trains SVKR with a trainable NBSR keeps stage 2's loss on the ground-truth kernels:
    without it NBSR stops reading its kernels (issue 20; docs/svkr.md, "Stage 3 and the kernel input")."""
    import glob
    checked = []
    for path in sorted(glob.glob(osp.join(ROOT, 'options', 'train_*.yml'))):
        with open(path) as f:
            opt = yaml.safe_load(f)
        if opt.get('model_type') != 'SVKRModel' or opt['network_g'].get('freeze_sr'):
            continue
        loss = (opt.get('train') or {}).get('gt_kernel_pixel_opt')
        assert loss and loss.get('loss_weight', 1.0) > 0, f'{osp.basename(path)}: train:gt_kernel_pixel_opt'
        checked.append(osp.basename(path))
    assert {'train_svkr.yml', 'train_svkr_demo.yml'} <= set(checked)


def test_svkr_model_validates_without_gt_kernel(tmp_path):
    net = {'type': 'SVKR', 'num_iter': 1, 'scale': SCALE, 'depth_opt': {'type': '_TestDepth'},
           'kernel_opt': TINY_KE, 'sr_opt': TINY_SR}
    opt = _opt(tmp_path, 'SVKRModel', net, {'pixel_opt': {'type': 'L1Loss'}},
               {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE}, 'kpsnr': {'type': 'calculate_kernel_psnr'}})
    model = build_model(opt)
    _validate(model, _TinySet(1, name='val', with_kernel=False))
    assert 'psnr' in model.all_metric_results and 'kpsnr' not in model.all_metric_results


def test_nonfinite_loss_skips_step_and_nan_weights_are_never_saved(tmp_path, caplog):
    torch.manual_seed(0)
    opt = _opt(tmp_path, 'NBSRModel', dict(TINY_SR, scale=SCALE), {'pixel_opt': {'type': 'L1Loss'},
                                                                   'max_nonfinite_steps': 3}, {})
    model = build_model(opt)
    batch = _batches(_TinySet(2))[0]
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    batch_nan = dict(batch, gt=batch['gt'] * float('nan'))
    model.feed_data(batch_nan)
    model.optimize_parameters(5)
    for k, v in model.net_g.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.nonfinite_total == 1
    assert model.get_current_log()['nonfinite_skips'] == 1
    model.feed_data(batch)
    model.optimize_parameters(6)  # a finite step resets the streak
    assert model.nonfinite_streak == 0
    model.feed_data(batch_nan)
    model.optimize_parameters(7)
    model.optimize_parameters(8)
    with pytest.raises(RuntimeError, match='iter 9'):
        model.optimize_parameters(9)
    # poisoned weights: save refuses, nothing is written
    with torch.no_grad():
        model.net_g.conv_last.weight.fill_(float('nan'))
    model.save(0, 10)
    assert not os.listdir(opt['path']['models']) and not os.listdir(opt['path']['training_states'])


def test_gradient_clipping_bounds_the_update(tmp_path):
    torch.manual_seed(0)
    clip, lr = 1e-3, 1.0
    opt = _opt(tmp_path, 'DKENetModel', dict(TINY_KE, scale=SCALE),
               {'kernel_opt': {'type': 'L1Loss', 'loss_weight': 1e4}, 'grad_clip': clip,
                'optim_g': {'type': 'SGD', 'lr': lr}}, {})
    model = build_model(opt)
    before = [p.detach().clone() for p in model.net_g.parameters()]
    model.feed_data(_batches(_TinySet(2))[0])
    model.optimize_parameters(1)
    step = torch.sqrt(sum(((p.detach() - b)**2).sum() for p, b in zip(model.net_g.parameters(), before)))
    assert 0 < step <= lr * clip * (1 + 1e-4)


def test_the_old_amp_key_stops_with_the_new_name(tmp_path):
    from ssr_utils.errors import OptionError
    opt = _opt(tmp_path, 'NBSRModel', dict(TINY_SR, scale=SCALE), {'pixel_opt': {'type': 'L1Loss'},
                                                                   'use_amp': True}, {})
    with pytest.raises(OptionError, match='train:use_amp.*train:amp'):
        build_model(opt)


# ------------------------------------------------------------------------------------------------------
# the three stages through BasicSR's launchers with the shipped demo option files (shrunk to toy sizes)
# ------------------------------------------------------------------------------------------------------
def _stage_data(root):
    import cv2
    import numpy as np
    import skimage.data

    sys.path.insert(0, osp.join(ROOT, 'scripts'))
    from ssr_app.tools.make_sv_testset import make_sv_testset
    from ssr_data.kernels import KernelPCA, random_kernels
    hr = root / 'hr'
    hr.mkdir()
    for name in ('astronaut', 'rocket', 'coffee'):
        cv2.imwrite(str(hr / f'{name}.png'), np.ascontiguousarray(getattr(skimage.data, name)()[100:164, 100:164,
                                                                                                  ::-1]))
    val = [(n, np.ascontiguousarray(getattr(skimage.data, n)()[50:98, 60:108, ::-1])) for n in ('chelsea', )]
    make_sv_testset(val, str(root / 'val'), scale=4, kernel_size=21, pattern='depth', seed=0, show_progress=False)
    KernelPCA.fit(random_kernels(500, 21, seed=0), 10).save(str(root / 'pca.pth'))
    return root


def _shrink(opt_file, name, data, total_iter, **network):
    with open(osp.join(ROOT, 'options', opt_file)) as f:
        opt = yaml.safe_load(f)
    opt['name'] = name
    for phase, dset in opt['datasets'].items():
        if dset['type'] == 'SSRDegradationDataset':
            dset.update(dataroot_gt=str(data / 'hr'), gt_size=32, batch_size_per_gpu=2, dataset_enlarge_ratio=1)
            dset.pop('dataroot_depth')  # no depth LMDB: the dataset runs the weight-free prior
        else:
            dset['dataroot'] = str(data / 'val')
    opt['network_g'].update(network)
    if 'depth_opt' in opt['network_g']:  # the demo's trained depth network is tested in test_depth_training.py
        opt['network_g']['depth_opt'] = {'type': 'MonocularDepth', 'backend': 'prior'}
    if 'train' in opt:
        opt['train']['total_iter'] = total_iter
        opt['train']['scheduler'] = {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}
        opt['logger'].update(print_freq=1, save_checkpoint_freq=2)
        opt['val']['val_freq'] = 2
    return opt


def _demo_network(opt_file):
    with open(osp.join(ROOT, 'options', opt_file)) as f:
        return yaml.safe_load(f)['network_g']


def _run_stage(tmp_path, opt, *flags):
    path = tmp_path / f'{opt["name"]}_{opt.get("train", {}).get("total_iter", "test")}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    script = 'basicsr/train.py' if 'train' in opt else 'basicsr/test.py'
    proc = run_python([script, '-opt', str(path), *flags], timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


@pytest.fixture
def stage_names():
    tag = uuid.uuid4().hex[:6]
    names = {k: f'pytest_{k}_{tag}' for k in ('dkenet', 'nbsr', 'svkr', 'test')}
    yield names
    for name in names.values():
        for folder in ('experiments', 'tb_logger', 'results'):
            shutil.rmtree(osp.join(ROOT, folder, name), ignore_errors=True)


def _assert_tensorboard_has_lr_and_images(log_dir, dataset, image, with_sr=True):
    """The event files hold the learning rate at every printed iteration and the LR, GT and SR (or, for the
    kernel estimator, the kernel-variance map) images of the validation image side by side."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(log_dir, size_guidance={'images': 0, 'scalars': 0})
    events.Reload()
    lrs = events.Scalars('train/learning_rate')
    assert [e.step for e in lrs] == [1, 2] and all(e.value > 0 for e in lrs)
    tags = set(events.Tags()['images'])
    sizes = {}
    for kind in ('lr', 'gt', 'sr' if with_sr else 'kvar'):
        tag = f'val/{dataset}/{image}/{kind}'
        assert tag in tags, sorted(tags)
        entry = events.Images(tag)[0]
        sizes[kind] = (entry.height, entry.width)
    assert sizes['gt'] == (4 * sizes['lr'][0], 4 * sizes['lr'][1])
    # the SR at HR size; the kernel estimator's kernel-variance map at the size of its kernel map (LR)
    assert sizes['sr'] == sizes['gt'] if with_sr else sizes['kvar'] == sizes['lr']


def test_stages_train_auto_resume_and_test_through_launchers(tmp_path, stage_names):
    data = _stage_data(tmp_path)
    tiny_ke = {'num_feat': [8, 12], 'num_depth_feat': [4, 6]}
    tiny_sr = {'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4, 'num_cond': 8, 'pca_path': str(data / 'pca.pth')}
    stages = {
        'dkenet': ('train_dkenet_demo.yml', tiny_ke),
        'nbsr': ('train_nbsr_demo.yml', tiny_sr),
        'svkr': ('train_svkr_demo.yml', {
            # the demo file's kernel_opt (e.g. defocus_input, as its DKENet stage) at the tiny widths
            'kernel_opt': dict(_demo_network('train_svkr_demo.yml')['kernel_opt'], **tiny_ke),
            'sr_opt': dict(type='NBSR', **tiny_sr),
            'pretrain_network_kernel': osp.join(ROOT, 'experiments', stage_names['dkenet'], 'models',
                                                'net_g_latest.pth'),
            'pretrain_network_sr': osp.join(ROOT, 'experiments', stage_names['nbsr'], 'models', 'net_g_latest.pth')}),
    }
    for stage, (opt_file, net) in stages.items():
        name = stage_names[stage]
        out = _run_stage(tmp_path, _shrink(opt_file, name, data, 2, **net))
        # every stage logs its trainable fraction (stage 3 with a frozen DKENet: a part of it)
        frac = re.search(r'(\w+): ([\d,]+) of ([\d,]+) parameters trainable \(([\d.]+)%\)', out)
        assert frac is not None, out[-3000:]
        n_train, n_total = (int(frac.group(i).replace(',', '')) for i in (2, 3))
        assert frac.group(1) == {'dkenet': 'DKENet', 'nbsr': 'NBSR', 'svkr': 'SVKR'}[stage]
        assert 0 < n_train <= n_total and abs(float(frac.group(4)) - 100.0 * n_train / n_total) < 0.01
        _assert_tensorboard_has_lr_and_images(osp.join(ROOT, 'tb_logger', name), 'demo_val_x4', 'chelsea',
                                              with_sr=stage != 'dkenet')
        last = 2
        if stage == 'svkr':  # (the in-process tests resume every model; one launcher run is enough here)
            # a second run with a larger budget picks the run up where it stopped
            out = _run_stage(tmp_path, _shrink(opt_file, name, data, 4, **net), '--auto_resume')
            assert 'Resuming training from epoch' in out and 'iter: 2.' in out, out[-3000:]
            last = 4
        models = sorted(os.listdir(osp.join(ROOT, 'experiments', name, 'models')))
        assert models == sorted({'net_g_2.pth', f'net_g_{last}.pth', 'net_g_latest.pth'})
        assert os.listdir(osp.join(ROOT, 'tb_logger', name))
        vis = osp.join(ROOT, 'experiments', name, 'visualization', 'chelsea')
        assert f'chelsea_{last}_kvar.png' in os.listdir(vis)
    # stage 3 validation scored every iterate t = 0..3
    assert all(f'kernel_psnr_t{t}' in out and f'psnr_t{t}' in out for t in range(4))

    # basicsr/test.py on the stage 3 result, with the shipped test option file
    test = _shrink('test_svkr_demo.yml', stage_names['test'], data, None, **stages['svkr'][1])
    for key in ('pretrain_network_kernel', 'pretrain_network_sr'):
        test['network_g'].pop(key)
    test['path']['pretrain_network_g'] = osp.join(ROOT, 'experiments', stage_names['svkr'], 'models',
                                                  'net_g_latest.pth')
    _run_stage(tmp_path, test)
    files = os.listdir(osp.join(ROOT, 'results', stage_names['test'], 'visualization', 'demo_val_x4'))
    stem = f'chelsea_{stage_names["test"]}'
    assert {f'{stem}.png', f'{stem}_depth.png', f'{stem}_kvar.png', f'{stem}_kvar_gt.png'} <= set(files)
