"""BasicSR's discovery convention: import every ``*_<suffix>.py`` of a package so its classes register."""
import importlib
import os.path as osp
from os import scandir


def import_modules_with_suffix(package_name, package_file, suffix):
    """Import ``<package>.<file stem>`` for every ``*<suffix>.py`` beside ``package_file``, sorted by name."""
    folder = osp.dirname(osp.abspath(package_file))
    stems = sorted(entry.name[:-3] for entry in scandir(folder) if entry.is_file() and entry.name.endswith(f'{suffix}.py'))
    return [importlib.import_module(f'{package_name}.{stem}') for stem in stems]
