"""scripts/make_sv_testset.py on real-world folders: small images, atomic output, kills, Table 3 sets."""
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import ROOT, subprocess_env
from ssr_data.ssr_paired_dataset import SSRPairedDataset
from ssr_utils.errors import OptionError

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
from ssr_app.tools.make_sv_testset import main, make_sv_testset  # noqa: E402


def _photo(h, w, seed):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    return img


def _folder(path, sizes):
    path.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(path / f'im{i}.png'), _photo(h, w, i))
    return path


def test_small_image_is_kept_whole_or_skipped(tmp_path, capsys):
    hr = _folder(tmp_path / 'hr', [(48, 48), (40, 29), (52, 60)])  # im1: narrower than the crop, like Set5's woman
    out = tmp_path / 'set'
    assert main(['--input', str(hr), '--output', str(out), '--crop-size', '32', '--kernel-size', '7']) == 0
    err = capsys.readouterr().err
    assert 'im1' in err and 'kept whole' in err
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['complete'] and meta['num_images'] == 3 and meta['skipped'] == {}
    assert meta['images']['im1']['crop'] == [4, 0, 32, 28]  # 29 px wide: whole (to a multiple of 4)
    assert meta['images']['im0']['crop'] == [8, 8, 32, 32]
    assert cv2.imread(str(out / 'lq' / 'im1.png')).shape == (8, 7, 3)
    assert len(SSRPairedDataset({'dataroot': str(out), 'scale': 4})) == 3

    skipped = tmp_path / 'skipped'
    assert main(['--input', str(hr), '--output', str(skipped), '--crop-size', '32', '--kernel-size', '7',
                 '--skip-small']) == 0
    assert 'im1' in capsys.readouterr().err
    meta = json.loads((skipped / 'meta.json').read_text())
    assert sorted(meta['images']) == ['im0', 'im2'] and list(meta['skipped']) == ['im1']
    assert sorted(os.listdir(skipped / 'gt')) == ['im0.png', 'im2.png']
    # the other images' kernels do not depend on whether im1 was skipped
    assert np.array_equal(np.load(out / 'kernel' / 'im2.npy'), np.load(skipped / 'kernel' / 'im2.npy'))


def test_unreadable_file_is_named_and_the_set_finishes(tmp_path, capsys):
    hr = _folder(tmp_path / 'hr', [(32, 32), (32, 32)])
    (hr / 'broken.png').write_bytes(b'not an image')
    out = tmp_path / 'set'
    assert main(['--input', str(hr), '--output', str(out), '--kernel-size', '7']) == 1
    assert 'broken' in capsys.readouterr().err
    meta = json.loads((out / 'meta.json').read_text())
    assert sorted(meta['images']) == ['im0', 'im1'] and list(meta['skipped']) == ['broken']


def test_failure_leaves_no_set_and_keeps_the_old_one(tmp_path):
    images = [(f'a{i}', _photo(32, 32, i)) for i in range(3)]
    out = tmp_path / 'set'
    with pytest.raises(KeyError, match='a2'):  # a missing depth map half-way
        make_sv_testset(images, str(out), kernel_size=7, depth_maps={'a0': np.zeros((32, 32)), 'a1': np.zeros((32, 32))},
                        show_progress=False, report=None)
    assert not out.exists() and os.listdir(tmp_path) == []  # no output, no temporary folder
    make_sv_testset(images[:2], str(out), kernel_size=7, show_progress=False, report=None)
    before = sorted(os.listdir(out / 'gt'))
    with pytest.raises(FileExistsError, match='overwrite'):
        make_sv_testset(images, str(out), kernel_size=7, show_progress=False, report=None)
    with pytest.raises(KeyError):
        make_sv_testset(images, str(out), kernel_size=7, depth_maps={}, overwrite=True, show_progress=False, report=None)
    assert sorted(os.listdir(out / 'gt')) == before and (out / 'meta.json').is_file()
    make_sv_testset(images, str(out), kernel_size=7, overwrite=True, show_progress=False, report=None)
    assert len(os.listdir(out / 'gt')) == 3 and sorted(os.listdir(tmp_path)) == ['set']


