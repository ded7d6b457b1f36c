"""RGB-D scenes with exact depth (ssr_data/scenes.py) and their datasets (scripts/make_scene_data.py)."""
import json
import os.path as osp
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT, run_python
from ssr_data.scenes import (BACKDROP, GROUND, TEST_PHOTOS, SceneConfig, SceneGenerator, TexturePhoto,
                             default_texture_photos, texture_photos_from_folder)
from ssr_data.dataset_io import depth_to_uint16

if osp.join(ROOT, 'scripts') not in sys.path:
    sys.path.insert(0, osp.join(ROOT, 'scripts'))

SEEDS = range(12)


@pytest.fixture(scope='module')
def photos():
    return default_texture_photos('train', shared_dir=None)


@pytest.fixture(scope='module')
def scenes(photos):
    """Scenes of a non-square size, with their layers, from the default generator."""
    gen = SceneGenerator(photos, size=(96, 128))
    return [gen.generate(seed, return_layers=True) for seed in SEEDS]


def _rays(meta):
    """World direction (camera depth 1) of every pixel and the camera centre, from the scene's meta alone."""
    cam = meta['camera']
    h, w = meta['size']
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    q = np.stack([(xs - cam['cx']) / cam['focal_px'], (ys - cam['cy']) / cam['focal_px'], np.ones_like(xs)], -1)
    return q @ np.array(cam['R_cam_to_world']).T, np.array(cam['center'])


def _plane_inv_depth(meta, normal, point):
    """Inverse camera depth of the plane (normal, point) along every pixel ray (ray-plane intersection)."""
    d, c = _rays(meta)
    normal, point = np.asarray(normal, np.float64), np.asarray(point, np.float64)
    return (d @ normal) / float(normal @ (point - c))


def _to_inv(depth, meta):
    lo, hi = meta['inv_depth_range']
    return lo + depth.astype(np.float64) * (hi - lo)


def test_outputs_and_value_ranges(scenes):
    for rgb, depth, meta in scenes:
        assert rgb.shape == (96, 128, 3) and rgb.dtype == np.uint8
        assert depth.shape == (96, 128) and depth.dtype == np.float32
        assert depth.min() == 0 and depth.max() == 1  # min-max normalised: the nearest pixel is 1
        assert meta['labels'].shape == (96, 128)
        assert meta['surfaces'][BACKDROP]['kind'] == 'backdrop' and meta['surfaces'][GROUND]['kind'] == 'ground'
        for label in np.unique(meta['labels']):
            assert meta['surfaces'][label].get('visible', True)
    # the scenes vary: horizons, object counts, both standing and floating objects, domes and flat cards
    assert len({round(m['camera']['horizon_row']) for _, _, m in scenes}) > 6
    objects = [s for _, _, m in scenes for s in m['surfaces'][2:] if s.get('visible')]
    assert {s['grounded'] for s in objects} == {True, False} and {s['dome'] for s in objects} == {True, False}
    assert len({len(m['surfaces']) for _, _, m in scenes}) > 3


def test_same_seed_same_scene(photos, scenes):
    gen = SceneGenerator(photos, size=(96, 128))
    gen.generate(99)  # no state carries over from scene to scene
    for seed in (3, 7):
        rgb, depth, meta = gen.generate(seed)
        ref_rgb, ref_depth, ref_meta = scenes[seed]
        assert np.array_equal(rgb, ref_rgb) and np.array_equal(depth, ref_depth)
        assert np.array_equal(meta['labels'], ref_meta['labels'])
    assert not np.array_equal(gen.generate(3)[1], gen.generate(4)[1])
    assert np.array_equal(gen.generate((5, 2))[0], gen.generate([5, 2])[0])


def test_depth_of_planes_is_exact(scenes):
    """Ground, backdrop and flat objects: the depth is the ray-plane intersection computed from the meta."""
    checked = 0
    for rgb, depth, meta in scenes:
        inv = _to_inv(depth, meta)
        labels = meta['labels']
        for label, surf in enumerate(meta['surfaces']):
            mask = labels == label
            if not mask.any() or surf.get('dome'):
                continue
            if surf['kind'] == 'object':
                normal, point = np.cross(surf['e1'], surf['e2']), surf['origin']
            else:
                normal, point = surf['normal'], surf['point']
            expected = _plane_inv_depth(meta, normal, point)
            np.testing.assert_allclose(inv[mask], expected[mask], rtol=2e-4, atol=1e-6 * meta['inv_depth_range'][1])
            checked += mask.sum()
    assert checked > 0.8 * len(scenes) * 96 * 128


