"""The repository-root launchers on BasicSR's stock MSRResNet: train, kill, auto-resume, DDP, test."""
import glob
import os
import os.path as osp
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import torch
import yaml

from conftest import ROOT, run_python, subprocess_env


@pytest.fixture(scope='module')
def smoke_data(tmp_path_factory):
    sys.path.insert(0, osp.join(ROOT, 'scripts'))
    from ssr_app.tools.make_smoke_lmdb import make_smoke_lmdb
    out = tmp_path_factory.mktemp('smoke')
    make_smoke_lmdb(str(out), count=8)
    return out


@pytest.fixture
def experiment(tmp_path, smoke_data):
    """Write an option file for a uniquely named run; remove what the run wrote afterwards."""
    name = f'pytest_{uuid.uuid4().hex[:8]}'

    def make(**train_overrides):
        with open(osp.join(ROOT, 'options', 'train_msrresnet_smoke.yml')) as f:
            opt = yaml.safe_load(f)
        opt['name'] = name
        for phase in ('train', 'val'):
            opt['datasets'][phase]['dataroot_gt'] = str(smoke_data / 'gt.lmdb')
            opt['datasets'][phase]['dataroot_lq'] = str(smoke_data / 'lq.lmdb')
        for key, value in train_overrides.items():
            section, _, leaf = key.partition('__')
            opt[section][leaf] = value
        path = tmp_path / f'{name}.yml'
        path.write_text(yaml.safe_dump(opt, sort_keys=False))
        return str(path)

    make.name = name
    make.root = osp.join(ROOT, 'experiments', name)
    yield make
    for folder in ('experiments', 'tb_logger', 'results'):
        shutil.rmtree(osp.join(ROOT, folder, name), ignore_errors=True)


def _load_generator(path):
    from basicsr.archs.srresnet_arch import MSRResNet
    net = MSRResNet(num_feat=8, num_block=1, upscale=4)
    net.load_state_dict(torch.load(path, map_location='cpu')['params'])
    return net


def test_train_then_test_launcher(experiment, tmp_path):
    opt_path = experiment()
    proc = run_python(['basicsr/train.py', '-opt', opt_path])
    assert proc.returncode == 0, proc.stdout[-3000:]
    models = osp.join(experiment.root, 'models')
    assert sorted(os.listdir(models)) == ['net_g_4.pth', 'net_g_8.pth', 'net_g_latest.pth']
    assert osp.isdir(osp.join(ROOT, 'tb_logger', experiment.name))
    _load_generator(osp.join(models, 'net_g_latest.pth'))
    _assert_log_starts_with_the_version(glob.glob(osp.join(experiment.root, f'train_{experiment.name}_*.log')))
    # the test launcher evaluates the trained model; results land under <root>/results/<name>
    with open(opt_path) as f:
        opt = yaml.safe_load(f)
    test_opt = {'name': experiment.name, 'model_type': 'SRModel', 'scale': 4, 'num_gpu': 0,
                'datasets': {'test_1': dict(opt['datasets']['val'], name='smoke_test')},
                'network_g': opt['network_g'],
                'path': {'pretrain_network_g': osp.join(models, 'net_g_latest.pth'), 'strict_load_g': True},
                'val': {'save_img': True, 'suffix': None, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4}}}}
    test_path = tmp_path / 'test.yml'
    test_path.write_text(yaml.safe_dump(test_opt))
    proc = run_python([osp.join(ROOT, 'basicsr', 'test.py'), '-opt', str(test_path)], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r'psnr: \d+\.\d+', proc.stdout)
    visual = osp.join(ROOT, 'results', experiment.name, 'visualization', 'smoke_test')
    assert len(os.listdir(visual)) == 8
    _assert_log_starts_with_the_version(glob.glob(osp.join(ROOT, 'results', experiment.name, 'test_*.log')))


