"""BasicSR's discovery convention: import every ``*_<suffix>.py`` of a package so its classes register.

The SSR packages scan their own ``*_arch.py`` / ``*_dataset.py`` / ``*_model.py`` in their ``__init__``; the losses
and metrics, which live in ``ssr_utils``, are ``ssr_utils/*_loss.py`` and ``ssr_utils/*_metrics.py``, imported by
:func:`import_losses_and_metrics` where the registries are read (the training models, option checking, the
metric suite), as BasicSR's ``basicsr/losses`` package scans its ``*_loss.py``."""
import importlib
import os.path as osp
from os import scandir


def import_modules_with_suffix(package_name, package_file, suffix):
    """Import ``<package>.<file stem>`` for every ``*<suffix>.py`` beside ``package_file``, sorted by name."""
    folder = osp.dirname(osp.abspath(package_file))
    stems = sorted(entry.name[:-3] for entry in scandir(folder) if entry.is_file() and entry.name.endswith(f'{suffix}.py'))
    return [importlib.import_module(f'{package_name}.{stem}') for stem in stems]


def import_losses_and_metrics():
    """Import every ``ssr_utils/*_loss.py`` and ``ssr_utils/*_metrics.py``: their losses and metrics register in
    BasicSR's LOSS_REGISTRY / METRIC_REGISTRY (a module is imported once, so calling this again costs nothing)."""
    import ssr_utils
    return (import_modules_with_suffix('ssr_utils', ssr_utils.__file__, '_loss')
            + import_modules_with_suffix('ssr_utils', ssr_utils.__file__, '_metrics'))
