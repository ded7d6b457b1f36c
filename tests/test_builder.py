"""ssr_pipelines.builder: the one place an option file or an experiment folder becomes an SSRPipeline, for the
CLI, the export, training validation and the test tables alike."""
import copy
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, subprocess_env
from ssr_pipelines import builder
from ssr_utils.errors import OptionError


def _ssr_opt(tiny_models):
    with open(tiny_models['ssr']) as f:
        return yaml.safe_load(f)


def test_training_validation_samples_with_the_pipeline_the_cli_loads(tiny_models):
    """``SSRModel`` (validation, the test tables) assembles its pipeline around its own networks as the builder
    does for the CLI and the export: the same schedule, defaults and images."""
    import ssr_models  # noqa: F401  (registers)
    from basicsr.models import build_model
    opt = dict(_ssr_opt(tiny_models), is_train=False, dist=False, rank=0, world_size=1)
    opt['datasets'] = {}
    model = build_model(copy.deepcopy(opt))
    cli = builder.load_pipeline(tiny_models['ssr'], device='cpu')
    assert dict(model.pipeline.scheduler.config) == dict(cli.scheduler.config)
    assert model.pipeline.config == cli.config and model.pipeline.scale == cli.scale == 4
    lr = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.pipeline(lr, seed=2).images, cli(lr, seed=2).images)


def test_a_bad_option_in_the_builder_is_caught_as_a_value_error(tiny_models, tmp_path):
    opt = _ssr_opt(tiny_models)
    opt['diffusion']['sampler'] = 'euler'
    path = tmp_path / 'bad_sampler.yml'
    path.write_text(yaml.safe_dump(opt))
    try:
        builder.load_pipeline(str(path))
        caught = None
    except ValueError as err:  # as a notebook would write it
        caught = err
    assert isinstance(caught, OptionError) and (caught.key, caught.value) == ('diffusion:sampler', 'euler')


@pytest.mark.parametrize('edit, key', [
    (lambda o: o['diffusion'].update(amp='bf16'), 'diffusion:amp'),  # an old key names its replacement
    (lambda o: o['network_g'].update(type='NoSuchNet'), 'network_g:type'),
    (lambda o: o['path'].update(pretrain_network_g='/no/such/ssr.pth'), 'path:pretrain_network_g'),
    (lambda o: o['path'].pop('pretrain_network_svkr'), 'path:pretrain_network_svkr'),
    (lambda o: o['network_g'].update(pretrained_path='/no/such/sd'), 'network_g:pretrained_path'),
])
def test_the_builder_checks_what_its_networks_need(tiny_models, edit, key):
    opt = _ssr_opt(tiny_models)
    edit(opt)
    with pytest.raises(OptionError) as err:
        builder.pipeline_from_options(builder.prepare_options(opt))
    assert err.value.key == key


def test_an_experiment_folder_gives_its_option_file_and_latest_ema_weights(tiny_models, tmp_path):
    exp = tmp_path / 'train_ssr_t'
    (exp / 'models').mkdir(parents=True)
    with pytest.raises(OptionError, match='option file'):
        builder.load_options(str(exp))
    opt = _ssr_opt(tiny_models)
    opt['path']['resume_state'] = 'training_states/4.state'
    (exp / 'train_ssr_t.yml').write_text(yaml.safe_dump(opt))
    with pytest.raises(OptionError, match='net_g_latest.pth'):
        builder.load_options(str(exp))
    (exp / 'models' / 'net_g_latest.pth').write_bytes(open(tiny_models['ssr_ckpt'], 'rb').read())
    loaded = builder.load_options(str(exp))
    assert loaded['path']['pretrain_network_g'] == str(exp / 'models' / 'net_g_latest.pth')
    assert loaded['path']['param_key_g'] == 'params_ema' and 'resume_state' not in loaded['path']
    with pytest.raises(OptionError) as err:
        builder.load_options(str(tmp_path / 'nope.yml'), key='-i')
    assert err.value.key == '-i' and 'does not exist' in err.value.problem


def test_loading_a_pipeline_from_an_option_file_imports_no_training_machinery(tiny_models):
    code = ('import sys\nfrom ssr_pipelines import load_pipeline\n'
            f'pipe = load_pipeline({tiny_models["ssr"]!r}, device="cpu")\n'
            "print(type(pipe).__name__, sorted(m for m in ('basicsr.train', 'basicsr.models', 'ssr_models') "
            'if m in sys.modules))\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ['SSRPipeline', '[]']
