"""The data-preparation and export tools: the code behind ``scripts/<name>.py`` (thin wrappers) and the console
commands (``ssr_app.console``). Each module has ``main(argv=None) -> exit status`` and the functions the other
tools and the tests use (e.g. :func:`ssr_app.tools.make_sv_testset.make_sv_testset`)."""
