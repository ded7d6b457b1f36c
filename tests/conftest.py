import os
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
SHARED_DATA = osp.abspath(osp.join(ROOT, osp.pardir, 'shared', 'data'))

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ssr_utils import compat  # noqa: E402

compat.apply()


@pytest.fixture(scope='session')
def pca_path(tmp_path_factory):
    """A 10-component kernel PCA of 21×21 random kernels saved to disk (the SSR tests' ``pca_path``)."""
    from ssr_data.kernels import KernelPCA, random_kernels
    path = tmp_path_factory.mktemp('pca') / 'pca.pth'
    KernelPCA.fit(random_kernels(300, kernel_size=21, seed=0).reshape(300, -1), 10).save(str(path))
    return str(path)


@pytest.fixture
def shared_data():
    """``../shared/data`` (real images); the test is skipped where it is absent."""
    if not osp.isdir(SHARED_DATA):
        pytest.skip('../shared/data is not present')
    return SHARED_DATA


def subprocess_env(**extra):
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    env.update(extra)
    return env


def run_python(args, cwd=None, timeout=300, **popen_kwargs):
    """Run ``python <args>`` and return the CompletedProcess (stdout and stderr merged)."""
    return subprocess.run([sys.executable] + list(args), cwd=cwd or ROOT, env=subprocess_env(), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen_kwargs)