def _assert_log_starts_with_the_version(logs):
    """The first line of the one log: the SSR version and this checkout's git commit (``+dirty`` allowed)."""
    from ssr_utils.version import __version__
    assert len(logs) == 1, logs
    first = open(logs[0]).readline()
    head = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], cwd=ROOT, capture_output=True, text=True)
    commit = head.stdout.strip() if head.returncode == 0 else 'unknown'
    assert f'INFO: SSR {__version__} (git {commit}' in first, first
    assert ROOT in first


def test_sigkill_then_auto_resume_from_another_directory(experiment, tmp_path):
    total = 80
    opt_path = experiment(train__total_iter=total)
    states = osp.join(experiment.root, 'training_states')
    proc = subprocess.Popen([sys.executable, osp.join(ROOT, 'basicsr', 'train.py'), '-opt', opt_path], cwd=ROOT,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120

    def saved_states():  # complete states only: an atomic save's temporary file appears first
        return [n for n in os.listdir(states) if n.endswith('.state')] if osp.isdir(states) else []

    while not saved_states() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(name.split('.')[0]) for name in os.listdir(states) if name.endswith('.state'))
    assert saved and saved[-1] < total, 'the run must be killed mid-way for this test to mean anything'
    killed_at = saved[-1]
    first_ckpt = osp.join(experiment.root, 'models', f'net_g_{killed_at}.pth')

    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    proc = run_python([osp.join(ROOT, 'basicsr', 'train.py'), '-opt', opt_path, '--auto_resume'], cwd=str(elsewhere))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f'Resuming training from epoch: 0, iter: {killed_at}.' in proc.stdout \
        or re.search(rf'Resuming training from epoch: \d+, iter: {killed_at}\.', proc.stdout)
    assert not osp.exists(elsewhere / 'experiments')
    assert torch.load(osp.join(states, f'{total}.state'), weights_only=False)['iter'] == total
    _load_generator(first_ckpt)
    _load_generator(osp.join(experiment.root, 'models', f'net_g_{total}.pth'))
    _load_generator(osp.join(experiment.root, 'models', 'net_g_latest.pth'))


def test_torchrun_two_cpu_processes_with_gloo(experiment):
    opt_path = experiment()
    with socket.socket() as sock:  # a free port: other torchrun jobs may share the machine
        sock.bind(('127.0.0.1', 0))
        port = str(sock.getsockname()[1])
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
                           osp.join(ROOT, 'basicsr', 'train.py'), '-opt', opt_path, '--launcher', 'pytorch'],
                          cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r'world_size: 2', proc.stdout)
    assert re.search(r'# psnr: \d+\.\d+', proc.stdout)
    _load_generator(osp.join(experiment.root, 'models', 'net_g_latest.pth'))


@pytest.mark.parametrize('edit, key, value', [
    (('network_g', 'type', 'NoSuchArch'), 'network_g:type', 'NoSuchArch'),
    (('datasets', 'train', 'dataroot_lq', '/no/such/lq.lmdb'), 'datasets:train:dataroot_lq', '/no/such/lq.lmdb'),
    (('datasets', 'val', 'type', 'NoSuchDataset'), 'datasets:val:type', 'NoSuchDataset'),
    (('model_type', 'NoSuchModel'), 'model_type', 'NoSuchModel'),
])
def test_bad_options_stop_with_one_line(experiment, edit, key, value):
    opt_path = experiment()
    with open(opt_path) as f:
        opt = yaml.safe_load(f)
    node = opt
    for part in edit[:-2]:
        node = node[part]
    node[edit[-2]] = edit[-1]
    with open(opt_path, 'w') as f:
        yaml.safe_dump(opt, f)
    proc = run_python(['basicsr/train.py', '-opt', opt_path])
    assert proc.returncode != 0
    error_lines = [line for line in proc.stdout.splitlines() if line.startswith('Option error')]
    assert len(error_lines) == 1 and 'Traceback' not in proc.stdout
    assert error_lines[0].startswith(f"Option error: {key} = '{value}':")
    assert not osp.exists(osp.join(experiment.root, 'models'))
