"""Where the project lives: a source checkout or an installed package (``pip install .``).

In a checkout, experiments, results and relative data paths keep their BasicSR home, the repository root
(whatever the current directory). Installed, there is no repository: the console commands (``ssr-train``,
``ssr-test``, ``ssr-infer``...) write under the current directory, and the option files shipped with the
package (``ssr_options``) are found by their name. The package version and, in a checkout, the git commit
head every training and test log.
"""
import importlib.util
import os
import os.path as osp
import subprocess

from ssr_utils.version import __version__

_PACKAGE_PARENT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))


def checkout_root():
    """The repository root when the ``ssr_*`` packages are imported from a source checkout (the folder above
    them holds ``setup.py``, ``options/`` and ``basicsr/train.py``), else None (an installed package)."""
    marks = ('setup.py', osp.join('basicsr', 'train.py'), 'options')
    if all(osp.exists(osp.join(_PACKAGE_PARENT, m)) for m in marks):
        return _PACKAGE_PARENT
    return None


def project_root():
    """The folder ``experiments/``, ``results/`` and ``tb_logger/`` go under: the repository root in a
    checkout, the current directory for an installed package."""
    return checkout_root() or os.getcwd()


def _shipped_dir(folder, package):
    """``folder`` of the checkout, or the installed ``package`` that ``setup.py`` ships it as; None when
    neither exists."""
    root = checkout_root()
    if root is not None:
        return osp.join(root, folder)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def options_dir():
    """The folder of the shipped option files: ``options/`` of the checkout, or the installed
    ``ssr_options`` package (``setup.py`` ships ``options/*.yml`` as it). None when neither exists."""
    return _shipped_dir('options', 'ssr_options')


def scripts_dir():
    """The folder of the command-line scripts: ``scripts/`` of the checkout, or the installed ``ssr_scripts``
    package (``setup.py`` ships ``scripts/*.py`` as it, for the console commands)."""
    return _shipped_dir('scripts', 'ssr_scripts')


def find_option_file(path):
    """``path`` as given when it exists; otherwise relative to the repository root (checkout), then a shipped
    option file of that name (``options/train_ssr_demo.yml`` or ``train_ssr_demo.yml`` both find
    ``<options dir>/train_ssr_demo.yml``). Returns ``path`` unchanged when nothing is found, so that the
    caller's error names what the user typed."""
    if path is None or osp.exists(path) or osp.isabs(path):
        return path
    root = checkout_root()
    if root is not None and osp.exists(osp.join(root, path)):
        return osp.join(root, path)
    shipped = options_dir()
    if shipped is not None:
        parts = osp.normpath(path).split(os.sep)
        rel = osp.join(*parts[1:]) if parts[0] == 'options' and len(parts) > 1 else osp.join(*parts)
        if osp.isfile(osp.join(shipped, rel)):
            return osp.join(shipped, rel)
    return path


def shipped_option_files():
    """The names of the shipped option files (sorted)."""
    folder = options_dir()
    if folder is None or not osp.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.endswith(('.yml', '.yaml')))


def git_commit(root=None):
    """``<short hash>`` (``+dirty`` with uncommitted changes to tracked files) of the checkout at ``root``
    (default: this one), or None outside a git checkout or without git."""
    root = root or checkout_root()
    if root is None or not osp.exists(osp.join(root, '.git')):
        return None
    try:
        head = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ('+dirty' if dirty.returncode == 0 and dirty.stdout.strip() else '')


def version_line():
    """``SSR <version> (git <commit>, <checkout>)`` in a checkout, ``SSR <version> (installed package)``
    otherwise."""
    root = checkout_root()
    if root is None:
        return f'SSR {__version__} (installed package, {_PACKAGE_PARENT})'
    commit = git_commit(root)
    return f'SSR {__version__} (git {commit or "unknown: not a git checkout"}, {root})'
