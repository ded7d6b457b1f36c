"""The Real-ESRGAN / StableSR command-line habits of scripts/inference_ssr.py (ssr_app.cli, ssr_app.inference):
every flag does what it says on tiny random models, every bad value stops with one line naming the flag."""
import logging
import os
import os.path as osp
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import basicsr_messages
import ssr_arch  # noqa: F401  (registers)
import ssr_models  # noqa: F401
from ssr_app import inference
from ssr_app.cli import MIN_TILE, build_inference_parser

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, osp.join(ROOT, 'scripts'))
import inference_ssr  # noqa: E402


@pytest.fixture(scope='module')
def models(tiny_models):
    return tiny_models


def _image(path, shape=(11, 9, 3), seed=1, dtype=np.uint8):
    top = 65535 if dtype == np.uint16 else 255
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, top + 1, shape, dtype=dtype))
    return str(path)


def _svkr(models, src, out, *flags):
    return inference_ssr.main(['-opt', models['svkr'], '-i', src, '-o', str(out), '--svkr-only', '--device', 'cpu',
                               '-q', *flags])


def _ssr(models, src, out, *flags):
    return inference_ssr.main(['-opt', models['ssr'], '-i', src, '-o', str(out), '--device', 'cpu', '-q',
                               '--steps', '2', *flags])


