"""The depth stage: SSI loss, depth metrics, SceneDepthDataset, TransformersDepthNet folders, DepthModel through
basicsr/train.py, and the option check for depth networks."""
import logging
import os
import os.path as osp
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, basicsr_messages, run_python
import ssr_arch  # noqa: F401,E402  (registers the archs, datasets and models the option check looks up)
import ssr_data  # noqa: F401,E402
import ssr_models  # noqa: F401,E402
from ssr_arch.depth_arch import MonocularDepth, TransformersDepthNet, minmax_normalise
from ssr_data.scene_depth_dataset import SceneDepthDataset
from ssr_utils.errors import OptionError
from ssr_utils.option_check import check_options
from ssr_utils.depth_loss import ScaleShiftInvariantLoss
from ssr_utils.relative_depth import align_scale_shift, depth_accuracy, normalise_median_mad

transformers = pytest.importorskip('transformers')

TINY_DPT = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                patch_size=8, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, reassemble_factors=[2, 1, 0.5, 0.25],
                backbone_out_indices=[0, 1, 2, 3], head_hidden_size=8)
# DPT-hybrid (MiDaS's DPT-Hybrid layout): a BiT conv stem of total stride 16 feeds the ViT, and its first two
# stages feed the neck directly (the demo's depth network)
TINY_HYBRID = dict(is_hybrid=True, backbone_config=dict(model_type='bit', global_padding='same', layer_type='bottleneck',
                                                         depths=[1, 1, 1], hidden_sizes=[8, 16, 16], embedding_size=8,
                                                         out_features=['stage1', 'stage2', 'stage3'], num_groups=4,
                                                         embedding_dynamic_padding=True),
                   backbone_featmap_shape=[1, 16, 2, 2], image_size=32, patch_size=16, hidden_size=16,
                   num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, backbone_out_indices=[0, 1, 2, 3],
                   reassemble_factors=[1, 1, 1, 0.5], neck_hidden_sizes=[8, 16, 16, 16], fusion_hidden_size=8,
                   head_hidden_size=8)
TINY_DA = dict(backbone_config=dict(model_type='dinov2', hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                    intermediate_size=32, image_size=32, patch_size=8,
                                    out_features=['stage1', 'stage2', 'stage3', 'stage4'], reshape_hidden_states=False),
               patch_size=8, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=8,
               reassemble_hidden_size=16, reassemble_factors=[2, 1, 0.5, 0.25])


def _maps(seed=0, b=2, h=24, w=20):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 1, h, w, generator=g)
    pred = target + 0.3 * torch.rand(b, 1, h, w, generator=g)  # related to the target, not affinely
    return pred, target


# ------------------------------------------------------------------------------------------------ loss
@pytest.mark.parametrize('alignment', ['median', 'lstsq'])
def test_ssi_loss_is_invariant_to_scale_and_shift_of_the_prediction(alignment):
    pred, target = _maps()
    loss = ScaleShiftInvariantLoss(alignment=alignment)
    base = loss(pred, target)
    assert base > 0.01
    for a, b in ((3.0, -2.0), (0.01, 5.0), (250.0, 0.0)):
        torch.testing.assert_close(loss(a * pred + b, target), base, rtol=2e-4, atol=1e-5)
    # any affine copy of the target is a perfect prediction, data and gradient terms alike
    assert loss(4 * target + 1, target) < 1e-5
    # not a constant: a non-affine change of the prediction changes the loss
    assert abs(loss(pred**3, target) - base) > 1e-3
    # the gradient matching term counts
    assert abs(ScaleShiftInvariantLoss(alignment=alignment, grad_weight=0)(pred, target) - base) > 1e-3


def test_ssi_loss_sign_and_mask():
    pred, target = _maps(1)
    median, lstsq = ScaleShiftInvariantLoss(alignment='median'), ScaleShiftInvariantLoss(alignment='lstsq')
    # least squares takes a negative scale too; the median/MAD normalisation fixes the sign (near = large)
    torch.testing.assert_close(lstsq(-pred, target), lstsq(pred, target), rtol=2e-4, atol=1e-5)
    assert median(-pred, target) > 2 * median(pred, target)
    # masked pixels do not count
    mask = torch.ones_like(target)
    mask[..., :5] = 0
    spoiled = pred.clone()
    spoiled[..., :5] = 100 * torch.rand_like(spoiled[..., :5])
    for loss in (median, lstsq):
        torch.testing.assert_close(loss(spoiled, target, mask), loss(pred, target, mask))
        assert abs(loss(spoiled, target) - loss(pred, target)) > 1e-2
    # a prediction at another resolution is resized to the target's
    assert torch.isfinite(median(pred[..., ::2, ::2], target))


