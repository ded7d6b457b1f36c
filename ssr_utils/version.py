"""The one version string of the SSR packages (read by setup.py without importing anything)."""
__version__ = '0.1.0'
