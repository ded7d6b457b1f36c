"""Checkpoints are written atomically: a crash or SIGKILL mid-save leaves the previous file loadable."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import subprocess_env
from ssr_utils.atomic_file import atomic_torch_save


class _ExplodingPickle:

    def __reduce__(self):
        raise RuntimeError('simulated crash while pickling')


def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / 'net_g_latest.pth'
    atomic_torch_save({'w': torch.arange(5)}, str(path))
    with pytest.raises(RuntimeError, match='simulated crash'):
        atomic_torch_save({'w': torch.zeros(1000), 'bad': _ExplodingPickle()}, str(path))
    assert torch.equal(torch.load(path)['w'], torch.arange(5))
    assert sorted(os.listdir(tmp_path)) == ['net_g_latest.pth']


def test_sigkill_during_repeated_saves_never_corrupts(tmp_path):
    path = tmp_path / 'ckpt.pth'
    writer = textwrap.dedent(f"""
        import torch
        from ssr_utils.atomic_file import atomic_torch_save
        i = 0
        while True:
            i += 1
            atomic_torch_save({{'i': i, 'w': torch.full((1_000_000,), float(i))}}, {str(path)!r})
            print(i, flush=True)
    """)
    for delay in (0.9, 1.3, 1.7):
        proc = subprocess.Popen([sys.executable, '-c', writer], env=subprocess_env(), stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # at least one complete save
        assert first.strip().isdigit()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = torch.load(path)
        assert torch.all(state['w'] == float(state['i']))
    # the next successful save clears what the killed writers left behind
    atomic_torch_save({'i': 0}, str(path))
    assert os.listdir(tmp_path) == ['ckpt.pth']


def test_basicsr_model_saves_through_the_atomic_writer(tmp_path, monkeypatch):
    from basicsr.models.base_model import BaseModel
    calls = []
    monkeypatch.setattr('ssr_utils.compat.atomic_torch_save', lambda obj, p: calls.append(p))
    model = BaseModel.__new__(BaseModel)
    model.opt = {'dist': False, 'num_gpu': 0,
                 'path': {'models': str(tmp_path / 'models'), 'training_states': str(tmp_path / 'states')}}
    net = torch.nn.Linear(2, 2)
    model.optimizers = [torch.optim.Adam(net.parameters())]
    model.schedulers = []
    model.save_network(net, 'net_g', 7)
    model.save_training_state(0, 7)
    assert calls == [str(tmp_path / 'models' / 'net_g_7.pth'), str(tmp_path / 'states' / '7.state')]


def test_checkpoint_gets_the_permissions_of_a_plain_file(tmp_path):
    plain = tmp_path / 'plain.bin'
    plain.write_bytes(b'x')
    path = tmp_path / 'net_g_1.pth'
    atomic_torch_save({'w': torch.ones(1)}, str(path))
    # the temporary file behind the rename is created 0600; the checkpoint must not keep that
    assert (path.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)
