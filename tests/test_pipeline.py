"""SSRPipeline: model folders (save / load, a fresh process), input kinds, the export script and
``--model_path`` against the option-file way (tiny random models, CPU)."""
import json
import os
import os.path as osp
import shutil
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, run_python
from ssr_pipelines import SSRPipeline
from ssr_pipelines.builder import load_pipeline
from ssr_utils.errors import OptionError

sys.path.insert(0, osp.join(ROOT, 'scripts'))
import export_model  # noqa: E402
import inference_ssr  # noqa: E402


@pytest.fixture(scope='module')
def folder(tiny_models, tmp_path_factory):
    """The tiny SSR option file exported to a model folder."""
    out = str(tmp_path_factory.mktemp('model') / 'ssr_tiny')
    assert export_model.main(['-i', tiny_models['ssr'], '-o', out]) == 0
    return out


def _files(folder):
    return sorted(osp.relpath(osp.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_folder_layout_and_config_round_trip(tiny_models, folder, tmp_path):
    assert _files(folder) == ['kernel_pca.pth', 'model_index.json', 'scheduler/scheduler_config.json',
                              'ssr_unet/config.json', 'ssr_unet/diffusion_pytorch_model.safetensors',
                              'svkr/config.json', 'svkr/model.safetensors']
    with open(osp.join(folder, 'model_index.json')) as f:
        index = json.load(f)
    assert index['_class_name'] == 'SSRPipeline' and set(index['components']) == {'ssr_unet', 'scheduler', 'svkr'}
    pipe = SSRPipeline.from_pretrained(folder)
    # the defaults of the option file's diffusion block
    assert pipe.config == dict(scale=4, sampler='ddim', num_inference_steps=2, strength=1.0, seed=0,
                               color_fix='wavelet', solver_order=2, vae_residual=False)
    # the folder's kernel PCA file is the basis the conditions are coded with
    from ssr_data.kernels import KernelPCA
    pca = KernelPCA.load(osp.join(folder, 'kernel_pca.pth'))
    assert torch.equal(pca.components, pipe.unet.pca.components)
    assert torch.equal(pca.components, KernelPCA.load(tiny_models['pca']).components)
    # saved again, every file is the same: the configs round-trip and the weights are the same tensors
    again = str(tmp_path / 'again')
    pipe.save_pretrained(again)
    assert _files(again) == _files(folder)
    for rel in _files(folder):
        with open(osp.join(folder, rel), 'rb') as a, open(osp.join(again, rel), 'rb') as b:
            if rel.endswith('.pth'):
                continue  # torch.save pickles carry no stable bytes; compared above
            assert a.read() == b.read(), rel


@torch.no_grad()
def test_loaded_folder_equals_the_networks_it_was_saved_from(tiny_models, folder):
    built = load_pipeline(tiny_models['ssr'], device='cpu')
    loaded = SSRPipeline.from_pretrained(folder)
    lr = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    a = built(lr, seed=5, return_maps=True)
    b = loaded(lr, seed=5, return_maps=True)
    assert torch.equal(a.images, b.images) and torch.equal(a.depth, b.depth)
    assert torch.equal(a.kernel_variance, b.kernel_variance)
    # DPM-Solver++ takes its own defaults for the keys the training schedule left at DDPM's (timestep spacing):
    # the same after the schedule went through the folder
    assert torch.equal(built(lr, seed=5, sampler='dpmsolver++', num_inference_steps=3).images,
                       loaded(lr, seed=5, sampler='dpmsolver++', num_inference_steps=3).images)
    assert not torch.equal(a.images, loaded(lr, seed=6).images)  # the seed matters
    assert torch.equal(built.svkr_only(lr).images, loaded.svkr_only(lr).images)


def test_a_fresh_process_reproduces_the_saved_model_bit_for_bit(folder, tmp_path):
    lr = torch.rand(1, 3, 10, 14, generator=torch.Generator().manual_seed(1))
    torch.save(lr, tmp_path / 'lr.pt')
    expected = SSRPipeline.from_pretrained(folder)(lr, num_inference_steps=3, seed=11, strength=0.7).images
    # CPU reductions are bit-exact only at the same thread count: the child runs with the parent's
    threads = torch.get_num_threads()
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads({threads})
        from ssr_pipelines import SSRPipeline
        pipe = SSRPipeline.from_pretrained({folder!r})
        lr = torch.load({str(tmp_path / 'lr.pt')!r})
        out = pipe(lr, num_inference_steps=3, seed=11, strength=0.7).images
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """)
    proc = run_python(['-c', script], timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:]
    got = torch.load(tmp_path / 'out.pt')
    assert got.dtype == torch.float32 and torch.equal(got, expected)


@torch.no_grad()
def test_input_kinds(folder):
    pipe = SSRPipeline.from_pretrained(folder)
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    out = pipe(rgb, seed=1).images
    assert isinstance(out, np.ndarray) and out.shape == (36, 44, 3) and out.dtype == np.uint8
    ref = pipe(torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1), seed=1).images
    assert ref.shape == (3, 36, 44)  # a C×H×W tensor gives C×H×W
    assert np.array_equal(out, np.clip(np.round(ref.permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8))
    from PIL import Image
    pil = pipe(Image.fromarray(rgb), seed=1).images
    assert isinstance(pil, Image.Image) and pil.size == (44, 36) and np.array_equal(np.asarray(pil), out)
    with pytest.raises(ValueError, match='RGB'):
        pipe(torch.rand(1, 4, 8, 8))


def test_incomplete_or_missing_folders_are_named(folder, tmp_path):
    broken = str(tmp_path / 'broken')
    shutil.copytree(folder, broken)
    os.remove(osp.join(broken, 'svkr', 'model.safetensors'))
    with pytest.raises(FileNotFoundError, match='svkr/model.safetensors'):
        SSRPipeline.from_pretrained(broken)
    os.remove(osp.join(broken, 'model_index.json'))
    with pytest.raises(FileNotFoundError, match='model_index.json'):
        SSRPipeline.from_pretrained(broken)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        SSRPipeline.from_pretrained(str(tmp_path / 'nowhere'))


@pytest.mark.parametrize('part', ['svkr', 'ssr_unet'])
def test_a_moved_folder_names_the_file_that_references_a_missing_part(folder, tmp_path, part):
    # frozen parts (the depth network, the SD base) are referenced by absolute path; on another machine
    # the error must say which file of the model folder holds that path
    moved = str(tmp_path / 'moved')
    shutil.copytree(folder, moved)
    config_file = osp.join(moved, part, 'config.json')
    with open(config_file) as f:
        config = json.load(f)
    gone = str(tmp_path / 'on_the_old_machine')
    if part == 'svkr':
        config['depth_opt'] = dict(config.get('depth_opt') or {}, type='MonocularDepth', backend='dpt', model_path=gone)
        key = 'depth_opt:model_path'
    else:
        config['pretrained_path'] = gone
        key = 'pretrained_path'
    with open(config_file, 'w') as f:
        json.dump(config, f)
    with pytest.raises(OptionError) as err:
        SSRPipeline.from_pretrained(moved)
    message = str(err.value)
    assert f'{config_file}: {key}' in message and gone in message and 'copy it along' in message


def _experiment(tmp_path, name, opt_file, ckpt):
    """An experiment folder as BasicSR leaves it: its option file and models/net_g_latest.pth."""
    exp = tmp_path / 'experiments' / name
    (exp / 'models').mkdir(parents=True)
    with open(opt_file) as f:
        opt = yaml.safe_load(f)
    for key in ('pretrain_network_g', 'pretrain_network_svkr', 'param_key_svkr'):
        opt['path'].pop(key, None)
    opt.pop('network_svkr', None)
    if opt['network_g']['type'] == 'SSRUNet':
        opt['conditions'] = dict(source='gt')  # an SSR stage trained on ground-truth maps has no SVKR
    (exp / f'train_{name}.yml').write_text(yaml.safe_dump(opt))
    shutil.copy(ckpt, exp / 'models' / 'net_g_latest.pth')
    return str(exp)


def test_export_then_model_path_gives_the_option_file_image(tiny_models, tmp_path, capsys):
    ssr_exp = _experiment(tmp_path, 'ssr_t', tiny_models['ssr'], tiny_models['ssr_ckpt'])
    svkr_exp = _experiment(tmp_path, 'svkr_t', tiny_models['svkr'], tiny_models['svkr_ckpt'])
    model = str(tmp_path / 'models' / 'ssr_t')
    # without an SVKR the model cannot run blind: the export says how to add one, and the CLI refuses it
    lonely = str(tmp_path / 'models' / 'lonely')
    assert export_model.main(['-i', ssr_exp, '-o', lonely]) == 0
    assert export_model.main(['-i', ssr_exp, '--svkr', svkr_exp, '-o', model]) == 0
    assert 'Exported' in capsys.readouterr().out
    assert export_model.main(['-i', ssr_exp, '--svkr', svkr_exp, '-o', model]) == 2  # never overwritten silently
    assert 'exists' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / 'models')) == ['lonely', 'ssr_t']  # no temporary folder left beside
    img = str(tmp_path / 'photo.png')
    cv2.imwrite(img, np.random.default_rng(2).integers(0, 256, (13, 10, 3), dtype=np.uint8))
    flags = ['-i', img, '--device', 'cpu', '-q', '--steps', '2', '--seed', '4', '--save-maps']
    assert inference_ssr.main(['--model_path', model, '-o', str(tmp_path / 'a')] + flags) == 0
    assert inference_ssr.main(['-opt', tiny_models['ssr'], '-o', str(tmp_path / 'b')] + flags) == 0
    for name in ('photo.png', 'photo_depth.png', 'photo_kernel_var.png'):
        a = cv2.imread(str(tmp_path / 'a' / name), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / 'b' / name), cv2.IMREAD_UNCHANGED)
        assert a is not None and np.array_equal(a, b), name
    assert cv2.imread(str(tmp_path / 'a' / 'photo.png')).shape == (52, 40, 3)
    # the SVKR-only path too, and tiled
    tiled = ['--svkr-only', '--tile', '8', '--tile-overlap', '2']
    assert inference_ssr.main(['--model_path', model, '-o', str(tmp_path / 'c')] + flags + tiled) == 0
    assert inference_ssr.main(['-opt', tiny_models['svkr'], '-o', str(tmp_path / 'd')] + flags + tiled) == 0
    assert np.array_equal(cv2.imread(str(tmp_path / 'c' / 'photo.png')), cv2.imread(str(tmp_path / 'd' / 'photo.png')))
    capsys.readouterr()
    assert inference_ssr.main(['--model_path', lonely, '-o', str(tmp_path / 'e')] + flags) == 2
    assert 'network_svkr' in capsys.readouterr().out


def test_svkr_only_folder(tiny_models, tmp_path):
    out = str(tmp_path / 'svkr_model')
    assert export_model.main(['-i', tiny_models['svkr'], '-o', out]) == 0
    assert 'ssr_unet' not in os.listdir(out)
    pipe = SSRPipeline.from_pretrained(out)
    lr = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(pipe.svkr_only(lr).images, pipe.svkr(lr)['sr'].clamp(0, 1))
    with pytest.raises(RuntimeError, match='svkr_only'):
        pipe(lr)


def test_export_script_runs_as_a_command(tiny_models, tmp_path, capsys):
    proc = run_python(['scripts/export_model.py', '-i', tiny_models['ssr'], '-o', str(tmp_path / 'm')])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'scripts/inference_ssr.py --model_path' in proc.stdout
    assert export_model.main(['-i', str(tmp_path / 'nope.yml'), '-o', str(tmp_path / 'x')]) == 2
    out = capsys.readouterr().out
    assert 'nope.yml' in out and len(out.strip().splitlines()) == 1 and not osp.exists(tmp_path / 'x')
