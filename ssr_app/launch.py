"""Entry points behind ``basicsr/train.py`` and ``basicsr/test.py`` at the repository root.

They register every SSR component, check the option file before anything heavy starts (and before
BasicSR makes any experiment or results folder), and hand over to BasicSR's own ``train_pipeline`` /
``test_pipeline``. Every problem found there stops with one line naming the file or the option key.
"""
import argparse
import os.path as osp
import sys

import yaml

from ssr_utils import compat

compat.apply()

import basicsr.test as bsr_test  # noqa: E402
import basicsr.train as bsr_train  # noqa: E402
from basicsr.utils.options import ordered_yaml, parse_options  # noqa: E402

import ssr_arch  # noqa: E402,F401
import ssr_data  # noqa: E402,F401
import ssr_models  # noqa: E402,F401
from ssr_utils.errors import OptionError  # noqa: E402
from ssr_utils.option_check import check_options  # noqa: E402

# top-level keys BasicSR's pipelines read without a default
REQUIRED_KEYS = ('name', 'model_type', 'num_gpu', 'datasets', 'path')


def read_option_file(path):
    """The option file at ``path`` as BasicSR will read it, or an ``OptionError`` naming the file and what is
    wrong with it: missing, not YAML (with the line and column), not a mapping, a key BasicSR needs absent."""
    if not osp.isfile(path):
        raise OptionError('-opt', path, 'option file does not exist')
    with open(path, 'r') as f:
        try:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
        except yaml.YAMLError as err:
            mark = getattr(err, 'problem_mark', None)
            where = f'line {mark.line + 1}, column {mark.column + 1}: ' if mark is not None else ''
            problem = getattr(err, 'problem', None) or str(err).splitlines()[0]
            raise OptionError('-opt', path, f'not valid YAML ({where}{problem})') from None
    if not isinstance(opt, dict):
        raise OptionError('-opt', path, 'not an option file (the top level of the YAML is not a mapping)')
    for key in REQUIRED_KEYS:
        if key not in opt:
            raise OptionError(key, None, f'missing in {path} (BasicSR needs it)')
    return opt


def _option_file_argument(argv):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', type=str)
    args, _ = parser.parse_known_args(argv)
    return args.opt


def checked_parse_options(root_path, is_train=True):
    path = _option_file_argument(sys.argv[1:])
    if path is not None:  # without -opt, BasicSR's own parser says that it is required
        read_option_file(path)
    opt, args = parse_options(root_path, is_train=is_train)
    check_options(opt, root_path)
    return opt, args


def train(root_path):
    bsr_train.parse_options = checked_parse_options
    bsr_train.train_pipeline(osp.abspath(root_path))
    compat.end_distributed()


def test(root_path):
    bsr_test.parse_options = checked_parse_options
    bsr_test.test_pipeline(osp.abspath(root_path))
    compat.end_distributed()
