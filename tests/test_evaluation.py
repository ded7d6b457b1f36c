"""ssr_utils/evaluation.py and SSRBenchmarkModel through ``basicsr/test.py`` on a tiny SV test set."""
import csv
import importlib.util
import os.path as osp
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

import ssr_arch  # noqa: F401
import ssr_models  # noqa: F401
from ssr_arch.ssr_unet_arch import tiny_config
from ssr_data.kernels import KernelPCA, random_kernels
from ssr_utils.evaluation import MetricSuite, ResultTable, side_by_side
from ssr_utils.pyiqa_metrics import MetricUnavailable, calculate_pyiqa

from conftest import ROOT, run_python

sys.path.insert(0, osp.join(ROOT, 'scripts'))
HAS_PYIQA = importlib.util.find_spec('pyiqa') is not None


def _imgs(seed=0, size=48):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    noisy = np.clip(gt.astype(np.int16) + rng.integers(-8, 9, gt.shape), 0, 255).astype(np.uint8)
    return noisy, gt


def test_metric_suite_matches_basicsr_and_reports_unavailable(caplog):
    from basicsr.metrics import calculate_psnr, calculate_ssim
    img, gt = _imgs()
    opts = {'psnr': dict(type='calculate_psnr', crop_border=4, test_y_channel=True),
            'ssim': dict(type='calculate_ssim', crop_border=4, test_y_channel=True),
            'lpips': dict(type='calculate_pyiqa', metric='lpips', better='lower',
                          pretrained_model_path='/nonexistent/lpips.pth'),
            'kernel_psnr': dict(type='calculate_kernel_psnr')}
    suite = MetricSuite(opts)
    k = torch.softmax(torch.randn(1, 441, 3, 3), 1)
    vals = suite.score(img, gt, k, k * 0.9 + 0.1 / 441)
    assert vals['psnr'] == pytest.approx(calculate_psnr(img, gt, 4, test_y_channel=True))
    assert vals['ssim'] == pytest.approx(calculate_ssim(img, gt, 4, test_y_channel=True))
    assert vals['lpips'] is None and 'lpips' in suite.unavailable
    reason = suite.unavailable['lpips']
    assert ('not installed' in reason) if not HAS_PYIQA else ('does not exist' in reason)
    assert np.isfinite(vals['kernel_psnr']) and vals['kernel_psnr'] > 20
    # without ground truth: full-reference and kernel metrics are n/a, not 0
    vals = suite.score(img, None, None, None)
    assert vals['psnr'] is None and vals['kernel_psnr'] is None
    with pytest.raises(MetricUnavailable):
        calculate_pyiqa(img, gt, metric='lpips', pretrained_model_path='/nonexistent/lpips.pth')


def test_niqe_scores_or_says_why():
    from basicsr.metrics import calculate_niqe
    suite = MetricSuite({'niqe': dict(type='calculate_niqe', crop_border=4, better='lower')})
    small, _ = _imgs(size=100)
    assert suite.score(small)['niqe'] is None  # one 96×96 block: no score, and a reason
    assert 'smaller than two 96×96 NIQE blocks' in suite.na_notes()[0]
    yy, xx = np.mgrid[0:120, 0:216]
    big = np.stack([(np.sin(xx / 7.0) * np.cos(yy / 5.0) * 100 + 128)] * 3, axis=2)
    big = np.clip(big + np.random.default_rng(0).normal(0, 6, big.shape), 0, 255).astype(np.uint8)
    value = suite.score(big)['niqe']
    assert value == pytest.approx(float(calculate_niqe(big, 4, input_order='HWC', convert_to='y')))
    assert np.isfinite(value)


def test_result_table_and_crops(tmp_path):
    table = ResultTable(['psnr', 'niqe'], ['Bicubic', 'SSR'])
    table.add('a', 'Bicubic', {'psnr': 20.0, 'niqe': None})
    table.add('b', 'Bicubic', {'psnr': 22.0, 'niqe': None})
    table.add('a', 'SSR', {'psnr': 25.0, 'niqe': 5.0})
    csv_path, md_path = table.write(str(tmp_path), 'set5', {'lpips': 'pyiqa is not installed'})
    rows = list(csv.reader(open(csv_path)))
    assert rows[0] == ['image', 'method', 'psnr', 'niqe']
    assert ['MEAN', 'Bicubic', '21.0', ''] in rows
    md = open(md_path).read()
    assert '| Bicubic | 21.0000 | n/a |' in md and '| SSR | 25.0000 | 5.0000 |' in md
    assert 'lpips: pyiqa is not installed' in md
    panels = [(n, np.full((40, 50, 3), i * 60, np.uint8)) for i, n in enumerate(['LR bicubic', 'SVKR', 'SSR', 'HR'])]
    strip = side_by_side(panels, (0, 0, 32))
    assert strip.shape[1] == 4 * 128 + 3 * 2 and strip.shape[0] > 128
    with pytest.raises(ValueError, match='SSR'):
        side_by_side(panels[:2] + [('SSR', np.zeros((10, 10, 3), np.uint8))])