def test_killed_run_leaves_nothing_that_looks_complete(tmp_path):
    hr = _folder(tmp_path / 'hr', [(96, 96)] * 24)
    out = tmp_path / 'set'
    cmd = [sys.executable, os.path.join(ROOT, 'scripts', 'make_sv_testset.py'), '--input', str(hr), '--output',
           str(out), '--kernel-size', '21']
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = [p for p in tmp_path.iterdir() if p.name.startswith('.set.partial-')]
        if found and (found[0] / 'gt').is_dir() and len(os.listdir(found[0] / 'gt')) >= 2:
            partial = found[0]
            break
        time.sleep(0.02)
    assert proc.poll() is None, 'the run ended before it could be killed; make the input larger'
    assert partial is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing under the output name
    assert partial.exists()
    # pointing the dataset at the leftover by hand does not pass for a set either
    with pytest.raises(OptionError, match='incomplete'):
        SSRPairedDataset({'dataroot': str(partial), 'scale': 4})
    # the next run removes the leftover of the dead process and builds the set
    lines = []
    images = [(f'b{i}', _photo(32, 32, i)) for i in range(2)]
    make_sv_testset(images, str(out), kernel_size=7, show_progress=False, report=lines.append)
    assert not partial.exists() and any('interrupted' in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['hr', 'set']


def test_paired_dataset_refuses_incomplete_or_modified_sets(tmp_path):
    images = [(f'c{i}', _photo(32, 32, i)) for i in range(3)]
    out = tmp_path / 'set'
    make_sv_testset(images, str(out), kernel_size=7, show_progress=False, report=None)
    os.remove(out / 'gt' / 'c1.png')
    os.remove(out / 'lq' / 'c1.png')
    with pytest.raises(OptionError, match='c1'):
        SSRPairedDataset({'dataroot': str(out), 'scale': 4})
    assert len(SSRPairedDataset({'dataroot': str(out), 'scale': 4, 'require_meta': False})) == 2
    os.remove(out / 'meta.json')
    with pytest.raises(OptionError, match='incomplete'):
        SSRPairedDataset({'dataroot': str(out), 'scale': 4})


def test_table3_sets_share_images_kernels_and_noise(tmp_path):
    """w/o noise, w/o jpeg, noise + jpeg (paper Table 3): same seed, only the switches differ."""
    from ssr_data.degradations import jpeg_compress
    import torch
    images = [(f'd{i}', _photo(40, 48, i)) for i in range(3)]
    sets = {}
    for name, kw in (('no_noise', dict(jpeg_range=(30, 95))), ('no_jpeg', dict(noise_range=(1, 30))),
                     ('both', dict(noise_range=(1, 30), jpeg_range=(30, 95)))):
        sets[name] = tmp_path / name
        make_sv_testset(images, str(sets[name]), kernel_size=7, seed=3, show_progress=False, report=None, **kw)
    metas = {k: json.loads((v / 'meta.json').read_text()) for k, v in sets.items()}
    for stem in ('d0', 'd1', 'd2'):
        for folder in ('gt', 'depth'):
            ref = cv2.imread(str(sets['both'] / folder / f'{stem}.png'), cv2.IMREAD_UNCHANGED)
            for other in ('no_noise', 'no_jpeg'):
                assert np.array_equal(ref, cv2.imread(str(sets[other] / folder / f'{stem}.png'), cv2.IMREAD_UNCHANGED))
        k = np.load(sets['both'] / 'kernel' / f'{stem}.npy')
        assert np.array_equal(k, np.load(sets['no_noise'] / 'kernel' / f'{stem}.npy'))
        both, no_noise, no_jpeg = (metas[n]['images'][stem]['params'] for n in ('both', 'no_noise', 'no_jpeg'))
        assert both['noise_sigma'] == no_jpeg['noise_sigma'] > 0 and no_noise['noise_sigma'] == 0
        assert both['jpeg_quality'] == no_noise['jpeg_quality'] >= 30 and no_jpeg['jpeg_quality'] == -1
        # noise + jpeg is exactly the JPEG of the noisy (w/o jpeg) image: the same noise realisation
        noisy = cv2.imread(str(sets['no_jpeg'] / 'lq' / f'{stem}.png'))[..., ::-1]
        t = torch.from_numpy(np.ascontiguousarray(noisy)).permute(2, 0, 1).float() / 255
        expect = (jpeg_compress(t, int(both['jpeg_quality'])) * 255).round().byte().permute(1, 2, 0).numpy()[..., ::-1]
        assert np.array_equal(cv2.imread(str(sets['both'] / 'lq' / f'{stem}.png')), expect)
    qualities = {metas['both']['images'][s]['params']['jpeg_quality'] for s in ('d0', 'd1', 'd2')}
    assert len(qualities) > 1  # drawn per image
    with pytest.raises(OptionError, match='either'):
        make_sv_testset(images, str(tmp_path / 'x'), noise=5, noise_range=(1, 2), show_progress=False, report=None)


def test_depth_pattern_with_a_fixed_focus_plane(tmp_path):
    images = [(f'a{i}', _photo(32, 32, i)) for i in range(2)]
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32)[:, None], (1, 32))
    depths = {'a0': ramp, 'a1': ramp}
    metas = {}
    for name, focus in (('drawn', None), ('fixed', 1.0)):
        make_sv_testset(images, str(tmp_path / name), kernel_size=7, pattern='depth', depth_maps=depths,
                        show_progress=False, report=None, focus_plane=focus)
        metas[name] = json.loads((tmp_path / name / 'meta.json').read_text())
    assert [m['params']['focus'] for m in metas['fixed']['images'].values()] == [1.0, 1.0]
    assert all(m['params']['focus'] != 1.0 for m in metas['drawn']['images'].values())