def test_ssi_loss_gradients_flow():
    pred, target = _maps(2)
    pred.requires_grad_(True)
    ScaleShiftInvariantLoss()(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_alignment_and_median_normalisation():
    _, target = _maps(3)
    aligned, s, t = align_scale_shift(-2.5 * target + 0.7, target)
    torch.testing.assert_close(aligned, target, atol=1e-5, rtol=0)
    assert torch.allclose(s.flatten(), torch.full((2, ), -0.4), atol=1e-5)
    const, _, _ = align_scale_shift(torch.ones_like(target), target)  # no spread: the best constant
    torch.testing.assert_close(const, target.mean((1, 2, 3), keepdim=True).expand_as(target))
    n1, n2 = normalise_median_mad(target), normalise_median_mad(7 * target - 3)
    torch.testing.assert_close(n1, n2, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------- metrics
def test_depth_accuracy_by_hand():
    disparity = torch.tensor([[1.0, 1.0], [4.0, 4.0]])  # depths 1, 1, 0.25, 0.25
    exact = depth_accuracy(disparity, disparity)
    assert exact['absrel'][0] == pytest.approx(0) and exact['delta1'][0] == 1
    # any positive affine copy of the disparity (e.g. min-max normalised) is exact after alignment
    norm = depth_accuracy((disparity - 1) / 3, disparity)
    assert norm['absrel'][0] == pytest.approx(0, abs=1e-9) and norm['delta1'][0] == 1
    # a constant prediction aligns to the mean disparity 2.5, i.e. depth 0.4 everywhere:
    # AbsRel = (0.6/1 + 0.6/1 + 0.15/0.25 + 0.15/0.25) / 4 = 0.6; ratios 2.5 and 1.6: δ1 = 0
    flat = depth_accuracy(torch.zeros(2, 2), disparity)
    assert flat['absrel'][0] == pytest.approx(0.6) and flat['delta1'][0] == 0
    # an inverted prediction is aligned with a negative scale: it stays exact (the metric does not need the sign)
    assert depth_accuracy(-disparity, disparity)['absrel'][0] == pytest.approx(0, abs=1e-9)
    # through BasicSR's metric registry, batch mean
    from basicsr.metrics import calculate_metric
    batch = torch.stack([disparity, disparity])[:, None]
    pred = torch.stack([disparity, torch.zeros(2, 2)])[:, None]
    assert calculate_metric({'depth': pred, 'depth2': batch}, {'type': 'calculate_depth_absrel',
                                                                 'better': 'lower'}) == pytest.approx(0.3)
    assert calculate_metric({'depth': pred, 'depth2': batch}, {'type': 'calculate_depth_delta1'}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match='no valid pixel'):
        depth_accuracy(torch.rand(2, 2), torch.zeros(2, 2))


# --------------------------------------------------------------------------------------------- dataset
def test_scene_depth_dataset_generated_matches_stored(tmp_path):
    sys.path.insert(0, osp.join(ROOT, 'scripts'))
    from ssr_app.tools.make_scene_data import make_scene_data
    from ssr_data.scenes import SceneGenerator, default_texture_photos
    opts = dict(use_hflip=False)
    gen = SceneDepthDataset(dict(scenes=dict(num=3, seed=5, size=48, split='test', shared_dir=None), **opts))
    make_scene_data(str(tmp_path / 'lmdb'), 3, size=48, seed=5, split='test', shared_dir=None, show_progress=False)
    make_scene_data(str(tmp_path / 'folder'), 3, size=48, seed=5, split='test', fmt='folder', shared_dir=None,
                    show_progress=False)
    stored = [SceneDepthDataset(dict(dataroot_gt=str(tmp_path / 'lmdb' / 'hr.lmdb'),
                                     dataroot_depth=str(tmp_path / 'lmdb' / 'depth.lmdb'), **opts)),
              SceneDepthDataset(dict(dataroot_gt=str(tmp_path / 'folder' / 'image'),
                                     dataroot_depth=str(tmp_path / 'folder' / 'depth'), **opts))]
    scenes = SceneGenerator(default_texture_photos('test', shared_dir=None), 48)
    for i in range(3):
        a = gen[i]
        rgb, depth, meta = scenes.generate((5, i))
        assert a['lq_path'] == f'scene_{i:06d}' and a['img'].shape == (3, 48, 48)
        torch.testing.assert_close(a['img'], torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
        torch.testing.assert_close(a['depth'][0], torch.from_numpy(depth))
        lo, hi = meta['inv_depth_range']
        torch.testing.assert_close(a['disparity'], lo + a['depth'] * (hi - lo))
        assert float(a['disparity'].min()) > 0
        for ds in stored:
            b = ds[i]
            assert b['lq_path'] == a['lq_path']
            torch.testing.assert_close(b['img'], a['img'])
            torch.testing.assert_close(b['depth'], a['depth'], atol=1 / 65535, rtol=0)  # 16-bit PNG
            torch.testing.assert_close(b['disparity'], a['disparity'], atol=(hi - lo) / 65535, rtol=1e-6)


def test_scene_depth_dataset_crops_and_flips():
    ds = SceneDepthDataset(dict(scenes=dict(num=4, seed=0, size=64, shared_dir=None), gt_size=32,
                                crop_scale=[0.5, 0.9], use_hflip=True, aug_seed=3))
    full = SceneDepthDataset(dict(scenes=dict(num=4, seed=0, size=64, shared_dir=None), use_hflip=False))
    for i in range(4):
        s, f = ds[i], full[i]
        assert s['img'].shape == (3, 32, 32) and s['depth'].shape == s['disparity'].shape == (1, 32, 32)
        # nearest resampling: every depth value is one of the scene's own values
        assert np.isin(s['depth'].numpy(), f['depth'].numpy()).all()
        torch.testing.assert_close(ds[i]['img'], s['img'])  # aug_seed: sample i is fixed
    with pytest.raises(OptionError, match='scenes'):
        SceneDepthDataset(dict(scenes=dict(num=2), dataroot_gt='x', dataroot_depth='y'))
    with pytest.raises(OptionError, match='crop_scale'):
        SceneDepthDataset(dict(scenes=dict(num=2), crop_scale=[0.5, 1]))
    with pytest.raises(OptionError, match='scenes:split'):
        SceneDepthDataset(dict(scenes=dict(num=2, split='val')))


# ------------------------------------------------------------------------------------ network and folder
@pytest.mark.parametrize('backend,config,multiple', [('dpt', TINY_DPT, 8), ('dpt', TINY_HYBRID, 16),
                                                     ('depth_anything', TINY_DA, 8)])
def test_depth_net_folder_loads_through_monocular_depth(tmp_path, backend, config, multiple):
    torch.manual_seed(0)
    net = TransformersDepthNet(backend, config=config)
    # from scratch, the head's last ReLU starts active everywhere (a dead one never trains)
    out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 1, 32, 32) and (out > 0).all()
    with torch.no_grad():  # a trained-looking network: not the initial state
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.eval()
    folder = net.save_pretrained(str(tmp_path / 'net'))
    assert sorted(os.listdir(folder)) == ['config.json', 'model.safetensors', 'preprocessor_config.json']
    assert not [d for d in os.listdir(tmp_path) if d != 'net']  # no temporary folder left
    depth = MonocularDepth(backend, model_path=folder)
    assert depth.input_size == 32 and depth.multiple == multiple and not depth.keep_aspect_ratio
    img = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    expected = net.predict(img)
    assert expected.shape == (3, 1, 40, 56) and expected.std() > 0
    torch.testing.assert_close(depth(img), expected, atol=1e-6, rtol=0)
    # predict is the raw network output resized back and min-max normalised
    raw = torch.nn.functional.interpolate(net(img), size=(40, 56), mode='bicubic', align_corners=False)
    torch.testing.assert_close(expected, minmax_normalise(raw), atol=1e-6, rtol=0)
    # transformers reads the same preprocessing, and the folder fine-tunes from model_path
    proc = transformers.AutoImageProcessor.from_pretrained(folder)
    assert proc.size['height'] == 32 and list(proc.image_mean) == net.img_mean.flatten().tolist()
    again = TransformersDepthNet(backend, model_path=folder)
    torch.testing.assert_close(again.predict(img), expected, atol=1e-6, rtol=0)
    # writing again replaces the folder as a whole
    net.save_pretrained(folder)
    assert sorted(os.listdir(tmp_path)) == ['net']
    with pytest.raises(OptionError, match='config'):
        TransformersDepthNet(backend)
    bad = {'hidden_size': 15, 'num_attention_heads': 2} if backend == 'dpt' else {'depth_estimation_type': 'absolute'}
    with pytest.raises(OptionError, match='config'):
        TransformersDepthNet(backend, config=bad)


# ---------------------------------------------------------------------------------- option check
def _depth_block(**kw):
    return dict(type='MonocularDepth', **kw)


def test_option_check_names_the_depth_model_path(tmp_path):
    TransformersDepthNet('dpt', config=TINY_DPT).save_pretrained(str(tmp_path / 'dpt'))
    os.makedirs(tmp_path / 'empty')
    svkr = lambda depth: {'model_type': 'SVKRModel', 'network_g': {'type': 'SVKR', 'depth_opt': depth}}  # noqa: E731
    with pytest.raises(OptionError, match='network_g:depth_opt:model_path'):
        check_options(svkr(_depth_block(backend='dpt')))
    with pytest.raises(OptionError, match=r'network_g:depth_opt:model_path.*does not exist'):
        check_options(svkr(_depth_block(backend='dpt', model_path=str(tmp_path / 'nope'))))
    with pytest.raises(OptionError, match=r'network_g:depth_opt:model_path.*config.json'):
        check_options(svkr(_depth_block(backend='depth_anything', model_path=str(tmp_path / 'empty'))))
    with pytest.raises(OptionError, match='network_g:depth_opt:backend'):
        check_options(svkr(_depth_block(backend='midas')))
    with pytest.raises(OptionError, match='depth_estimator:model_path'):
        check_options({'model_type': 'DKENetModel', 'depth_estimator': _depth_block(backend='dpt')})
    check_options(svkr(_depth_block(backend='prior')))  # the prior: an explicit choice, nothing to load
    opt = svkr(_depth_block(backend='dpt', model_path='dpt'))  # relative: resolved against the root path
    check_options(opt, root_path=str(tmp_path))
    assert opt['network_g']['depth_opt']['model_path'] == str(tmp_path / 'dpt')


PAPER_SETTING_FILES = ['train_dkenet.yml', 'train_svkr.yml', 'train_ssr.yml', 'train_ssr_ablation_depth_only.yml',
                       'train_ssr_ablation_kernel_only.yml', 'train_ssr_ablation_no_svkr.yml', 'test_svkr.yml',
                       'test_ssr.yml']


def _depth_blocks(node, key=''):
    if isinstance(node, dict):
        if node.get('type') == 'MonocularDepth':
            yield key, node
        for k, v in node.items():
            yield from _depth_blocks(v, f'{key}:{k}' if key else k)


@pytest.mark.parametrize('name', PAPER_SETTING_FILES)
def test_paper_setting_files_name_a_depth_network(name, tmp_path):
    with open(osp.join(ROOT, 'options', name)) as f:
        opt = yaml.safe_load(f)
    blocks = list(_depth_blocks(opt))
    assert blocks, f'{name} has no MonocularDepth block'
    for key, block in blocks:
        assert block['backend'] == 'dpt' and block.get('model_path'), (name, key)
    # with the data and checkpoints out of the way, the missing depth folder stops the start-up by its key
    opt.pop('datasets', None)
    opt['path'] = {}

    def drop_pretrain(node):  # checkpoints, and the kernel PCA files that datasets/ holds
        for k in [k for k in node if isinstance(k, str) and (k.startswith('pretrain') or k == 'pca_path')]:
            node.pop(k)
        for v in node.values():
            if isinstance(v, dict):
                drop_pretrain(v)

    drop_pretrain(opt)
    with pytest.raises(OptionError, match=f'{blocks[0][0]}:model_path'):
        check_options(opt, root_path=str(tmp_path))


# ------------------------------------------------------------------------------ the stage, end to end
def _stage_options(name, total_iter=4):
    net = dict(type='TransformersDepthNet', backend='dpt', config=dict(TINY_DPT, use_batch_norm_in_fusion_residual=True))
    return {
        'name': name, 'model_type': 'DepthModel', 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': dict(name='scenes_train', type='SceneDepthDataset', scenes=dict(num=50, seed=0, size=40,
                          shared_dir=None), gt_size=32, crop_scale=[0.7, 1.0], use_hflip=True, num_worker_per_gpu=0,
                          batch_size_per_gpu=2, dataset_enlarge_ratio=1, prefetch_mode=None),
            'val': dict(name='scenes_test', type='SceneDepthDataset', scenes=dict(num=2, seed=1, size=48, split='test',
                        shared_dir=None), use_hflip=False)},
        'network_g': net,
        'path': dict(pretrain_network_g=None, strict_load_g=True, resume_state=None),
        'train': dict(ema_decay=0.9, optim_g=dict(type='AdamW', lr=1e-3), scheduler=dict(type='MultiStepLR',
                      milestones=[100], gamma=0.5), total_iter=total_iter, warmup_iter=-1,
                      depth_opt=dict(type='ScaleShiftInvariantLoss')),
        'val': dict(val_freq=2, save_img=True, tb_images=1, metrics=dict(
            absrel=dict(type='calculate_depth_absrel', better='lower'), delta1=dict(type='calculate_depth_delta1'))),
        'logger': dict(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False),
        'dist_params': dict(backend='gloo', port=29500),
    }


