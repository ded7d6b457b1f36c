"""The set-up command (scripts/setup_env.sh) and its lock file (constraints.txt): every requirement of setup.py is
pinned to a version its range allows, and the script installs from the lock, into a venv or the active environment,
with the torch wheel index asked for (``--dry-run`` prints the commands; nothing is installed here)."""
import ast
import os
import os.path as osp
import re
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

SCRIPT = osp.join(ROOT, 'scripts', 'setup_env.sh')


def _setup_py_requirements():
    """install_requires plus the extras the set-up installs (depth, test), read from setup.py without running it."""
    tree = ast.parse(open(osp.join(ROOT, 'setup.py')).read())
    values = {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name) and t.id in ('INSTALL_REQUIRES', 'EXTRAS_REQUIRE')}
    return [Requirement(r) for r in values['INSTALL_REQUIRES'] + values['EXTRAS_REQUIRE']['depth'] +
            values['EXTRAS_REQUIRE']['test']]


def _pins():
    pins = {}
    for line in open(osp.join(ROOT, 'constraints.txt')):
        line = line.split('#')[0].strip()
        if line:
            m = re.fullmatch(r'([A-Za-z0-9_.\-]+)==([^\s;]+)', line)
            assert m, f'constraints.txt: {line!r} is not a name==version pin'
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_the_lock_pins_every_requirement_within_its_range():
    pins = _pins()
    for req in _setup_py_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f'constraints.txt does not pin {req.name}'
        assert req.specifier.contains(pins[name], prereleases=True), f'{req.name}=={pins[name]} is outside {req}'
    assert 'ssr-basicsr' not in pins  # the project itself is installed from the checkout


def _dry_run(*args, active_env=None):
    env = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'CONDA_PREFIX', 'TORCH_INDEX_URL')}
    if active_env:
        env['VIRTUAL_ENV'] = active_env
    proc = subprocess.run(['bash', SCRIPT, '--dry-run', *args], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_set_up_installs_the_locked_torch_pair_from_the_index_asked_for(tmp_path):
    pins = _pins()
    venv = str(tmp_path / 'venv')
    out = _dry_run('--venv', venv)
    assert f'+ python3 -m venv {venv}' in out
    torch_line = next(line for line in out.splitlines() if 'torch==' in line)
    assert torch_line.startswith(f'+ {venv}/bin/python -m pip install -c {ROOT}/constraints.txt')
    assert f'torch=={pins["torch"]}' in torch_line and f'torchvision=={pins["torchvision"]}' in torch_line
    assert '--index-url' not in torch_line  # PyPI's wheel by default
    assert f'--no-build-isolation -e {ROOT}[depth,test]' in out
    assert '--index-url https://download.pytorch.org/whl/cpu ' in _dry_run('--cpu', '--venv', venv)
    assert '--index-url https://download.pytorch.org/whl/cu126 ' in _dry_run('--cuda', 'cu126', '--venv', venv)
    assert '--index-url https://download.pytorch.org/whl/cu128 ' in _dry_run('--cuda', '--venv', venv)
    latest = _dry_run('--latest', '--venv', venv)
    assert '-c ' not in latest and 'install torch torchvision' in latest


def test_the_set_up_uses_an_active_environment_and_refuses_unknown_arguments(tmp_path):
    out = _dry_run('--venv', str(tmp_path / 'unused'), active_env=str(tmp_path / 'mine'))
    assert f'the active environment ({tmp_path / "mine"})' in out
    assert '-m venv' not in out and '+ python -m pip install' in out
    proc = subprocess.run(['bash', SCRIPT, '--frobnicate'], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument '--frobnicate'" in proc.stderr


@pytest.mark.parametrize('flag', ['--venv'])
def test_a_flag_without_its_value_is_refused(flag):
    proc = subprocess.run(['bash', SCRIPT, flag], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'needs a folder' in proc.stderr


def test_environment_report_names_the_installed_versions():
    from importlib import metadata
    from ssr_utils.environment import describe, package_versions
    versions = package_versions()
    assert versions['torch'] == metadata.version('torch') and versions['diffusers'] == metadata.version('diffusers')
    assert package_versions(('no-such-package-ssr', ))['no-such-package-ssr'] is None
    assert f'torch {versions["torch"]}' in describe()
