"""The experiments that measure the method (their tables and figures go under ``results/`` or
``docs/evidence/``): the code behind ``scripts/experiments/<name>.py`` (thin wrappers; also
``python -m ssr_app.experiments.<name>``). Each module has ``main(argv=None)`` and the functions its tests use
(e.g. :func:`demo_conditions.ignored_conditions`, :func:`depth_accuracy.image_use_notes`,
:func:`svkr_evidence.build_dkenet`, :data:`ssr_ablation.ARMS`)."""
