"""LMDB tools in BasicSR's format: round trip through BasicSR's own readers."""
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import ROOT, run_python, subprocess_env
from ssr_data.lmdb_util import (LmdbExistsError, LmdbWriter, extract_subimages, lmdb_is_complete, read_lmdb_image,
                                read_meta_info)


def _write_images(folder, count=3, size=(40, 52)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    images = {}
    for i in range(count):
        img = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
        cv2.imwrite(str(folder / f'img{i}.png'), img)
        images[f'img{i}'] = img
    return images


def test_create_lmdb_round_trip_through_basicsr_reader(tmp_path):
    from basicsr.data.data_util import paired_paths_from_lmdb
    from basicsr.utils import FileClient, imfrombytes
    images = _write_images(tmp_path / 'imgs')
    gray = (np.arange(30 * 20) % 256).astype(np.uint8).reshape(30, 20)
    cv2.imwrite(str(tmp_path / 'imgs' / 'gray.png'), gray)
    out = tmp_path / 'hr.lmdb'
    proc = run_python(['scripts/create_lmdb.py', '-i', str(tmp_path / 'imgs'), '-o', str(out)])
    assert proc.returncode == 0, proc.stdout
    meta = dict(read_meta_info(str(out)))
    assert meta == {'gray': (30, 20, 1), 'img0': (40, 52, 3), 'img1': (40, 52, 3), 'img2': (40, 52, 3)}
    assert open(out / 'meta_info.txt').readline() == 'gray.png (30,20,1) 1\n'
    client = FileClient('lmdb', db_paths=[str(out)], client_keys=['gt'])
    for key, img in images.items():
        assert np.array_equal(imfrombytes(client.get(key, 'gt'), float32=False), img)
    assert np.array_equal(read_lmdb_image(str(out), 'gray'), gray)
    # BasicSR's paired reader accepts our meta_info.txt
    paths = paired_paths_from_lmdb([str(out), str(out)], ['lq', 'gt'])
    assert sorted(p['gt_path'] for p in paths) == ['gray', 'img0', 'img1', 'img2']


def test_subimages_cover_the_image_and_keep_pixels(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    crops = list(extract_subimages(img, 32, 24, thresh_size=0))
    # rows start at 0, 24 and the border-aligned 38; columns at 0, 24, 48 and 58
    assert len(crops) == 3 * 4
    assert [i for i, _ in crops] == list(range(1, 13))
    assert np.array_equal(crops[0][1], img[:32, :32])
    assert np.array_equal(crops[-1][1], img[38:70, 58:90])
    covered = np.zeros(img.shape[:2], bool)
    for index, crop in crops:
        row, col = divmod(index - 1, 4)
        y, x = (0, 24, 38)[row], (0, 24, 48, 58)[col]
        assert np.array_equal(crop, img[y:y + 32, x:x + 32])
        covered[y:y + 32, x:x + 32] = True
    assert covered.all()


def test_create_lmdb_with_subimages_names_crops(tmp_path):
    _write_images(tmp_path / 'imgs', count=1, size=(64, 64))
    out = tmp_path / 'sub.lmdb'
    proc = run_python(['scripts/create_lmdb.py', '-i', str(tmp_path / 'imgs'), '-o', str(out),
                       '--crop-size', '32', '--step', '32'])
    assert proc.returncode == 0, proc.stdout
    assert [k for k, _ in read_meta_info(str(out))] == ['img0_s001', 'img0_s002', 'img0_s003', 'img0_s004']


def test_refuses_overwrite_and_names_unreadable_files(tmp_path):
    _write_images(tmp_path / 'imgs', count=2)
    (tmp_path / 'imgs' / 'broken.png').write_bytes(b'not a png at all')
    (tmp_path / 'imgs' / 'empty.jpg').write_bytes(b'')
    out = tmp_path / 'x.lmdb'
    proc = run_python(['scripts/create_lmdb.py', '-i', str(tmp_path / 'imgs'), '-o', str(out)])
    # the readable images are written, the bad ones named, and the exit status says so
    assert proc.returncode == 1
    assert 'broken.png' in proc.stdout and 'empty.jpg' in proc.stdout
    assert [k for k, _ in read_meta_info(str(out))] == ['img0', 'img1']
    before = (out / 'data.mdb').read_bytes()
    proc = run_python(['scripts/create_lmdb.py', '-i', str(tmp_path / 'imgs'), '-o', str(out)])
    assert proc.returncode == 2 and 'already exists' in proc.stdout
    assert (out / 'data.mdb').read_bytes() == before
    with pytest.raises(LmdbExistsError):
        LmdbWriter(str(out))


def test_writer_rejects_keys_basicsr_cannot_read(tmp_path):
    with LmdbWriter(str(tmp_path / 'k.lmdb')) as writer:
        with pytest.raises(ValueError, match='without dots'):
            writer.put('a.b', np.zeros((2, 2), np.uint8))


def test_reads_the_shared_basicsr_lmdb(shared_data):
    lmdb_path = osp.join(shared_data, 'val_pairs', 'lq.lmdb')
    meta = dict(read_meta_info(lmdb_path))
    assert set(meta) == {'baboon', 'comic'}
    comic = read_lmdb_image(lmdb_path, 'comic')
    # the shape column is wrong for comic (see shared/data/README.md): the decoded image wins
    assert comic.shape == (90, 60, 3)
    assert np.array_equal(comic, cv2.imread(osp.join(shared_data, 'val_pairs', 'lq', 'comic.png')))


def test_workers_give_the_same_lmdb_in_the_same_order(tmp_path):
    sys.path.insert(0, osp.join(ROOT, 'scripts'))
    from ssr_app.tools.create_lmdb import create_lmdb
    _write_images(tmp_path / 'imgs' / 'b', count=3, size=(40, 36))
    _write_images(tmp_path / 'imgs' / 'a', count=4, size=(33, 50))
    (tmp_path / 'imgs' / 'a' / 'bad.png').write_bytes(b'broken')
    runs = {}
    for workers in (1, 3):
        out = str(tmp_path / f'w{workers}.lmdb')
        written, skipped = create_lmdb(str(tmp_path / 'imgs'), out, crop_size=24, step=16, show_progress=False,
                                       workers=workers)
        assert [osp.basename(p) for p, _ in skipped] == ['bad.png']
        runs[workers] = (written, open(osp.join(out, 'meta_info.txt')).read(),
                         {k: read_lmdb_image(out, k).tobytes() for k in written})
    assert runs[1] == runs[3]
    keys = runs[1][0]
    assert keys[0] == 'a_img0_s001' and keys == sorted(keys, key=lambda k: (k.split('_s')[0], k))


def test_a_failing_writer_leaves_no_lmdb(tmp_path):
    path = tmp_path / 'x.lmdb'
    with pytest.raises(RuntimeError, match='boom'):
        with LmdbWriter(str(path)) as writer:
            writer.put('a', np.zeros((4, 4), np.uint8))
            raise RuntimeError('boom')
    assert os.listdir(tmp_path) == []
    # an LMDB folder without meta_info.txt (e.g. left by another tool) is called incomplete, not overwritten
    path.mkdir()
    (path / 'data.mdb').write_bytes(b'')
    with pytest.raises(LmdbExistsError, match='incomplete'):
        LmdbWriter(str(path))
    with LmdbWriter(str(path), overwrite=True) as writer:
        writer.put('a', np.zeros((4, 4), np.uint8))
    assert lmdb_is_complete(str(path)) and [k for k, _ in read_meta_info(str(path))] == ['a']


def test_killed_create_lmdb_leaves_nothing_that_looks_finished(tmp_path):
    from basicsr.data.data_util import paired_paths_from_lmdb
    folder = tmp_path / 'imgs'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(150):  # noise compresses badly: slow enough to be caught half-way
        cv2.imwrite(str(folder / f'n{i:03d}.png'), rng.integers(0, 256, (192, 192, 3), dtype=np.uint8))
    out = tmp_path / 'hr.lmdb'
    cmd = [sys.executable, osp.join(ROOT, 'scripts', 'create_lmdb.py'), '-i', str(folder), '-o', str(out),
           '--workers', '1', '--compress-level', '9']
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = [p for p in tmp_path.iterdir() if p.name.startswith('.hr.lmdb.partial-')]
        if found and (found[0] / 'data.mdb').is_file() and (found[0] / 'data.mdb').stat().st_size > 0:
            partial = found[0]
            break
        time.sleep(0.01)
    assert proc.poll() is None, 'create_lmdb finished before it could be killed; give it more images'
    assert partial is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing under the LMDB's name
    assert not lmdb_is_complete(str(partial))
    # BasicSR's LMDB datasets refuse the leftover, even under an LMDB name (no meta_info.txt)
    leftover = tmp_path / 'leftover.lmdb'
    shutil.copytree(partial, leftover)
    with pytest.raises(FileNotFoundError, match='meta_info'):
        paired_paths_from_lmdb([str(leftover), str(leftover)], ['lq', 'gt'])
    shutil.rmtree(leftover)
    proc = run_python(['scripts/create_lmdb.py', '-i', str(folder), '-o', str(out), '--workers', '2'])
    assert proc.returncode == 0, proc.stdout
    assert 'interrupted' in proc.stdout and not partial.exists()
    assert len(read_meta_info(str(out))) == 150 and sorted(p.name for p in tmp_path.iterdir()) == ['hr.lmdb', 'imgs']
