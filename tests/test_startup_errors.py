"""Start-up errors instead of silent results: each one line, naming the key, before any folder is made."""
import copy
import os.path as osp
import shutil
import sys
import uuid

import cv2
import numpy as np
import pytest
import yaml

import ssr_arch  # noqa: F401  (registers)
import ssr_models  # noqa: F401
from conftest import ROOT, run_python
from ssr_utils.errors import OptionError
from ssr_utils.option_check import check_options

sys.path.insert(0, osp.join(ROOT, 'scripts'))
import inference_ssr  # noqa: E402


def _ssr_opt(tiny_models):
    with open(tiny_models['ssr']) as f:
        return yaml.safe_load(f)


def _one_option_error(proc):
    lines = [line for line in proc.stdout.splitlines() if line.startswith('Option error')]
    assert proc.returncode != 0 and len(lines) == 1 and 'Traceback' not in proc.stdout, proc.stdout[-3000:]
    return lines[0]


def test_an_svkr_without_weights_stops_naming_the_key_and_the_command(tiny_models, tmp_path, capsys):
    from basicsr.models import build_model
    opt = _ssr_opt(tiny_models)
    opt['path'].pop('pretrain_network_svkr')
    for check in (check_options, lambda o: build_model(copy.deepcopy(dict(o, is_train=False, dist=False)))):
        with pytest.raises(OptionError) as err:
            check(copy.deepcopy(opt))
        assert err.value.key == 'path:pretrain_network_svkr'
        assert 'python basicsr/train.py -opt options/train_svkr.yml' in err.value.problem
    # the benchmark's SVKR row needs it too, even when SSR itself runs on ground-truth maps
    bench = dict(copy.deepcopy(opt), model_type='SSRBenchmarkModel', conditions=dict(source='gt'))
    with pytest.raises(OptionError, match='path:pretrain_network_svkr'):
        check_options(bench)
    # its sub-network checkpoints are trained weights as well
    opt['network_svkr'].update(pretrain_network_kernel=tiny_models['svkr_ckpt'],
                               pretrain_network_sr=tiny_models['svkr_ckpt'])
    check_options(copy.deepcopy(opt))
    # and the inference CLI says the same in one line
    path = tmp_path / 'no_svkr_weights.yml'
    opt['network_svkr'].pop('pretrain_network_kernel')
    path.write_text(yaml.safe_dump(opt))
    img = tmp_path / 'x.png'
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    assert inference_ssr.main(['-opt', str(path), '-i', str(img), '-o', str(tmp_path / 'o'), '--device', 'cpu']) == 2
    assert 'path:pretrain_network_svkr' in capsys.readouterr().out


@pytest.mark.parametrize('where', ['network_svkr', 'network_svkr:sr_opt'])
def test_a_scale_that_disagrees_names_both_keys(tiny_models, where):
    opt = _ssr_opt(tiny_models)
    opt['scale'] = 3
    if where == 'network_svkr:sr_opt':
        opt['network_svkr'].pop('scale')
        opt['network_svkr']['sr_opt']['scale'] = 4
    with pytest.raises(OptionError) as err:
        check_options(opt)
    assert err.value.key == f'{where}:scale' and err.value.value == 4
    assert 'top-level scale = 3' in err.value.problem
    # a network built directly with another factor than the pipeline's is refused as well
    from ssr_pipelines import SSRPipeline
    from ssr_pipelines.builder import load_pipeline
    svkr = load_pipeline(tiny_models['svkr'], device='cpu').svkr
    with pytest.raises(OptionError, match='×4'):
        SSRPipeline(svkr=svkr, scale=3)


def test_basicsr_models_are_checked_too(tmp_path):
    opt = dict(name='x', model_type='SRModel', scale=4, num_gpu=0,
               network_g=dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, upscale=2), path={})
    with pytest.raises(OptionError, match='network_g:upscale'):
        check_options(opt)


@pytest.fixture
def run_name():
    name = f'pytest_startup_{uuid.uuid4().hex[:8]}'
    yield name
    for folder in ('experiments', 'tb_logger', 'results'):
        shutil.rmtree(osp.join(ROOT, folder, name), ignore_errors=True)


