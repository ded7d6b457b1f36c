"""SSR datasets, LMDB round trips, the data scripts and the mixing option file (stock SRModel + RRDBNet)."""
import json
import os
import os.path as osp
import shutil
import sys
import uuid

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from conftest import ROOT, run_python
from ssr_data.degradations import quantize, sv_blur_downsample
from ssr_data.lmdb_util import LmdbWriter, read_lmdb_image
from ssr_data.ssr_degradation_dataset import SSRDegradationDataset
from ssr_data.ssr_paired_dataset import SSRPairedDataset
from ssr_utils.errors import OptionError

sys.path.insert(0, osp.join(ROOT, 'scripts'))


def _images(n, h=48, w=40, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):  # smooth colour images (random fields, blurred), uint8 BGR
        img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 2)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _depth16(h, w, seed):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.uniform(0, 65535, (h, w)).astype(np.float32), (0, 0), 4).astype(np.uint16)


@pytest.fixture
def lmdbs(tmp_path):
    keys = [f'im{i}' for i in range(3)]
    with LmdbWriter(str(tmp_path / 'hr.lmdb')) as hr, LmdbWriter(str(tmp_path / 'depth.lmdb')) as dep:
        for i, (key, img) in enumerate(zip(keys, _images(3))):
            hr.put(key, img)
            dep.put(key, _depth16(48, 40, i))
    return tmp_path, keys


def _opt(root, **kw):
    opt = {'name': 't', 'phase': 'train', 'dataroot_gt': str(root / 'hr.lmdb'),
           'dataroot_depth': str(root / 'depth.lmdb'), 'io_backend': {'type': 'lmdb'}, 'scale': 4, 'gt_size': 32,
           'kernel_size': 9, 'seed': 11}
    opt.update(kw)
    return opt


def test_degradation_dataset_sample_and_determinism(lmdbs):
    root, keys = lmdbs
    ds = SSRDegradationDataset(_opt(root))
    assert len(ds) == 3
    s = ds[1]
    assert s['lq'].shape == (3, 8, 8) and s['gt'].shape == (3, 32, 32)
    assert s['depth'].shape == (1, 32, 32) and s['depth_lq'].shape == (1, 8, 8) and s['kernel'].shape == (81, 8, 8)
    assert s['lq_path'] == keys[1] == s['gt_path']  # BasicSR's LMDB convention: validation names by key
    assert 0 <= s['depth'].min() and s['depth'].max() <= 1
    again, other = SSRDegradationDataset(_opt(root))[1], ds[2]
    for key in ('lq', 'gt', 'depth', 'kernel'):
        assert torch.equal(s[key], again[key])  # a fixed validation set
    assert s['params'] == again['params']
    assert not torch.equal(s['kernel'], other['kernel'])
    unseeded = SSRDegradationDataset(_opt(root, seed=None))
    assert not torch.equal(unseeded[1]['lq'], unseeded[1]['lq'])
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch['kernel'].shape == (3, 81, 8, 8) and batch['params']['jpeg_quality'].shape == (3, )


def test_degradation_dataset_lq_is_the_kernel_applied_to_gt(lmdbs):
    root, keys = lmdbs
    ds = SSRDegradationDataset(_opt(root, use_noise=False, use_jpeg=False))
    s = ds[0]
    assert torch.equal(s['lq'], quantize(sv_blur_downsample(s['gt'][None], s['kernel'][None], 4)[0]))
    # the crop and flips of depth follow the HR: the stored depth appears in the sample at the crop
    full = read_lmdb_image(str(root / 'depth.lmdb'), keys[0]).astype(np.float32) / 65535.0
    crop = s['depth'][0].numpy()
    found = any(np.allclose(np.ascontiguousarray(v)[t:t + 32, l:l + 32], crop, atol=1e-6)
                for v in (full, full[:, ::-1], full[::-1], full[::-1, ::-1], full.T, full.T[::-1], full.T[:, ::-1],
                          full.T[::-1, ::-1])
                for t in range(v.shape[0] - 31) for l in range(v.shape[1] - 31))
    assert found