def test_ground_depth_is_monotone(scenes):
    """Down every column the ground comes nearer (the image y axis points away from the horizon)."""
    columns = 0
    for _, depth, meta in scenes:
        ground = meta['labels'] == GROUND
        horizon = meta['camera']['horizon_row']
        for x in range(depth.shape[1]):
            rows = np.flatnonzero(ground[:, x])
            if len(rows) < 2:
                continue
            inv = _to_inv(depth[rows, x], meta) / meta['inv_depth_range'][1]
            diffs = np.diff(inv) / np.diff(rows)
            assert np.all(diffs > 0), f'seed {meta["seed"]}, column {x}'
            columns += 1
        if ground.any():
            assert np.flatnonzero(ground.any(1))[0] > horizon - 0.1 * depth.shape[1]  # roll is small
    assert columns > 0.5 * len(scenes) * 128


def test_nearer_surface_wins_at_every_overlap(scenes):
    """Per pixel: the label and depth are those of the nearest surface covering the pixel centre."""
    overlaps = 0
    for _, depth, meta in scenes:
        h, w = depth.shape
        best_inv = np.full((h, w), -np.inf)
        best_label = np.full((h, w), -1)
        object_cover = np.zeros((h, w), int)
        for layer in meta['layers']:
            y0, y1, x0, x1 = layer['box']
            covers = layer['alpha'] >= 0.5
            nearer = covers & (layer['inv_depth'] > best_inv[y0:y1, x0:x1])
            best_inv[y0:y1, x0:x1][nearer] = layer['inv_depth'][nearer]
            best_label[y0:y1, x0:x1][nearer] = layer['label']
            if layer['label'] >= 2:
                object_cover[y0:y1, x0:x1] += covers
        assert np.array_equal(best_label, meta['labels'])
        np.testing.assert_allclose(_to_inv(depth, meta), best_inv, rtol=1e-4, atol=1e-6)
        overlaps += (object_cover >= 2).sum()
    assert overlaps > 100  # objects did overlap each other in these scenes


def _flat_colour_generator(colours):
    photos = [TexturePhoto(f'c{i}', np.full((32, 32, 3), c, np.uint8)) for i, c in enumerate(colours)]
    # no colour effects: every surface shows exactly its photograph's colour
    gen = SceneGenerator(photos, size=(96, 128), gain=(1.0, 1.0), haze=(0.0, 0.0), shadow=(0.0, 0.0),
                         shading_ambient=(1.0, 1.0))
    return {p.name: np.array(c, np.float64) for p, c in zip(photos, colours)}, gen


def _partial_layers(meta):
    """How many surfaces cover each pixel partly (anti-aliased silhouettes and the ground's edges)."""
    count = np.zeros(meta['labels'].shape, int)
    for layer in meta['layers']:
        y0, y1, x0, x1 = layer['box']
        count[y0:y1, x0:x1] += (layer['alpha'] > 0.002) & (layer['alpha'] < 0.998)
    return count


def test_image_and_depth_edges_coincide():
    """Flat-coloured surfaces: away from silhouettes each pixel has exactly the colour of the surface that
    its depth and label name, and every depth jump is between two surfaces with an image edge there too."""
    colour_of, gen = _flat_colour_generator(
        [(230, 20, 20), (20, 200, 30), (30, 40, 220), (240, 230, 20), (20, 220, 230), (210, 30, 220),
         (250, 250, 250), (10, 10, 10), (130, 70, 10), (120, 120, 120), (250, 140, 0), (0, 110, 90)])
    interior_pixels = jumps = 0
    for seed in range(8):
        rgb, depth, meta = gen.generate(seed, return_layers=True)
        labels = meta['labels']
        lab_col = np.array([colour_of[s['texture']] if 'texture' in s else np.zeros(3) for s in meta['surfaces']])
        expected = lab_col[labels]
        img = rgb.astype(np.float64)
        interior = _partial_layers(meta) == 0
        assert np.abs(img[interior] - expected[interior]).max() <= 1
        interior_pixels += interior.sum()
        for axis in (0, 1):  # depth jumps between 4-neighbours
            jump = np.abs(np.diff(depth, axis=axis)) > 0.05
            assert np.all(np.diff(labels, axis=axis)[jump] != 0)
            colour_jump = np.abs(np.diff(img, axis=axis)).sum(-1) > 0
            same_colour = np.all(np.diff(expected, axis=axis) == 0, axis=-1)
            assert np.all(colour_jump[jump & ~same_colour])
            jumps += jump.sum()
    assert interior_pixels > 0.8 * 8 * 96 * 128 and jumps > 200