def _one_error_line(capsys, flag):
    """The run printed exactly one line (stdout and stderr together), and it names ``flag``."""
    cap = capsys.readouterr()
    lines = [ln for ln in (cap.out + cap.err).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert flag in lines[0], lines[0]
    return lines[0]


def _argparse_error(capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        inference_ssr.main(argv)
    assert exc.value.code == 2
    return _one_error_line(capsys, flag)


def test_outscale_short_and_long_and_old_name(models, tmp_path):
    src = _image(tmp_path / 'x.png')
    for i, flag in enumerate(('-s', '--outscale', '--scale')):
        out = tmp_path / f'o{i}'
        assert _svkr(models, src, out, flag, '2') == 0
        assert cv2.imread(str(out / 'x.png')).shape == (22, 18, 3)
    assert _svkr(models, src, tmp_path / 'o3', '-s', '3.5') == 0
    assert cv2.imread(str(tmp_path / 'o3' / 'x.png')).shape == (38, 32, 3)  # round(11·3.5), round(9·3.5)


def test_outscale_bad_value(models, tmp_path, capsys):
    src = _image(tmp_path / 'x.png')
    assert _svkr(models, src, tmp_path / 'o', '-s', '0') == 2
    _one_error_line(capsys, '--outscale')


def test_ext_and_suffix(models, tmp_path):
    src = tmp_path / 'in'
    src.mkdir()
    _image(src / 'photo.jpg')
    _image(src / 'plain.png', seed=2)
    _image(src / 'rgba.png', shape=(11, 9, 4), seed=3)
    out = tmp_path / 'auto'
    assert _svkr(models, str(src), out) == 0  # --ext auto: JPEG stays JPEG, the rest PNG
    assert sorted(os.listdir(out)) == ['photo.jpg', 'plain.png', 'rgba.png']
    out = tmp_path / 'jpg'
    assert _svkr(models, str(src), out, '--ext', 'jpg', '--suffix', 'x4') == 0
    # an alpha channel cannot go into a JPEG: PNG, as Real-ESRGAN does
    assert sorted(os.listdir(out)) == ['photo_x4.jpg', 'plain_x4.jpg', 'rgba_x4.png']
    assert cv2.imread(str(out / 'rgba_x4.png'), cv2.IMREAD_UNCHANGED).shape == (44, 36, 4)
    with open(out / 'plain_x4.jpg', 'rb') as f:
        assert f.read(3) == b'\xff\xd8\xff'  # really a JPEG
    out = tmp_path / 'png'
    assert _svkr(models, str(src), out, '--ext', 'png') == 0
    assert sorted(os.listdir(out)) == ['photo.png', 'plain.png', 'rgba.png']


def test_sixteen_bit_input_keeps_16_bits_in_png_only(models, tmp_path):
    src = _image(tmp_path / 'deep.png', dtype=np.uint16)
    assert _svkr(models, src, tmp_path / 'a') == 0
    assert cv2.imread(str(tmp_path / 'a' / 'deep.png'), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert _svkr(models, src, tmp_path / 'b', '--ext', 'jpg') == 0
    assert cv2.imread(str(tmp_path / 'b' / 'deep.jpg'), cv2.IMREAD_UNCHANGED).dtype == np.uint8


def test_bad_ext_and_suffix(models, tmp_path, capsys):
    src = _image(tmp_path / 'x.png')
    _argparse_error(capsys, ['-opt', models['svkr'], '-i', src, '-o', str(tmp_path / 'o'), '--svkr-only',
                             '--ext', 'bmp'], '--ext')
    assert _svkr(models, src, tmp_path / 'o', '--suffix', 'a/b') == 2
    _one_error_line(capsys, '--suffix')


def test_suffix_lets_an_output_sit_beside_its_input(models, tmp_path, capsys):
    src = _image(tmp_path / 'x.png')
    assert _svkr(models, src, tmp_path) == 1  # would overwrite the input: skipped
    assert 'overwrite the input' in capsys.readouterr().out
    assert _svkr(models, src, tmp_path, '--suffix', 'out') == 0
    assert osp.isfile(tmp_path / 'x_out.png')


def test_tile_pad_is_the_tile_overlap(models, tmp_path):
    # 16-bit in, 16-bit out: the tiny random SVKR's window effects are below one 8-bit level
    src = _image(tmp_path / 'x.png', shape=(23, 19, 3), dtype=np.uint16)
    results = {}
    for flag in ('--tile-overlap', '--tile_overlap', '--tile_pad'):
        out = tmp_path / flag.strip('-')
        assert _svkr(models, src, out, '--tile', '10', flag, '2', '--ext', 'png') == 0
        results[flag] = cv2.imread(str(out / 'x.png'), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(results['--tile_pad'], results['--tile-overlap'])
    assert np.array_equal(results['--tile_overlap'], results['--tile-overlap'])
    # the overlap is used: another one gives other numbers (the SVKR's depth is normalised per window)
    assert _svkr(models, src, tmp_path / 'other', '--tile', '10', '--tile_pad', '6') == 0
    assert not np.array_equal(cv2.imread(str(tmp_path / 'other' / 'x.png'), cv2.IMREAD_UNCHANGED),
                              results['--tile-overlap'])


def test_tile_default_overlap_fits_small_tiles():
    assert inference.check_tiling(None, None) == (0, 0)
    assert inference.check_tiling(8, None) == (8, 2)
    assert inference.check_tiling(256, None) == (256, 16)
    assert inference.check_tiling(64, 0) == (64, 0)


@pytest.mark.parametrize('flags, named', [
    (['--tile', '0'], '--tile '),
    (['--tile', '-8'], '--tile '),
    (['--tile', str(MIN_TILE - 1)], '--tile '),
    (['--tile', '3', '--tile_pad', '0'], '--tile '),
    (['--tile', '16', '--tile_pad', '16'], '--tile-overlap'),
    (['--tile', '16', '--tile-overlap', '-1'], '--tile-overlap'),
])
def test_bad_tiles_stop_naming_the_flag(models, tmp_path, capsys, flags, named):
    src = _image(tmp_path / 'x.png')
    assert _svkr(models, src, tmp_path / 'o', *flags) == 2
    line = _one_error_line(capsys, named)
    if named == '--tile ':
        assert '--tile-overlap' not in line
    assert not osp.exists(tmp_path / 'o')  # stopped before anything was made


def test_precision_defaults_fp16_on_cuda_only():
    cuda, cpu, mps = torch.device('cuda'), torch.device('cpu'), torch.device('mps')
    assert inference.default_precision(cuda) == 'fp16'
    assert inference.default_precision(cuda, fp32=True) == 'fp32'
    assert inference.default_precision(cuda, bf16=True) == 'bf16'
    assert inference.default_precision(cpu) == 'fp32'
    assert inference.default_precision(mps) == 'fp32'
    assert inference.default_precision(cpu, fp32=True) == 'fp32'
    assert inference.default_precision(cpu, bf16=True) == 'bf16'  # bfloat16 weights run on CPUs
    with pytest.raises(inference.OptionError) as err:  # float16 arithmetic is emulated there: far too slow
        inference.default_precision(cpu, fp16=True)
    assert '--fp16' in str(err.value) and '--bf16' in str(err.value)


def test_fp32_flag_runs_on_cpu_and_excludes_fp16(models, tmp_path, capsys):
    src = _image(tmp_path / 'x.png')
    assert _svkr(models, src, tmp_path / 'a', '--fp32') == 0
    assert _svkr(models, src, tmp_path / 'b') == 0
    assert np.array_equal(cv2.imread(str(tmp_path / 'a' / 'x.png')), cv2.imread(str(tmp_path / 'b' / 'x.png')))
    capsys.readouterr()
    _argparse_error(capsys, ['-opt', models['svkr'], '-i', src, '-o', str(tmp_path / 'c'), '--fp32', '--fp16'],
                    '--fp16')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_gpu_default_is_fp16_and_close_to_fp32(models, tmp_path):
    src = _image(tmp_path / 'x.png', shape=(24, 20, 3))
    flags = ['--device', 'cuda', '--seed', '3']
    assert inference_ssr.main(['-opt', models['ssr'], '-i', src, '-o', str(tmp_path / 'h'), '-q', '--steps', '2']
                              + flags) == 0
    assert inference_ssr.main(['-opt', models['ssr'], '-i', src, '-o', str(tmp_path / 'f'), '-q', '--steps', '2',
                               '--fp32'] + flags) == 0
    half = cv2.imread(str(tmp_path / 'h' / 'x.png')).astype(np.float64)
    full = cv2.imread(str(tmp_path / 'f' / 'x.png')).astype(np.float64)
    assert not np.array_equal(half, full)  # fp16 really ran
    assert np.abs(half - full).mean() < 8


def test_sampler_and_strength(models, tmp_path, capsys):
    src = _image(tmp_path / 'x.png', shape=(12, 10, 3))
    outs = {}
    for name, flags in (('ddim', ['--sampler', 'ddim']), ('dpm', ['--sampler', 'dpmsolver++']),
                        ('half', ['--sampler', 'ddim', '--strength', '0.5']), ('again', ['--sampler', 'ddim'])):
        assert _ssr(models, src, tmp_path / name, '--seed', '4', *flags) == 0, capsys.readouterr().out
        outs[name] = cv2.imread(str(tmp_path / name / 'x.png')).astype(np.int32)
    assert np.array_equal(outs['ddim'], outs['again'])
    assert not np.array_equal(outs['ddim'], outs['dpm'])
    assert not np.array_equal(outs['ddim'], outs['half'])


def test_bad_sampler_and_strength(models, tmp_path, capsys):
    src = _image(tmp_path / 'x.png')
    base = ['-opt', models['ssr'], '-i', src, '-o', str(tmp_path / 'o'), '--device', 'cpu']
    _argparse_error(capsys, base + ['--sampler', 'euler'], '--sampler')
    for value in ('0', '1.5', '-0.2'):
        assert inference_ssr.main(base + ['--strength', value]) == 2
        _one_error_line(capsys, '--strength')
    assert _svkr(models, src, tmp_path / 'o', '--strength', '0.5') == 2
    _one_error_line(capsys, '--strength')
    assert _svkr(models, src, tmp_path / 'o', '--sampler', 'ddim') == 2
    _one_error_line(capsys, '--sampler')


def test_vae_residual_flag_changes_the_output_and_is_refused_with_svkr_only(models, tmp_path, capsys):
    src = _image(tmp_path / 'x.png', shape=(12, 10, 3))
    outs = {}
    for name, flags in (('plain', []), ('res', ['--vae-residual']), ('off', ['--no-vae-residual'])):
        assert _ssr(models, src, tmp_path / name, '--seed', '4', '--strength', '0.5', '--color-fix', 'none',
                    *flags) == 0, capsys.readouterr().out
        outs[name] = cv2.imread(str(tmp_path / name / 'x.png')).astype(np.int32)
    assert np.array_equal(outs['plain'], outs['off'])  # the model's default: off
    assert not np.array_equal(outs['plain'], outs['res'])
    capsys.readouterr()
    assert _svkr(models, src, tmp_path / 'o', '--vae-residual') == 2
    _one_error_line(capsys, '--vae-residual')


def test_num_samples_one_seed_each_named_apart(models, tmp_path, capsys):
    src = _image(tmp_path / 'x.png', shape=(12, 10, 3))
    assert _ssr(models, src, tmp_path / 'n', '--seed', '5', '--num_samples', '3', '--save-maps') == 0
    assert sorted(os.listdir(tmp_path / 'n')) == ['x_depth.png', 'x_kernel_var.png', 'x_seed5.png', 'x_seed6.png',
                                                  'x_seed7.png']
    imgs = [cv2.imread(str(tmp_path / 'n' / f'x_seed{s}.png')) for s in (5, 6, 7)]
    assert not np.array_equal(imgs[0], imgs[1]) and not np.array_equal(imgs[1], imgs[2])
    for seed, img in zip((5, 6), imgs):  # sample k is the single run with seed + k (the samples of an image run
        # as one batch, which may round differently in the last bit: at most one grey level)
        assert _ssr(models, src, tmp_path / f's{seed}', '--seed', str(seed)) == 0
        single = cv2.imread(str(tmp_path / f's{seed}' / 'x.png')).astype(np.int32)
        assert np.abs(single - img.astype(np.int32)).max() <= 1
    assert _ssr(models, src, tmp_path / 'm', '--num-samples', '2', '--suffix', 'v') == 0  # the model's seed, 0
    assert sorted(os.listdir(tmp_path / 'm')) == ['x_v_seed0.png', 'x_v_seed1.png']
    capsys.readouterr()
    assert _ssr(models, src, tmp_path / 'o', '--num_samples', '0') == 2
    _one_error_line(capsys, '--num_samples')
    assert _svkr(models, src, tmp_path / 'o', '--num_samples', '2') == 2  # the SVKR path is deterministic
    _one_error_line(capsys, '--num_samples')


def test_device_auto_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert inference.resolve_device('auto').type == 'cuda'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(inference, '_mps_available', lambda: True)
    assert inference.resolve_device('auto').type == 'mps'
    assert inference.resolve_device('mps').type == 'mps'
    monkeypatch.setattr(inference, '_mps_available', lambda: False)
    assert inference.resolve_device('auto').type == 'cpu'
    assert inference.resolve_device(None).type == 'cpu'


def test_explicit_mps_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(inference, '_mps_available', lambda: False)
    with basicsr_messages(handler_level=logging.WARNING) as records:
        assert inference.resolve_device('mps').type == 'cpu'
    assert any('--device mps' in m and 'CPU' in m for m in records)


@pytest.mark.parametrize('device', ['tpu', 'gpu0', 'cuda:x'] + ([] if torch.cuda.is_available() else ['cuda',
                                                                                                     'cuda:1']))
def test_bad_device_stops_naming_the_flag(models, tmp_path, capsys, device):
    src = _image(tmp_path / 'x.png')
    assert inference_ssr.main(['-opt', models['svkr'], '-i', src, '-o', str(tmp_path / 'o'), '--svkr-only',
                               '--device', device]) == 2
    _one_error_line(capsys, '--device')


def test_empty_folder_is_an_error(models, tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / '.hidden').write_text('x')
    assert _svkr(models, str(tmp_path / 'empty'), tmp_path / 'o') == 2
    _one_error_line(capsys, '--input')
    assert _svkr(models, str(tmp_path / 'missing'), tmp_path / 'o') == 2
    _one_error_line(capsys, 'missing')


def test_help_lists_every_flag(capsys):
    text = build_inference_parser().format_help()
    for flag in ('-s', '--outscale', '--scale', '--ext', '--suffix', '--tile', '--tile_pad', '--tile-overlap',
                 '--fp32', '--fp16', '--bf16', '--sampler', '--strength', '--num_samples', '--device', '--seed',
                 '--steps', '--color-fix', '--svkr-only', '--save-maps', '--model_path', '-opt', '--batch_size',
                 '--vae-tiling', '--offload', '--attention-slicing', '--vae-residual'):
        assert flag in text, flag


# ------------------------------------------------------------------------------------------ batches, switches
def test_batch_size_groups_equal_sizes_and_gives_the_one_by_one_images(models, tmp_path, monkeypatch):
    src = tmp_path / 'in'
    src.mkdir()
    for name, shape, seed in (('a', (12, 10, 3), 1), ('b', (10, 12, 3), 2), ('c', (12, 10, 3), 3),
                              ('d', (12, 10, 3), 4)):
        _image(src / f'{name}.png', shape=shape, seed=seed)
    (src / 'e.png').write_bytes(b'not an image')
    calls = []
    real = inference.Inferencer.super_resolve

    def counted(self, lr, out=None):
        calls.append(lr.shape[0])
        return real(self, lr, out)

    monkeypatch.setattr(inference.Inferencer, 'super_resolve', counted)
    assert _ssr(models, str(src), tmp_path / 'one', '--seed', '2', '--num_samples', '2') == 1  # e.png skipped
    assert sorted(calls) == [1, 1, 1, 1]
    calls.clear()
    assert _ssr(models, str(src), tmp_path / 'batch', '--seed', '2', '--num_samples', '2', '--batch_size', '3') == 1
    assert sorted(calls) == [1, 3]  # a, c, d in one call; b (another size) alone
    names = sorted(os.listdir(tmp_path / 'one'))
    assert names == sorted(os.listdir(tmp_path / 'batch')) and len(names) == 8
    for name in names:  # a batch may round differently in the last bit: at most one grey level
        a = cv2.imread(str(tmp_path / 'one' / name)).astype(np.int32)
        b = cv2.imread(str(tmp_path / 'batch' / name)).astype(np.int32)
        assert np.abs(a - b).max() <= 1, name


def test_first_line_names_the_device_and_quiet_silences_library_bars(models, tmp_path, capsys):
    import transformers
    src = _image(tmp_path / 'x.png')
    try:
        assert _svkr(models, src, tmp_path / 'o') == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert first.startswith('inference_ssr: device cpu') and 'float32 weights' in first
        assert not transformers.utils.logging.is_progress_bar_enabled()
    finally:
        transformers.utils.logging.enable_progress_bar()
    assert _ssr(models, src, tmp_path / 't', '--tile', '8', '--tile-overlap', '2', '--bf16') == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert 'bfloat16 weights' in first and 'tile 8' in first and 'VAE layerwise' in first


def test_switch_flags(models, tmp_path, capsys):
    src = _image(tmp_path / 'x.png', shape=(12, 10, 3))
    assert _ssr(models, src, tmp_path / 'a', '--seed', '1') == 0
    assert _ssr(models, src, tmp_path / 'b', '--seed', '1', '--attention-slicing', '--vae-tiling', 'layerwise') == 0
    a = cv2.imread(str(tmp_path / 'a' / 'x.png')).astype(np.int32)
    b = cv2.imread(str(tmp_path / 'b' / 'x.png')).astype(np.int32)
    assert np.abs(a - b).max() <= 1
    capsys.readouterr()
    for flags, named in ((['--vae-tiling', 'windows'], '--vae-tiling'), (['--offload'], '--offload'),
                         (['--fp16'], '--fp16'), (['--batch_size', '0'], '--batch_size')):
        assert _ssr(models, src, tmp_path / 'o', *flags) == 2, flags
        _one_error_line(capsys, named)
    assert _svkr(models, src, tmp_path / 'o', '--vae-tiling', 'layerwise') == 2
    _one_error_line(capsys, '--vae-tiling')