def test_depth_lmdb_round_trip_16bit(tmp_path):
    d = _depth16(20, 24, 3)
    d[0, 0], d[1, 1] = 0, 65535
    with LmdbWriter(str(tmp_path / 'd.lmdb')) as w:
        w.put('a', d)
    back = read_lmdb_image(str(tmp_path / 'd.lmdb'), 'a')
    assert back.dtype == np.uint16 and np.array_equal(back, d)
    from ssr_data.dataset_io import ImageSource, decode_depth
    src = ImageSource(str(tmp_path / 'd.lmdb'), 'depth', 'dataroot_depth')
    assert np.allclose(decode_depth(src.get('a'), 'a'), d / 65535.0, atol=1e-7)


def test_bad_inputs_name_the_key_file_or_option(lmdbs, tmp_path):
    root, keys = lmdbs
    # depth LMDB missing a key
    with LmdbWriter(str(tmp_path / 'partial.lmdb')) as w:
        w.put(keys[0], _depth16(48, 40, 0))
    ds = SSRDegradationDataset(_opt(root, dataroot_depth=str(tmp_path / 'partial.lmdb')))
    with pytest.raises(KeyError, match=keys[1]):
        ds[1]
    # depth of the wrong size
    with LmdbWriter(str(tmp_path / 'small.lmdb')) as w:
        for k in keys:
            w.put(k, _depth16(24, 20, 0))
    with pytest.raises(ValueError, match='small.lmdb'):
        SSRDegradationDataset(_opt(root, dataroot_depth=str(tmp_path / 'small.lmdb')))[0]
    with pytest.raises(ValueError, match='gt_size'):
        SSRDegradationDataset(_opt(root, gt_size=64))[0]
    with pytest.raises(OptionError, match='gt_size'):
        SSRDegradationDataset(_opt(root, gt_size=30))
    with pytest.raises(OptionError, match='kernel_size'):
        SSRDegradationDataset(_opt(root, kernel_size=10))
    with pytest.raises(OptionError, match='dataroot_depth'):
        SSRDegradationDataset(_opt(root, dataroot_depth=str(tmp_path / 'nope.lmdb')))


def test_folder_input_without_depth_uses_the_prior(tmp_path):
    folder = tmp_path / 'hr'
    folder.mkdir()
    for i, img in enumerate(_images(2, 40, 40)):
        cv2.imwrite(str(folder / f'p{i}.png'), img)
    ds = SSRDegradationDataset({'dataroot_gt': str(folder), 'scale': 2, 'gt_size': None, 'kernel_size': 7, 'seed': 0,
                                'io_backend': {'type': 'disk'}})
    s = ds[0]
    assert s['gt'].shape == (3, 40, 40) and s['lq'].shape == (3, 20, 20) and s['depth'].shape == (1, 40, 40)
    assert s['lq_path'].endswith('p0.png')