def test_silhouette_pixels_show_mostly_the_surface_their_depth_names():
    """Black and white surfaces: where a pixel mixes two surfaces (one partial coverage), its colour is on
    the side of the surface that covers the pixel centre, whose depth it has."""
    colour_of, gen = _flat_colour_generator([(0, 0, 0), (255, 255, 255)])
    mixed = 0
    for seed in range(12):
        rgb, depth, meta = gen.generate(seed, return_layers=True)
        white = np.array([colour_of.get(s.get('texture'), np.zeros(3))[0] > 0 for s in meta['surfaces']])
        labels_white = white[meta['labels']]
        two_surfaces = _partial_layers(meta) == 1
        value = rgb[..., 0].astype(int)
        assert np.all(value[two_surfaces & labels_white] >= 127)
        assert np.all(value[two_surfaces & ~labels_white] <= 128)
        mixed += (two_surfaces & (value > 2) & (value < 253)).sum()
    assert mixed > 300


def test_texture_splits_hold_out_photographs():
    train = {p.name for p in default_texture_photos('train', shared_dir=None)}
    test = {p.name for p in default_texture_photos('test', shared_dir=None)}
    every = {p.name for p in default_texture_photos('all', shared_dir=None)}
    assert train and test and not train & test and every == train | test
    assert {'chelsea', 'coffee'} <= test and 'cat' not in every  # cat is chelsea under another name
    fewer = {p.name for p in default_texture_photos('train', shared_dir=None, exclude=('astronaut',))}
    assert fewer == train - {'astronaut'}
    with pytest.raises(ValueError, match='split'):
        default_texture_photos('val')


