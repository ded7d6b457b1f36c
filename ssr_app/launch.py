"""Entry points behind ``basicsr/train.py`` and ``basicsr/test.py`` at the repository root.

They register every SSR component, check the option file before anything heavy starts (and before
BasicSR makes any experiment or results folder), and hand over to BasicSR's own ``train_pipeline`` /
``test_pipeline``. Every problem found there stops with one line naming the file or the option key (an
``OptionError`` anywhere in the run, turned into that line here).
The first line of every training and test log is the SSR version and, in a checkout, the git commit
(``ssr_utils.install.version_line``); TensorBoard gets the learning rates beside the losses. An ``-opt`` path that does not exist as typed is looked up in the
repository root and among the shipped option files (``ssr_utils.install.find_option_file``), so the
console commands ``ssr-train -opt options/train_ssr_demo.yml`` work from any directory.
"""
import os.path as osp
import sys

from ssr_utils import compat

compat.apply_training()

import basicsr.test as bsr_test  # noqa: E402
import basicsr.train as bsr_train  # noqa: E402
from basicsr.utils import MessageLogger  # noqa: E402
from basicsr.utils.options import parse_options  # noqa: E402

import ssr_arch  # noqa: E402,F401
import ssr_data  # noqa: E402,F401
import ssr_models  # noqa: E402,F401
from ssr_utils.errors import exit_on_option_error  # noqa: E402
from ssr_utils.install import find_option_file, version_line  # noqa: E402
from ssr_utils.option_check import check_options  # noqa: E402
from ssr_utils.option_file import option_file_argument, read_option_file  # noqa: E402

# top-level keys BasicSR's pipelines read without a default
REQUIRED_KEYS = ('name', 'model_type', 'num_gpu', 'datasets', 'path')


def _resolve_option_argument(argv):
    """``argv`` with its ``-opt`` value found (``find_option_file``): BasicSR's parser reads ``sys.argv``."""
    argv = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == '-opt':
            argv[i + 1] = find_option_file(argv[i + 1])
        elif arg.startswith('-opt='):
            argv[i] = '-opt=' + find_option_file(arg[len('-opt='):])
    if argv and argv[-1].startswith('-opt='):
        argv[-1] = '-opt=' + find_option_file(argv[-1][len('-opt='):])
    return argv


def env_info_with_version(env_info):
    """BasicSR's ``get_env_info`` (logged first by its pipelines) headed by the SSR version and git commit."""

    def info():
        return f'{version_line()}\n{env_info()}'

    return info


def checked_parse_options(root_path, is_train=True):
    sys.argv[1:] = _resolve_option_argument(sys.argv[1:])
    path = option_file_argument(sys.argv[1:])
    if path is not None:  # without -opt, BasicSR's own parser says that it is required
        read_option_file(path, required=REQUIRED_KEYS)
    opt, args = parse_options(root_path, is_train=is_train)
    check_options(opt, root_path)
    return opt, args


class LearningRateMessageLogger(MessageLogger):
    """BasicSR's training message logger that also writes the learning rates to TensorBoard
    (``train/learning_rate``; ``train/learning_rate_<i>`` for the i-th further optimizer) at every printed
    iteration; BasicSR's own logger prints them only."""

    def __call__(self, log_vars):
        if self.tb_logger is not None and self.use_tb_logger and 'debug' not in self.exp_name:
            for i, lr in enumerate(log_vars.get('lrs') or []):
                tag = 'train/learning_rate' if i == 0 else f'train/learning_rate_{i}'
                self.tb_logger.add_scalar(tag, float(lr), log_vars['iter'])
        super().__call__(log_vars)


_BASICSR_ENV_INFO = bsr_train.get_env_info


@exit_on_option_error()
def train(root_path):
    bsr_train.parse_options = checked_parse_options
    bsr_train.get_env_info = env_info_with_version(_BASICSR_ENV_INFO)
    bsr_train.MessageLogger = LearningRateMessageLogger
    bsr_train.train_pipeline(osp.abspath(root_path))
    compat.end_distributed()


@exit_on_option_error()
def test(root_path):
    bsr_test.parse_options = checked_parse_options
    bsr_test.get_env_info = env_info_with_version(_BASICSR_ENV_INFO)
    bsr_test.test_pipeline(osp.abspath(root_path))
    compat.end_distributed()
