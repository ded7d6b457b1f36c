"""Optional dependencies (setup.py extras) imported lazily, with a message naming the extra to install."""
import importlib

# module name -> (extra in setup.py, pip requirement)
EXTRAS = {
    'transformers': ('depth', 'transformers>=4.40'),
    'pyiqa': ('iqa', 'pyiqa>=0.1.10'),
}


class MissingExtraError(ImportError):
    pass


def require(module_name, feature):
    """Import ``module_name`` or raise :class:`MissingExtraError` saying which extra ``feature`` needs."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        extra, requirement = EXTRAS.get(module_name, (None, module_name))
        how = f"pip install -e '.[{extra}]'" if extra else f'pip install {requirement}'
        raise MissingExtraError(f'{feature} needs the optional package {requirement!r}, which is not installed '
                                f'({err}); install it with: {how}') from err


def is_available(module_name):
    try:
        importlib.import_module(module_name)
    except ImportError:
        return False
    return True