def test_mcmaster_photographs_are_split_too(shared_data):
    folder = osp.join(shared_data, 'train_hr')
    train = {p.name for p in default_texture_photos('train', shared_dir=folder)}
    test = {p.name for p in default_texture_photos('test', shared_dir=folder)}
    assert {n for n in test if n.startswith('mcmaster_')} == {n for n in TEST_PHOTOS if n.startswith('mcmaster_')}
    assert len([n for n in train if n.startswith('mcmaster_')]) == 15 and not train & test


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match='object_aspect'):
        SceneConfig(object_aspect=(2.0, 1.0))
    with pytest.raises(ValueError, match='shapes'):
        SceneConfig(shapes=(('cube', 1.0),))
    with pytest.raises(ValueError, match="'flat'"):
        TexturePhoto('flat', np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match='unique'):
        SceneGenerator([('a', np.zeros((32, 32, 3), np.uint8))] * 2)
    (tmp_path / 'bad.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='bad.png'):
        texture_photos_from_folder(str(tmp_path))
    assert SceneConfig.from_dict(json.loads(json.dumps(SceneConfig().to_dict()))) == SceneConfig()


def test_lmdb_round_trip_through_ssr_degradation_dataset(tmp_path, photos):
    from ssr_app.tools.make_scene_data import make_scene_data
    from ssr_data.lmdb_util import read_lmdb_image, read_meta_info
    from ssr_data.ssr_degradation_dataset import SSRDegradationDataset
    out = tmp_path / 'scenes'
    make_scene_data(str(out), 3, size=(64, 80), seed=4, textures=photos, show_progress=False)
    assert [k for k, _ in read_meta_info(str(out / 'hr.lmdb'))] == ['scene_000000', 'scene_000001', 'scene_000002']
    assert (out / 'depth.lmdb' / 'meta_info.txt').read_text().splitlines()[0] == 'scene_000000.png (64,80,1) 0'
    info = json.loads((out / 'scenes.json').read_text())
    assert info['scenes'][2]['seed'] == [4, 2] and info['textures'] == [p.name for p in photos]
    ds = SSRDegradationDataset({'dataroot_gt': str(out / 'hr.lmdb'), 'dataroot_depth': str(out / 'depth.lmdb'),
                                'scale': 4, 'gt_size': None, 'use_hflip': False, 'use_rot': False, 'seed': 0,
                                'kernel_size': 11})
    gen = SceneGenerator(photos, size=(64, 80))
    assert len(ds) == 3
    for i in range(3):
        rgb, depth, _ = gen.generate((4, i))
        sample = ds[i]
        assert sample['gt_path'] == f'scene_{i:06d}'
        assert np.array_equal(np.round(sample['gt'].permute(1, 2, 0).numpy() * 255).astype(np.uint8), rgb)
        stored = read_lmdb_image(str(out / 'depth.lmdb'), f'scene_{i:06d}')
        assert stored.dtype == np.uint16 and np.array_equal(stored, depth_to_uint16(depth))
        np.testing.assert_allclose(sample['depth'][0].numpy(), depth, atol=0.5 / 65535 + 1e-7)
        assert sample['lq'].shape == (3, 16, 20) and sample['kernel'].shape == (121, 16, 20)
    # compressed depth PNGs hold the same values
    make_scene_data(str(tmp_path / 'compact'), 1, size=(64, 80), seed=4, textures=photos, show_progress=False,
                    compact=True)
    assert (tmp_path / 'compact' / 'depth.lmdb' / 'meta_info.txt').read_text().split()[-1] == '1'
    assert np.array_equal(read_lmdb_image(str(tmp_path / 'compact' / 'depth.lmdb'), 'scene_000000'),
                          read_lmdb_image(str(out / 'depth.lmdb'), 'scene_000000'))


def test_workers_give_the_same_data(tmp_path, photos):
    from ssr_app.tools.make_scene_data import make_scene_data
    from ssr_data.lmdb_util import read_lmdb_image
    for workers in (1, 2):
        make_scene_data(str(tmp_path / f'w{workers}'), 5, size=48, seed=1, textures=photos, workers=workers,
                        show_progress=False)
    for i in range(5):
        for db in ('hr.lmdb', 'depth.lmdb'):
            a = read_lmdb_image(str(tmp_path / 'w1' / db), f'scene_{i:06d}')
            b = read_lmdb_image(str(tmp_path / 'w2' / db), f'scene_{i:06d}')
            assert np.array_equal(a, b)


def test_script_writes_held_out_folders(tmp_path):
    out = tmp_path / 'test_scenes'
    args = ['scripts/make_scene_data.py', '--output', str(out), '--num', '2', '--size', '48x64', '--seed', '3',
            '--split', 'test', '--format', 'folder', '--labels', '--shared-dir', 'none']
    proc = run_python(args)
    assert proc.returncode == 0, proc.stdout
    assert 'scenes/s' in proc.stdout
    info = json.loads((out / 'scenes.json').read_text())
    assert set(info['textures']) == {'chelsea', 'coffee'} and info['split'] == 'test'
    gen = SceneGenerator(default_texture_photos('test', shared_dir=None), size=(48, 64))
    for i in range(2):
        rgb, depth, meta = gen.generate((3, i))
        image = cv2.imread(str(out / 'image' / f'scene_{i:06d}.png'), cv2.IMREAD_UNCHANGED)
        stored = cv2.imread(str(out / 'depth' / f'scene_{i:06d}.png'), cv2.IMREAD_UNCHANGED)
        labels = cv2.imread(str(out / 'labels' / f'scene_{i:06d}.png'), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(image[:, :, ::-1], rgb)
        assert stored.dtype == np.uint16 and np.array_equal(stored, depth_to_uint16(depth))
        assert np.array_equal(labels, meta['labels'])
        used = {s['texture'] for s in info['scenes'][i]['surfaces'] if 'texture' in s}
        assert used <= {'chelsea', 'coffee'}
    from ssr_app.tools.make_scene_data import main
    before = (out / 'depth' / 'scene_000000.png').read_bytes()
    with pytest.raises(SystemExit, match='--overwrite'):  # an existing set is never replaced silently
        main(args[1:])
    assert (out / 'depth' / 'scene_000000.png').read_bytes() == before
