"""The one reader of BasicSR option files (YAML), for the launchers, the pipeline builder
(``ssr_pipelines.builder``) and the distributed start (``compat``): what BasicSR's ``parse_options`` will
read, or an ``OptionError`` naming the file and what is wrong with it."""
import argparse
import os.path as osp

from ssr_utils.errors import OptionError


def option_file_argument(argv):
    """The ``-opt`` value of a command line ``argv`` (None without one); the rest is left alone."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', type=str)
    args, _ = parser.parse_known_args(argv)
    return args.opt


def read_option_file(path, key='-opt', required=()):
    """The option file at ``path`` as BasicSR reads it (ordered mappings), or an ``OptionError`` naming ``key``
    (the flag that gave the path) and the file: missing, not YAML (with the line and column), not a mapping,
    or one of the ``required`` top-level keys absent."""
    import yaml
    from ssr_utils import compat
    compat.apply()  # BasicSR's YAML loader is imported with it
    from basicsr.utils.options import ordered_yaml
    if not osp.isfile(path):
        raise OptionError(key, path, 'option file does not exist')
    with open(path, 'r') as f:
        try:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
        except yaml.YAMLError as err:
            mark = getattr(err, 'problem_mark', None)
            where = f'line {mark.line + 1}, column {mark.column + 1}: ' if mark is not None else ''
            problem = getattr(err, 'problem', None) or str(err).splitlines()[0]
            raise OptionError(key, path, f'not valid YAML ({where}{problem})') from None
    if not isinstance(opt, dict):
        raise OptionError(key, path, 'not an option file (the top level of the YAML is not a mapping)')
    for name in required:
        if name not in opt:
            raise OptionError(name, None, f'missing in {path} (BasicSR needs it)')
    return opt
