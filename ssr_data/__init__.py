"""SSR data: importing this package registers every `*_dataset.py` class in BasicSR's registries."""
from ssr_utils import compat

compat.apply()

from ssr_utils.version import __version__  # noqa: E402,F401

from ssr_utils.registry_scan import import_modules_with_suffix  # noqa: E402

_modules = import_modules_with_suffix(__name__, __file__, '_dataset')