def test_launchers_report_a_missing_or_broken_option_file_in_one_line(tmp_path):
    proc = run_python(['basicsr/train.py', '-opt', str(tmp_path / 'nowhere.yml')])
    line = _one_option_error(proc)
    assert line.startswith('Option error: -opt = ') and 'nowhere.yml' in line and 'does not exist' in line
    broken = tmp_path / 'broken.yml'
    broken.write_text('name: x\nmodel_type: SRModel\ndatasets:\n  test_1: {name: a\n  b: 1\n')
    line = _one_option_error(run_python(['basicsr/test.py', '-opt', str(broken)]))
    assert 'broken.yml' in line and 'not valid YAML (line' in line


def test_an_incomplete_pretrained_folder_is_named_before_any_folder_is_made(tmp_path, run_name):
    from test_ssr_model import _opt
    from diffusers import AutoencoderKL
    from ssr_arch.ssr_unet_arch import tiny_config
    base = tmp_path / 'sd_incomplete'
    AutoencoderKL(**tiny_config()['vae']).save_pretrained(str(base / 'vae'))
    (base / 'unet').mkdir()  # the folder is there, its config.json is not
    opt = _opt(tmp_path, str(tmp_path / 'pca.pth'), pretrained=str(base))
    from basicsr.utils.registry import MODEL_REGISTRY
    with pytest.raises(OptionError, match='unet/config.json'):  # the model's own check, in process
        MODEL_REGISTRY.get('SSRModel').check_options(opt)
    with open(osp.join(ROOT, 'options', 'train_ssr_demo.yml')) as f:
        launch = yaml.safe_load(f)
    launch['name'] = run_name
    net = launch['network_g']  # the demo's SSR stage on a frozen prior folder, here an incomplete one
    net.update(pretrained_path=str(base), pca_path=None)
    launch['datasets']['train']['dataroot_gt'] = str(tmp_path)
    launch['datasets']['train'].pop('dataroot_depth')
    launch['datasets']['val']['dataroot'] = str(tmp_path)
    path = tmp_path / 'incomplete.yml'
    path.write_text(yaml.safe_dump(launch))
    line = _one_option_error(run_python(['basicsr/train.py', '-opt', str(path)]))
    assert line.startswith('Option error: network_g:pretrained_path = ') and 'unet/config.json' in line
    assert not osp.exists(osp.join(ROOT, 'experiments', run_name))
    assert not osp.exists(osp.join(ROOT, 'tb_logger', run_name))


def test_a_bad_option_raised_in_a_library_call_is_a_value_error():
    """A notebook or a user's script catches a bad option with ``except ValueError``; it still names the key and
    the value, survives pickling (DataLoader workers, spawned ranks), and a command turns it into its line."""
    import pickle
    from ssr_arch.depth_arch import MonocularDepth
    from ssr_utils.errors import exit_on_option_error
    caught = None
    try:
        MonocularDepth(backend='no_such_backend')
    except ValueError as err:
        caught = err
    assert isinstance(caught, OptionError) and (caught.key, caught.value) == ('backend', 'no_such_backend')
    assert str(caught).startswith("Option error: backend = 'no_such_backend': expected one of ")
    copy_ = pickle.loads(pickle.dumps(caught))
    assert (type(copy_), copy_.key, copy_.value, copy_.problem, str(copy_)) == \
        (OptionError, caught.key, caught.value, caught.problem, str(caught))
    with pytest.raises(SystemExit) as stop:
        with exit_on_option_error():
            raise caught
    assert stop.value.code == str(caught)


def test_console_commands_and_scripts_stop_with_the_option_errors_one_line(tmp_path, capsys):
    from ssr_app import console
    (tmp_path / 'hr').mkdir()
    cv2.imwrite(str(tmp_path / 'hr' / 'a.png'), np.zeros((16, 16, 3), np.uint8))
    args = ['--input', str(tmp_path / 'hr'), '--output', str(tmp_path / 'set'), '--pattern', 'spiral']
    assert console.run_script('ssr-make-sv-testset', args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["Option error: --pattern = 'spiral': expected one of linear, rotate, block, depth, mixed"]
    line = _one_option_error(run_python(['scripts/make_sv_testset.py'] + args))
    assert line == err[0] and not osp.exists(tmp_path / 'set')
