"""The installed package (``pip install .``, not editable): console commands, shipped option files and scripts,
and the current directory as the project root outside a checkout.

The wheel is built from a copy of the sources (the checkout stays clean) and unpacked into a folder put
first on ``PYTHONPATH``: the layout ``pip install`` gives, without a venv (about 10 s). The full fresh-venv
check (``ssr-train`` / ``ssr-infer`` in a venv, from a directory outside the checkout) is described in
docs/training.md and README's install section.
"""
import configparser
import glob
import importlib
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

SOURCES = ('setup.py', 'README.md', 'LICENSE', 'options', 'scripts', 'ssr_app', 'ssr_arch', 'ssr_data', 'ssr_models',
           'ssr_pipelines', 'ssr_utils')


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """``(site, wheel)``: the unpacked wheel and the wheel file."""
    base = tmp_path_factory.mktemp('pkg')
    src = base / 'src'
    src.mkdir()
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', 'benchmarks', 'experiments')
    for name in SOURCES:
        path = osp.join(ROOT, name)
        if osp.isdir(path):
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy(path, src / name)
    proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
                           str(base / 'dist'), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheel, = glob.glob(str(base / 'dist' / '*.whl'))
    site = base / 'site'
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site, wheel


def _run(site, code, cwd):
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-c', code], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=300)


def test_wheel_ships_commands_option_files_and_scripts(installed):
    site, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    for yml in sorted(os.listdir(osp.join(ROOT, 'options'))):
        assert f'ssr_options/{yml}' in names, yml
    from ssr_app.console import TOOL_COMMANDS
    for module in TOOL_COMMANDS.values():  # the scripts, thin wrappers of the tools, travel too
        assert f'ssr_scripts/{module.rsplit(".", 1)[1]}.py' in names, module
        assert f'{module.replace(".", "/")}.py' in names, module
    info, = glob.glob(str(site / '*.dist-info'))
    entry = configparser.ConfigParser()
    entry.read(osp.join(info, 'entry_points.txt'))
    commands = dict(entry['console_scripts'])
    for command in ('ssr-train', 'ssr-test', 'ssr-infer', 'ssr-export', 'ssr-create-lmdb', 'ssr-options',
                    *TOOL_COMMANDS):
        assert command in commands, command
    for command, target in commands.items():  # every entry point resolves to a callable (here, checkout code)
        module, _, attr = target.partition(':')
        assert callable(getattr(importlib.import_module(module.strip()), attr.strip())), command


def test_installed_layout_roots_in_the_current_directory(installed, tmp_path):
    site, _ = installed
    code = (
        'import os, ssr_app, ssr_utils.install as i\n'
        'assert ssr_app.__file__.startswith(os.environ["PYTHONPATH"]), ssr_app.__file__\n'
        'assert i.checkout_root() is None\n'
        'assert i.project_root() == os.getcwd()\n'
        'print(i.find_option_file("options/train_ssr_demo.yml"))\n'
        'print(i.find_option_file("test_svkr_demo.yml"))\n'
        'print(i.scripts_dir())\n'
        'print(i.version_line())\n')
    proc = _run(site, code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    opt1, opt2, scripts, version = proc.stdout.strip().splitlines()
    assert opt1 == osp.join(str(site), 'ssr_options', 'train_ssr_demo.yml') and osp.isfile(opt1)
    assert opt2 == osp.join(str(site), 'ssr_options', 'test_svkr_demo.yml')
    assert scripts == osp.join(str(site), 'ssr_scripts')
    assert version.startswith('SSR ') and 'installed package' in version


def test_installed_commands_run_outside_the_checkout(installed, tmp_path):
    site, _ = installed
    code = (
        'import sys\n'
        'from ssr_app import console\n'
        'try:\n'
        '    console.infer(["--help"])\n'
        'except SystemExit as e:\n'
        '    assert e.code == 0\n'
        'print("CREATE", console.run_tool("ssr-create-lmdb", ["-i", "imgs", "-o", "imgs.lmdb"]))\n'
        'print("OPTIONS", console.options(["--copy", "train_svkr_demo.yml"]))\n')
    (tmp_path / 'imgs').mkdir()
    import cv2
    import numpy as np
    cv2.imwrite(str(tmp_path / 'imgs' / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    proc = _run(site, code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'usage: ' in proc.stdout and '--tile_pad' in proc.stdout
    assert 'CREATE 0' in proc.stdout and osp.isfile(tmp_path / 'imgs.lmdb' / 'meta_info.txt')
    assert 'OPTIONS 0' in proc.stdout and osp.isfile(tmp_path / 'options' / 'train_svkr_demo.yml')


def test_checkout_keeps_the_repository_root(tmp_path, monkeypatch):
    from ssr_utils import install
    monkeypatch.chdir(tmp_path)
    assert install.checkout_root() == ROOT
    assert install.project_root() == ROOT
    assert install.find_option_file('options/train_ssr_demo.yml') == osp.join(ROOT, 'options', 'train_ssr_demo.yml')
    assert install.find_option_file('train_ssr_demo.yml') == osp.join(ROOT, 'options', 'train_ssr_demo.yml')
    assert install.find_option_file('options/nope.yml') == 'options/nope.yml'  # the error names what was typed
    (tmp_path / 'mine.yml').write_text('x: 1')
    assert install.find_option_file('mine.yml') == 'mine.yml'  # a file here wins
