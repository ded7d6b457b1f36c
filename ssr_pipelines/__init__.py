"""SSR pipelines: super-resolution from bare networks, diffusers-style (``SSRPipeline``), and their assembly.

This layer sits above the networks (``ssr_arch``) and the data helpers (``ssr_data``) and below the
training models (``ssr_models``, which sample through it) and the applications (``ssr_app``). Three modules:
``pipeline_ssr`` (sampling, as named stages), ``builder`` (an option file or an experiment folder -> a
pipeline: ``load_pipeline``) and ``model_folder`` (``save_pretrained`` / ``from_pretrained`` folders).
Importing it imports none of BasicSR's training machinery.
"""
from ssr_pipelines.builder import load_pipeline  # noqa: F401
from ssr_pipelines.pipeline_ssr import SSRPipeline, SSRPipelineOutput  # noqa: F401
from ssr_utils.version import __version__  # noqa: F401

__all__ = ['SSRPipeline', 'SSRPipelineOutput', 'load_pipeline']
