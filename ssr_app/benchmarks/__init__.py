"""The benchmarks: the code behind ``scripts/benchmarks/<name>.py`` (thin wrappers) and ``gpu_suite.sh``.

Each module has ``main(argv=None)`` and the measurements the others compose (``gpu_suite`` runs
:func:`bench_inference.measure`, :func:`bench_ssr_sampling.ssr_sampling`, ...; ``process_memory`` holds the
resident-memory helpers of the CPU columns). A measurement that needs a fresh process runs its own module
as ``python -m ssr_app.benchmarks.<name>``. Speed and memory are ratios against a baseline run in the same
process, never absolute timings of unit tests."""
