"""scripts/inference_ssr.py, ssr_app/inference.py and SSRPipeline sampling on tiny random models (CPU, seconds)."""
import glob
import os
import os.path as osp
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

import ssr_arch  # noqa: F401  (registers)
import ssr_models  # noqa: F401
from conftest import tiny_svkr_opt
from ssr_pipelines.builder import load_pipeline
from ssr_pipelines.pipeline_ssr import svkr_tiled, upsample_lr, upsample_lr_rows
from ssr_utils.image_io import read_image

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, osp.join(ROOT, 'scripts'))
import inference_ssr  # noqa: E402


@pytest.fixture(scope='module')
def models(tiny_models):
    return tiny_models


def _odd_folder(folder):
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    img = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    cv2.imwrite(osp.join(folder, 'rgb.jpg'), img)
    cv2.imwrite(osp.join(folder, 'gray.png'), img[..., 0])
    rgba16 = rng.integers(0, 65536, (12, 10, 4), dtype=np.uint16)
    cv2.imwrite(osp.join(folder, 'rgba16.png'), rgba16)
    cv2.imwrite(osp.join(folder, 'tiny.webp'), img[:3, :2], [cv2.IMWRITE_WEBP_QUALITY, 101])  # < tile, < minimum
    cv2.imwrite(osp.join(folder, 'odd.tif'), rng.integers(0, 256, (21, 9, 3), dtype=np.uint8))
    data = cv2.imencode('.png', img)[1].tobytes()
    with open(osp.join(folder, 'corrupt.png'), 'wb') as f:
        f.write(data[:len(data) // 2])
    open(osp.join(folder, 'empty.jpg'), 'wb').close()
    with open(osp.join(folder, 'readme.txt'), 'w') as f:
        f.write('not an image')


def test_svkr_only_folder_with_odd_and_bad_files(models, tmp_path, capsys):
    src, out = str(tmp_path / 'in'), str(tmp_path / 'out')
    _odd_folder(src)
    code = inference_ssr.main(['-opt', models['svkr'], '-i', src, '-o', out, '--svkr-only', '--save-maps', '--tile',
                               '12', '--tile-overlap', '4', '--device', 'cpu', '-q'])
    text = capsys.readouterr().out
    assert code == 1  # something was skipped
    for bad in ('corrupt.png', 'empty.jpg', 'readme.txt'):
        assert bad in text.split('Skipped:')[1]
    assert 'Done: 5 image(s)' in text
    rgb = cv2.imread(osp.join(out, 'rgb.jpg'), cv2.IMREAD_UNCHANGED)  # --ext auto: a JPEG stays a JPEG
    assert rgb.shape == (52, 68, 3) and rgb.dtype == np.uint8
    gray = cv2.imread(osp.join(out, 'gray.png'), cv2.IMREAD_UNCHANGED)
    assert gray.shape == (52, 68)
    rgba = cv2.imread(osp.join(out, 'rgba16.png'), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (48, 40, 4) and rgba.dtype == np.uint16
    assert cv2.imread(osp.join(out, 'tiny.png')).shape == (12, 8, 3)
    assert cv2.imread(osp.join(out, 'odd.png')).shape == (84, 36, 3)
    assert cv2.imread(osp.join(out, 'rgb_depth.png')).shape == (52, 68, 3)
    assert cv2.imread(osp.join(out, 'rgb_kernel_var.png')).shape == (52, 68, 3)
    assert not osp.exists(osp.join(out, 'corrupt.png'))


def test_alpha_is_upscaled_separately(models, tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., :3] = 128
    rgba[:, 6:, 3] = 255  # right half opaque
    path = str(tmp_path / 'a.png')
    cv2.imwrite(path, rgba)
    code = inference_ssr.main(['-opt', models['svkr'], '-i', path, '-o', str(tmp_path / 'o'), '--svkr-only',
                               '--device', 'cpu', '-q', '--scale', '2'])
    assert code == 0
    out = cv2.imread(str(tmp_path / 'o' / 'a.png'), cv2.IMREAD_UNCHANGED)
    assert out.shape == (20, 24, 4)  # --scale 2 resizes the ×4 result
    assert out[:, :10, 3].max() <= 10 and out[:, 14:, 3].min() >= 245


@torch.no_grad()
def test_svkr_tiled_equals_untiled_without_depth(models):
    """The deterministic path: SVKR without depth is convolutional, so windows with enough context give
    the untiled result; with depth (min-max normalised per window) the blend stays close and seamless."""
    from basicsr.archs import build_network
    torch.manual_seed(0)
    net = build_network(tiny_svkr_opt(use_depth=False)).eval()
    lr = torch.rand(1, 3, 38, 46)
    ref = net(lr)['sr']
    out = svkr_tiled(net, lr, tile=16, overlap=4, context=16)['sr']
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < 1e-5
    # the test can fail: without context the windows' borders differ
    assert (svkr_tiled(net, lr, tile=16, overlap=4, context=0)['sr'] - ref).abs().max().item() > 1e-3

    torch.manual_seed(0)
    dnet = build_network(tiny_svkr_opt(use_depth=True)).eval()
    yy = torch.linspace(0, 1, 40)[:, None].expand(40, 40)
    lr = torch.stack([yy, yy.t(), 0.5 * (yy + yy.t())])[None] + 0.03 * torch.rand(1, 3, 40, 40)
    ref = dnet(lr)['sr']
    out = svkr_tiled(dnet, lr, tile=24, overlap=8)['sr']
    # the depth prior is normalised per window, so this is close but not exact (seams of such
    # per-window offsets are covered by tests/test_tiling.py::test_seams_no_worse_than_interior_and_smooth)
    assert out.shape == ref.shape and (out - ref).abs().max().item() < 1e-2


def _reference_whole_image_sr(pipe, lr, steps, seed):
    """Whole-image SSR written out from the networks' public steps (what SSRModel.sample computed before
    sampling became the one-window case of tiled sampling): pad, upsample, encode, condition once,
    denoise, decode, colour-correct, crop."""
    from ssr_pipelines.pipeline_ssr import pad_lr
    from ssr_utils.color_fix import color_fix
    net, s = pipe.unet, pipe.scale
    out = pipe.svkr(lr)
    lq, (h, w) = pad_lr(lr, s, net.size_multiple)
    hp, wp = lq.shape[-2:]
    depth = torch.nn.functional.pad(out['depth'], (0, wp - w, 0, hp - h), mode='replicate')
    kernel = torch.nn.functional.pad(out['kernel'], (0, wp - w, 0, hp - h), mode='replicate')
    up = upsample_lr(lq, (hp * s, wp * s))
    z_lr = net.encode_image(up)
    conds = net.encode_conditions(z_lr, depth, net.kernel_code(kernel), size=z_lr.shape[-2:])
    scheduler, timesteps = pipe.prepare_timesteps(steps)
    z = pipe.prepare_latents(z_lr.shape, scheduler, timesteps, torch.Generator().manual_seed(seed))
    z = pipe.denoise(z, scheduler, timesteps, lambda inp, t: net(inp, t, conditions=conds))
    img = color_fix(net.decode_latent(z), up, pipe.color_fix)
    return img[..., :h * s, :w * s]


@torch.no_grad()
def test_whole_image_is_the_one_window_case_and_tiles_run(models):
    pipe = load_pipeline(models['ssr'], device='cpu')
    lr = torch.rand(1, 3, 16, 20)  # even: the SVKR's one window needs no padding, as in the reference
    ref = _reference_whole_image_sr(pipe, lr, 2, 3)
    whole = pipe(lr, num_inference_steps=2, seed=3).images
    one = pipe(lr, num_inference_steps=2, seed=3, tile=64, tile_overlap=4, vae_tiling='windows').images
    assert whole.shape == ref.shape == (1, 3, 64, 80)
    assert torch.equal(whole, one)
    # the default VAE of a tiled call, layer-wise: the whole VAE up to summation order
    layerwise = pipe(lr, num_inference_steps=2, seed=3, tile=64, tile_overlap=4).images
    assert (layerwise - whole).abs().max().item() < 1e-4
    assert (whole - ref).abs().max().item() < 1e-5
    lr = torch.rand(1, 3, 14, 18)
    tiled = pipe(lr, num_inference_steps=2, seed=3, tile=8, tile_overlap=4, return_maps=True)
    assert tiled.images.shape == (1, 3, 56, 72) and torch.isfinite(tiled.images).all()
    assert tiled.depth.shape == (1, 1, 14, 18) and tiled.kernel_variance.shape == (1, 1, 14, 18)
    for cache in ('none', 'cpu'):  # where the per-window condition features live does not change the result
        again = pipe(lr, num_inference_steps=2, seed=3, tile=8, tile_overlap=4, cond_cache=cache).images
        assert (again - tiled.images).abs().max().item() < 1e-5
    # written straight into a view of an H×W×3 image array, as scripts/inference_ssr.py does
    arr = np.full((56, 72, 3), np.nan, dtype=np.float32)
    view = torch.from_numpy(arr).permute(2, 0, 1)[None]
    for fix in ('adain', 'wavelet'):
        whole = pipe(lr, num_inference_steps=2, seed=3, tile=8, tile_overlap=4, color_fix=fix).images
        assert pipe(lr, num_inference_steps=2, seed=3, tile=8, tile_overlap=4, color_fix=fix, out=view).images is view
        assert np.abs(arr - whole[0].permute(1, 2, 0).numpy()).max() < 1e-5


def test_upsample_lr_rows_equal_rows_of_the_whole_upsampled_image():
    lq = torch.rand(1, 3, 13, 9)
    whole = upsample_lr(lq, (52, 36))
    for a, b in ((0, 52), (0, 3), (5, 22), (30, 52), (51, 52)):
        assert torch.equal(upsample_lr_rows(lq, 4, a, b), whole[..., a:b, :])


def test_ssr_cli_with_tiles_gray_input(models, tmp_path, capsys):
    path = str(tmp_path / 'g.png')
    cv2.imwrite(path, np.random.default_rng(1).integers(0, 256, (11, 9), dtype=np.uint8))
    code = inference_ssr.main(['-opt', models['ssr'], '-i', path, '-o', str(tmp_path / 'o'), '--tile', '8',
                               '--tile-overlap', '2', '--steps', '2', '--seed', '1', '--color-fix', 'adain',
                               '--device', 'cpu', '-q', '--save-maps'])
    assert code == 0, capsys.readouterr().out
    out = cv2.imread(str(tmp_path / 'o' / 'g.png'), cv2.IMREAD_UNCHANGED)
    assert out.shape == (44, 36)
    assert sorted(os.listdir(tmp_path / 'o')) == ['g.png', 'g_depth.png', 'g_kernel_var.png']


def test_bad_arguments_exit_2_with_a_clear_line(models, tmp_path, capsys):
    img = str(tmp_path / 'x.png')
    cv2.imwrite(img, np.zeros((8, 8, 3), np.uint8))
    if not torch.cuda.is_available():
        assert inference_ssr.main(['-opt', models['svkr'], '-i', img, '-o', str(tmp_path), '--svkr-only', '--fp16',
                                   '--device', 'cpu']) == 2
        assert '--fp16' in capsys.readouterr().out
    assert inference_ssr.main(['-opt', models['svkr'], '-i', img, '-o', str(tmp_path / 'o'), '--device', 'cpu']) == 2
    assert 'network_g:type' in capsys.readouterr().out  # an SVKR option file needs --svkr-only
    assert inference_ssr.main(['-opt', str(tmp_path / 'nope.yml'), '-i', img, '-o', str(tmp_path)]) == 2
    assert 'nope.yml' in capsys.readouterr().out
    assert inference_ssr.main(['-opt', models['svkr'], '-i', img, '-o', str(tmp_path), '--svkr-only', '--tile', '8',
                               '--tile-overlap', '8']) == 2
    assert '--tile-overlap' in capsys.readouterr().out
    ssr = yaml.safe_load(open(models['ssr']))
    ssr.pop('network_svkr')
    ssr['conditions'] = dict(source='gt')
    no_svkr = str(tmp_path / 'no_svkr.yml')
    with open(no_svkr, 'w') as f:
        yaml.safe_dump(ssr, f)
    assert inference_ssr.main(['-opt', no_svkr, '-i', img, '-o', str(tmp_path / 'o'), '--device', 'cpu']) == 2
    assert 'network_svkr' in capsys.readouterr().out
    # an output that would overwrite its input is refused, the input stays
    before = open(img, 'rb').read()
    assert inference_ssr.main(['-opt', models['svkr'], '-i', img, '-o', str(tmp_path), '--svkr-only', '-q',
                               '--device', 'cpu']) == 1
    assert open(img, 'rb').read() == before


def test_experiment_folder_as_opt(models, tmp_path):
    """``-opt experiments/<name>``: the option file BasicSR copied there and models/net_g_latest.pth."""
    import shutil
    exp = tmp_path / 'experiments' / 'svkr_t'
    (exp / 'models').mkdir(parents=True)
    shutil.copy(models['svkr'], exp / 'train_svkr_t.yml')
    ckpt = yaml.safe_load(open(models['svkr']))['path']['pretrain_network_g']
    shutil.copy(ckpt, exp / 'models' / 'net_g_latest.pth')
    img = str(tmp_path / 'x.png')
    cv2.imwrite(img, np.full((9, 9, 3), 100, np.uint8))
    assert inference_ssr.main(['-opt', str(exp), '-i', img, '-o', str(tmp_path / 'o'), '--svkr-only', '-q',
                               '--device', 'cpu']) == 0
    ref = str(tmp_path / 'ref')
    assert inference_ssr.main(['-opt', models['svkr'], '-i', img, '-o', ref, '--svkr-only', '-q', '--device',
                               'cpu']) == 0
    assert np.array_equal(cv2.imread(str(tmp_path / 'o' / 'x.png')), cv2.imread(osp.join(ref, 'x.png')))
    (exp / 'models' / 'net_g_latest.pth').unlink()
    assert inference_ssr.main(['-opt', str(exp), '-i', img, '-o', str(tmp_path / 'o'), '--svkr-only']) == 2


def test_shared_odd_inputs_smoke(models, shared_data, tmp_path):
    folder = osp.join(shared_data, 'odd_inputs')
    if not osp.isdir(folder):
        pytest.skip('odd_inputs is not present')
    # small crops keep the test fast; the crops keep each file's kind (gray, RGBA, 16-bit)
    src = tmp_path / 'in'
    src.mkdir()
    for path in sorted(glob.glob(osp.join(folder, '*'))):
        arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(src / (osp.splitext(osp.basename(path))[0] + '.png')), arr[:20, :24])
    code = inference_ssr.main(['-opt', models['svkr'], '-i', str(src), '-o', str(tmp_path / 'o'), '--svkr-only',
                               '--device', 'cpu', '-q'])
    assert code == 0
    for path in sorted(src.iterdir()):
        src_img = read_image(str(path))
        out = read_image(str(tmp_path / 'o' / path.name))
        assert out.shape == (4 * src_img.shape[0], 4 * src_img.shape[1])
        assert out.gray == src_img.gray and out.bit_depth == src_img.bit_depth
        assert (out.alpha is None) == (src_img.alpha is None)
