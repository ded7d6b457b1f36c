"""The bodies of the experiment scripts under ``scripts/experiments`` (each script is a thin wrapper that calls
its module's ``main``); also ``python -m ssr_app.experiments.<name>``."""