@pytest.fixture
def stage_name():
    name = f'pytest_depth_stage_{os.getpid()}'
    yield name
    for part in ('experiments', 'tb_logger'):
        shutil.rmtree(osp.join(ROOT, part, name), ignore_errors=True)


def test_depth_stage_trains_through_basicsr_and_writes_a_loadable_folder(tmp_path, stage_name):
    opt = _stage_options(stage_name)
    opt_path = tmp_path / 'train_depth_tiny.yml'
    opt_path.write_text(yaml.safe_dump(opt, sort_keys=False))
    proc = run_python(['basicsr/train.py', '-opt', str(opt_path)], timeout=900)  # a cap; ~1 min on an idle machine
    assert proc.returncode == 0, proc.stdout[-4000:]
    log = proc.stdout
    assert log.count('Validation scenes_test') >= 2  # iterations 2 and 4
    assert '# absrel:' in log and '# delta1:' in log
    exp = osp.join(ROOT, 'experiments', stage_name)
    folder = osp.join(exp, 'depth_model')
    assert sorted(os.listdir(folder)) == ['config.json', 'model.safetensors', 'preprocessor_config.json']
    assert f'model_path: {folder}' in log
    vis = osp.join(exp, 'visualization', 'scene_000000')
    assert {'scene_000000_2.png', 'scene_000000_4.png'} <= set(os.listdir(vis))  # and BasicSR's final validation
    # the folder holds the training's evaluation network (EMA): same predictions through MonocularDepth
    from basicsr.archs import build_network
    ckpt = torch.load(osp.join(exp, 'models', 'net_g_latest.pth'), map_location='cpu', weights_only=True)
    trained = build_network(dict(opt['network_g']))
    trained.load_state_dict(ckpt['params_ema'])
    raw = build_network(dict(opt['network_g']))
    raw.load_state_dict(ckpt['params'])
    img = SceneDepthDataset(opt['datasets']['val'])[0]['img'][None]
    loaded = MonocularDepth('dpt', model_path=folder)
    torch.testing.assert_close(loaded(img), trained.eval().predict(img), atol=1e-6, rtol=0)
    assert (loaded(img) - raw.eval().predict(img)).abs().max() > 1e-4  # EMA, not the raw weights
    # BatchNorm statistics follow the training network into the EMA (BasicSR averages parameters only)
    stats = [k for k in ckpt['params'] if k.endswith('running_mean')]
    assert stats and all(torch.equal(ckpt['params_ema'][k], ckpt['params'][k]) for k in stats)
    assert any(ckpt['params'][k].abs().sum() > 0 for k in stats)
    # export of an earlier checkpoint through the script
    out = tmp_path / 'exported'
    proc = run_python(['scripts/export_depth_model.py', '-opt', str(opt_path), '--checkpoint',
                       osp.join(exp, 'models', 'net_g_2.pth'), '--output', str(out), '--param-key', 'params'])
    assert proc.returncode == 0, proc.stdout[-2000:]
    early = build_network(dict(opt['network_g']))
    early.load_state_dict(torch.load(osp.join(exp, 'models', 'net_g_2.pth'), weights_only=True)['params'])
    torch.testing.assert_close(MonocularDepth('dpt', model_path=str(out))(img), early.eval().predict(img),
                               atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ the prior says so
def test_result_table_names_the_depth_source(tmp_path):
    import csv
    from ssr_arch.depth_arch import depth_note
    from ssr_utils.evaluation import ResultTable
    table = ResultTable(['psnr'], ['Bicubic', 'SVKR'], depth={'SVKR': 'prior'}, depth_note=depth_note(['prior']))
    table.add('a', 'Bicubic', {'psnr': 20.0})
    table.add('a', 'SVKR', {'psnr': 22.0})
    csv_path, md_path = table.write(str(tmp_path), 'set')
    rows = list(csv.reader(open(csv_path)))
    assert rows[0] == ['image', 'method', 'psnr', 'depth']
    assert ['a', 'SVKR', '22.0', 'prior'] in rows and ['a', 'Bicubic', '20.0', ''] in rows
    assert 'weight-free PRIOR' in open(md_path).read().splitlines()[2]
    assert depth_note(['dpt (weights/x)']) == 'depth: dpt (weights/x)' and depth_note([]) == ''


def _logged(fn):
    """Run ``fn()`` and return what it logged to BasicSR's logger at INFO and above."""
    with basicsr_messages(level=logging.INFO) as records:
        fn()
    return '\n'.join(records)


def test_validation_log_names_the_prior(tmp_path):
    from basicsr.models import build_model
    from test_svkr_archs import TINY_KE
    from test_svkr_models import SCALE, _opt, _TinySet, _validate
    opt = _opt(tmp_path, 'DKENetModel', dict(TINY_KE, scale=SCALE), {'kernel_opt': {'type': 'L1Loss'}},
               {'kernel_psnr': {'type': 'calculate_kernel_psnr'}})
    opt['depth_from'] = 'lq'
    opt['depth_estimator'] = {'type': 'MonocularDepth', 'backend': 'prior'}
    log = _logged(lambda: _validate(build_model(opt), _TinySet(1, name='val')))
    assert 'Validation val [depth: the weight-free PRIOR' in log
    # depth read from the data: the data set's own record of where it came from
    opt['depth_from'] = 'data'
    data = _TinySet(1, name='val2')
    data.depth_source = 'prior'
    assert 'Validation val2 [depth: the weight-free PRIOR' in _logged(lambda: _validate(build_model(opt), data))
    # a depth network is named, without the warning
    folder = TransformersDepthNet('dpt', config=TINY_DPT).save_pretrained(str(tmp_path / 'dpt'))
    opt['depth_from'] = 'lq'
    opt['depth_estimator'] = {'type': 'MonocularDepth', 'backend': 'dpt', 'model_path': folder}
    log = _logged(lambda: _validate(build_model(opt), _TinySet(1, name='val3')))
    assert f'Validation val3 [depth: dpt ({folder})]' in log and 'PRIOR' not in log


def test_depth_model_validates_through_the_base_loop():
    # DepthModel gives the base class's hooks (what to score, which images) and keeps its loop: averaging,
    # best values, saving, TensorBoard and the log line are the base's
    from ssr_models.depth_model import DepthModel
    from ssr_models.ssr_base_model import SSRBaseModel
    assert DepthModel.nondist_validation is SSRBaseModel.nondist_validation
    assert DepthModel.score_item is not SSRBaseModel.score_item
