"""Entry points behind ``basicsr/train.py`` and ``basicsr/test.py`` at the repository root.

They register every SSR component, check the option file before anything heavy starts, and hand
over to BasicSR's own ``train_pipeline`` / ``test_pipeline``.
"""
import os.path as osp

from ssr_utils import compat

compat.apply()

import basicsr.test as bsr_test  # noqa: E402
import basicsr.train as bsr_train  # noqa: E402
from basicsr.utils.options import parse_options  # noqa: E402

import ssr_arch  # noqa: E402,F401
import ssr_data  # noqa: E402,F401
import ssr_models  # noqa: E402,F401
from ssr_utils.option_check import check_options  # noqa: E402


def checked_parse_options(root_path, is_train=True):
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
