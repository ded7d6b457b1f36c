"""SSR models: importing this package registers every `*_model.py` class in BasicSR's registries (and applies the
compatibility patches of BasicSR's training machinery, ``compat.apply_training``)."""
from ssr_utils import compat

compat.apply_training()

from ssr_utils.version import __version__  # noqa: E402,F401

from ssr_utils.registry_scan import import_modules_with_suffix  # noqa: E402

_modules = import_modules_with_suffix(__name__, __file__, '_model')
