"""SSR utilities: the BasicSR compatibility layer, option checks, image IO, tiling, metrics."""
from ssr_utils.version import __version__  # noqa: F401