@pytest.fixture(scope='module')
def tiny_bench(tmp_path_factory):
    """A 3-image SV test set (make_sv_testset) and option files of tiny random SVKR + SSR models."""
    from ssr_app.tools.make_sv_testset import make_sv_testset
    root = tmp_path_factory.mktemp('bench')
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), (112, 112), interpolation=cv2.INTER_CUBIC)
    images = [(f'im{i}', np.ascontiguousarray(np.roll(base, 17 * i, axis=1))) for i in range(2)]
    make_sv_testset(images, str(root / 'val'), scale=4, pattern='mixed', seed=0, show_progress=False)
    pca = str(root / 'pca.pth')
    KernelPCA.fit(random_kernels(300, kernel_size=21, seed=0).reshape(300, -1), 10).save(pca)
    svkr = dict(type='SVKR', num_iter=1, gamma=0.9, use_depth=True, scale=4, kernel_size=21,
                depth_opt=dict(type='MonocularDepth', backend='prior'),
                kernel_opt=dict(type='DKENet', num_feat=[8, 16], num_depth_feat=[4, 8], reduction=2),
                sr_opt=dict(type='NBSR', num_feat=8, num_block=1, num_grow_ch=4, num_cond=8, pca_path=pca))
    from basicsr.archs import build_network
    torch.manual_seed(0)
    svkr_ckpt = str(root / 'svkr.pth')
    torch.save({'params_ema': build_network(dict(svkr)).state_dict()}, svkr_ckpt)
    opt = dict(name='pytest_bench_tiny', model_type='SSRBenchmarkModel', scale=4, num_gpu=0, manual_seed=0,
               datasets=dict(test_1=dict(name='tiny_sv', type='SSRPairedDataset', dataroot=str(root / 'val'), scale=4)),
               network_g=dict(type='SSRUNet', pca_path=pca, **tiny_config()), network_svkr=svkr,
               conditions=dict(source='svkr', val_source='svkr'),
               diffusion=dict(num_train_timesteps=100, sampler='ddim', num_inference_steps=2, val_num_inference_steps=2,
                              seed=0, color_fix='wavelet'),
               path=dict(results_root=str(root / 'results'), pretrain_network_svkr=svkr_ckpt),
               val=dict(save_img=True, suffix=None, metrics=dict(
                   psnr=dict(type='calculate_psnr', crop_border=4, test_y_channel=True),
                   ssim=dict(type='calculate_ssim', crop_border=4, test_y_channel=True),
                   niqe=dict(type='calculate_niqe', crop_border=4, better='lower'),
                   lpips=dict(type='calculate_pyiqa', metric='lpips', crop_border=4, better='lower'),
                   musiq=dict(type='calculate_pyiqa', metric='musiq'),
                   kernel_psnr=dict(type='calculate_kernel_psnr'))))
    path = str(root / 'test_tiny.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return root, path


@pytest.fixture
def results_dir():
    # BasicSR's test pipeline writes to <repo>/results/<name> (git-ignored); removed afterwards
    path = osp.join(ROOT, 'results', 'pytest_bench_tiny')
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_benchmark_through_basicsr_test(tiny_bench, results_dir):
    root, opt_path = tiny_bench
    proc = run_python(['basicsr/test.py', '-opt', opt_path], timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = results_dir
    md = open(osp.join(results, 'tiny_sv_metrics.md')).read()
    lines = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
             for line in md.splitlines() if line.startswith('| ') and not line.startswith(('| method', '| ---'))}
    assert set(lines) == {'Bicubic', 'SVKR (I^T)', 'SSR'}
    header = [c.strip() for c in next(l for l in md.splitlines() if l.startswith('| method')).split('|')[2:-1]]
    assert header == ['psnr', 'ssim', 'niqe', 'lpips', 'musiq', 'kernel_psnr']
    # the SVKR here runs the weight-free depth prior: the table and the log say so
    assert 'weight-free PRIOR' in md.splitlines()[2]
    assert 'weight-free PRIOR' in proc.stdout.split('Benchmark tiny_sv (means)')[1].splitlines()[0]
    for method, cells in lines.items():
        vals = dict(zip(header, cells))
        assert float(vals['psnr']) > 5 and 0 < float(vals['ssim']) <= 1
        assert vals['kernel_psnr'] == 'n/a' if method == 'Bicubic' else float(vals['kernel_psnr']) > 0
        if not HAS_PYIQA:
            assert vals['lpips'] == 'n/a' and vals['musiq'] == 'n/a'
    assert all(v == 'n/a' for v in [dict(zip(header, c))['niqe'] for c in lines.values()])
    assert '- niqe: n/a on 6 image(s): image smaller than two 96×96 NIQE blocks' in md
    if not HAS_PYIQA:
        assert '- lpips: pyiqa is not installed' in md and '- musiq: pyiqa is not installed' in md
        assert 'Metric lpips cannot run: pyiqa is not installed' in proc.stdout
    rows = list(csv.reader(open(osp.join(results, 'tiny_sv_metrics.csv'))))
    assert len(rows) == 1 + 2 * 3 + 3
    assert rows[0][-1] == 'depth'
    assert {r[1]: r[-1] for r in rows[1:]} == {'Bicubic': '', 'SVKR (I^T)': 'prior', 'SSR': 'prior'}
    for stem in ('im0', 'im1'):
        strip = cv2.imread(osp.join(results, 'tiny_sv_crops', f'{stem}.png'))
        assert strip is not None and strip.shape[1] >= 4 * 112  # LR bicubic | SVKR | SSR | HR
        assert osp.isfile(osp.join(results, 'visualization', 'tiny_sv', f'{stem}_ssr.png'))