def test_sv_testset_and_paired_dataset(tmp_path):
    from ssr_app.tools.make_sv_testset import make_sv_testset
    images = [(f'img{i}', im) for i, im in enumerate(_images(4, 36, 44, seed=5))]
    out = tmp_path / 'set'
    meta = make_sv_testset(images, str(out), scale=4, kernel_size=7, pattern='mixed', seed=2, show_progress=False)
    assert [meta['images'][f'img{i}']['pattern'] for i in range(4)] == ['linear', 'rotate', 'block', 'depth']
    with open(out / 'meta.json') as f:
        on_disk = json.load(f)
    assert {k: on_disk[k] for k in ('pattern', 'seed', 'scale', 'kernel_size')} == \
        {'pattern': 'mixed', 'seed': 2, 'scale': 4, 'kernel_size': 7}
    kmap = np.load(out / 'kernel' / 'img0.npy')
    assert kmap.dtype == np.float32 and kmap.shape == (49, 9, 11)
    depth = cv2.imread(str(out / 'depth' / 'img0.png'), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (36, 44)
    again = tmp_path / 'again'
    make_sv_testset(images, str(again), scale=4, kernel_size=7, pattern='mixed', seed=2, show_progress=False)
    for i in range(4):  # reproducible from the seed
        name = f'img{i}.png'
        assert np.array_equal(cv2.imread(str(out / 'lq' / name)), cv2.imread(str(again / 'lq' / name)))

    ds = SSRPairedDataset({'dataroot': str(out), 'scale': 4, 'phase': 'val'})
    s = ds[3]
    assert s['lq'].shape == (3, 9, 11) and s['gt'].shape == (3, 36, 44) and s['kernel'].shape == (49, 9, 11)
    assert s['depth'].shape == (1, 36, 44) and s['depth_lq'].shape == (1, 9, 11)
    assert s['params']['pattern_id'] == 3.0
    assert torch.allclose(s['lq'], quantize(sv_blur_downsample(s['gt'][None], s['kernel'][None], 4)[0]), atol=1e-6)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch['lq'].shape == (2, 3, 9, 11)
    # training crops stay aligned across LR, HR, depth and kernels (no flips: exact)
    tr = SSRPairedDataset({'dataroot': str(out), 'scale': 4, 'phase': 'train', 'gt_size': 16, 'seed': 1,
                           'use_hflip': False, 'use_rot': False})
    c = tr[0]
    assert c['lq'].shape == (3, 4, 4) and c['kernel'].shape == (49, 4, 4) and c['depth'].shape == (1, 16, 16)
    full = ds[0]
    matches = [(t, l) for t in range(9 - 3) for l in range(11 - 3)
               if torch.equal(full['lq'][:, t:t + 4, l:l + 4], c['lq'])
               and torch.equal(full['gt'][:, 4 * t:4 * t + 16, 4 * l:4 * l + 16], c['gt'])]
    assert matches
    t, l = matches[0]
    assert torch.equal(full['kernel'][:, t:t + 4, l:l + 4], c['kernel'])
    assert torch.equal(full['depth'][:, 4 * t:4 * t + 16, 4 * l:4 * l + 16], c['depth'])
    # with flips the kernels turn with the image: a horizontally flipped crop has mirrored kernels
    flipped = SSRPairedDataset({'dataroot': str(out), 'scale': 4, 'phase': 'train', 'gt_size': 16, 'seed': 1,
                                'use_hflip': True, 'use_rot': True})
    for i in range(4):
        f = flipped[i]
        assert torch.allclose(f['kernel'].sum(0), torch.ones(4, 4), atol=1e-5) and f['gt'].shape == (3, 16, 16)
    # kernels-only set (no depth, no kernel folders): the sample leaves them out
    plain = tmp_path / 'plain'
    shutil.copytree(out / 'gt', plain / 'gt')
    shutil.copytree(out / 'lq', plain / 'lq')
    p = SSRPairedDataset({'dataroot': str(plain), 'scale': 4})[0]
    assert 'kernel' not in p and 'depth' not in p and p['params'] == {}
    os.remove(plain / 'lq' / 'img1.png')
    with pytest.raises(FileNotFoundError, match='img1'):
        SSRPairedDataset({'dataroot': str(plain), 'scale': 4})
    with pytest.raises(OptionError, match='scale'):
        SSRPairedDataset({'dataroot': str(out), 'scale': 2})


def test_shared_val_pairs_lmdb(shared_data):
    vp = osp.join(shared_data, 'val_pairs')
    ds = SSRPairedDataset({'dataroot_gt': osp.join(vp, 'gt.lmdb'), 'dataroot_lq': osp.join(vp, 'lq.lmdb'), 'scale': 4})
    for i in range(len(ds)):
        s = ds[i]  # comic's LQ decodes as 90×60 although meta_info says 80×60: the decoded size is used
        assert s['gt'].shape[1:] == (s['lq'].shape[1] * 4, s['lq'].shape[2] * 4)
        assert 'kernel' not in s


def test_make_depth_lmdb_resumes(lmdbs, tmp_path):
    from ssr_app.tools.make_depth_lmdb import make_depth_lmdb
    root, keys = lmdbs
    out = str(tmp_path / 'depth_out.lmdb')
    assert make_depth_lmdb(str(root / 'hr.lmdb'), out, batch_size=2, limit=2, show_progress=False) == 2
    assert not osp.isfile(osp.join(out, 'meta_info.txt'))  # interrupted: not yet a complete LMDB
    assert make_depth_lmdb(str(root / 'hr.lmdb'), out, batch_size=2, show_progress=False) == 1  # only the rest
    with open(osp.join(out, 'meta_info.txt')) as f:
        assert [line.split('.')[0] for line in f] == keys
    from ssr_arch.depth_arch import MonocularDepth
    img = read_lmdb_image(str(root / 'hr.lmdb'), keys[2], cv2.IMREAD_COLOR)
    expect = MonocularDepth()(torch.from_numpy(img[:, :, ::-1].transpose(2, 0, 1).copy()).float()[None] / 255)[0, 0]
    got = read_lmdb_image(out, keys[2])
    assert got.dtype == np.uint16 and np.abs(got / 65535.0 - expect.numpy()).max() < 1e-4
    with pytest.raises(FileExistsError):
        make_depth_lmdb(str(root / 'hr.lmdb'), out, show_progress=False)
    ds = SSRDegradationDataset(_opt(root, dataroot_depth=out))  # usable as the dataset's depth source
    assert ds[0]['depth'].shape == (1, 32, 32)


def test_prepare_demo_data_layout(tmp_path):
    from ssr_app.tools.prepare_demo_data import prepare_demo_data
    from ssr_data.kernels import KernelPCA
    root = str(tmp_path / 'demo')
    prepare_demo_data(root, train_photos=('astronaut', 'rocket'), val_photos=('chelsea', ), max_side=128, crop_size=64,
                      step=64, val_crop=32, val_per_photo=2, pca_samples=500, show_progress=False, source='photos')
    with open(osp.join(root, 'hr.lmdb', 'meta_info.txt')) as f:
        hr_keys = [line.split('.')[0] for line in f]
    with open(osp.join(root, 'depth.lmdb', 'meta_info.txt')) as f:
        depth_lines = f.read().splitlines()
    assert hr_keys and [line.split('.')[0] for line in depth_lines] == hr_keys
    assert all('(64,64,1)' in line for line in depth_lines)
    assert read_lmdb_image(osp.join(root, 'depth.lmdb'), hr_keys[0]).dtype == np.uint16
    val = osp.join(root, 'val_x4')
    for sub, ext in (('gt', '.png'), ('lq', '.png'), ('kernel', '.npy'), ('depth', '.png')):
        assert sorted(os.listdir(osp.join(val, sub))) == [f'chelsea_0{i}{ext}' for i in (1, 2)]
    with open(osp.join(val, 'meta.json')) as f:
        meta = json.load(f)
    assert meta['scale'] == 4 and meta['kernel_size'] == 21 and 'pattern' in meta and 'seed' in meta
    pca = KernelPCA.load(osp.join(root, 'kernel_pca_k21.pth'))
    assert pca.dim == 10 and pca.kernel_size == 21
    with pytest.raises(FileExistsError):
        prepare_demo_data(root)


def test_prepare_demo_data_scenes_have_exact_depth(tmp_path):
    """The default demo data: scenes with their exact depth in depth.lmdb and in the validation set."""
    from ssr_app.tools.prepare_demo_data import prepare_demo_data
    from ssr_data.scene_depth_dataset import SceneDepthDataset
    from ssr_data.scenes import SceneGenerator, default_texture_photos
    root = str(tmp_path / 'demo')
    prepare_demo_data(root, num_scenes=3, scene_size=48, num_val_scenes=2, val_crop=32, pca_samples=300,
                      show_progress=False)
    assert osp.isfile(osp.join(root, 'scenes.json')) and osp.isfile(osp.join(root, 'kernel_pca_k21.pth'))
    # the depth network's dataset reads the same LMDBs, with the true inverse depth from scenes.json
    ds = SceneDepthDataset({'dataroot_gt': osp.join(root, 'hr.lmdb'), 'dataroot_depth': osp.join(root, 'depth.lmdb'),
                            'use_hflip': False})
    assert len(ds) == 3 and 'disparity' in ds[0]
    _, depth, _ = SceneGenerator(default_texture_photos('train'), (48, 48)).generate((0, 1))
    np.testing.assert_allclose(ds[1]['depth'][0].numpy(), depth, atol=1.5 / 65535)
    val = osp.join(root, 'val_x4')
    assert sorted(os.listdir(osp.join(val, 'depth'))) == ['scene_000000.png', 'scene_000001.png']
    _, val_depth, _ = SceneGenerator(default_texture_photos('test'), (32, 32)).generate((1, 0))
    stored = cv2.imread(osp.join(val, 'depth', 'scene_000000.png'), cv2.IMREAD_UNCHANGED) / 65535.0
    np.testing.assert_allclose(stored, val_depth, atol=1.5 / 65535)
    with open(osp.join(val, 'meta.json')) as f:
        assert 'prior' not in json.dumps(json.load(f)['depth']).lower()


def test_mixing_option_file_trains_stock_srmodel_rrdbnet(tmp_path):
    """options/train_rrdb_sv_baseline_demo.yml through `python basicsr/train.py`, on tiny data, 2 iterations."""
    from ssr_app.tools.prepare_demo_data import prepare_demo_data
    data = str(tmp_path / 'demo')
    prepare_demo_data(data, train_photos=('astronaut', ), val_photos=('chelsea', ), max_side=96, crop_size=48, step=48,
                      val_crop=32, val_per_photo=1, pca_samples=200, show_progress=False, source='photos')
    with open(osp.join(ROOT, 'options', 'train_rrdb_sv_baseline_demo.yml')) as f:
        opt = yaml.safe_load(f)
    with open(osp.join(ROOT, 'options', 'train_rrdb_sv_baseline.yml')) as f:
        full = yaml.safe_load(f)
    assert full['model_type'] == opt['model_type'] == 'SRModel'
    assert full['network_g']['type'] == opt['network_g']['type'] == 'RRDBNet'
    assert full['datasets']['train']['type'] == opt['datasets']['train']['type'] == 'SSRDegradationDataset'
    name = f'pytest_rrdb_sv_{uuid.uuid4().hex[:8]}'
    opt['name'] = name
    train, val = opt['datasets']['train'], opt['datasets']['val']
    train.update(dataroot_gt=osp.join(data, 'hr.lmdb'), dataroot_depth=osp.join(data, 'depth.lmdb'), gt_size=32,
                 kernel_size=11, num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=1)
    val['dataroot'] = osp.join(data, 'val_x4')
    opt['network_g'].update(num_feat=8, num_block=1, num_grow_ch=4)
    opt['train']['total_iter'] = 2
    opt['val']['val_freq'] = 2
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2)
    path = tmp_path / f'{name}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    try:
        res = run_python([osp.join('basicsr', 'train.py'), '-opt', str(path)], timeout=240)
        assert res.returncode == 0, res.stdout[-3000:]
        assert 'iter:       2' in res.stdout or 'iter:       2' in res.stdout.replace('\n', ' ')
        assert '# psnr' in res.stdout
        assert osp.isfile(osp.join(ROOT, 'experiments', name, 'models', 'net_g_2.pth'))
    finally:
        for folder in ('experiments', 'tb_logger', 'results'):
            shutil.rmtree(osp.join(ROOT, folder, name), ignore_errors=True)
