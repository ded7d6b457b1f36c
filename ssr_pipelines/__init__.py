"""SSR pipelines: super-resolution from bare networks, diffusers-style (``SSRPipeline``).

This layer sits above the networks (``ssr_arch``) and the data helpers (``ssr_data``) and below the
training models (``ssr_models``, which sample through it) and the applications (``ssr_app``).
"""
from ssr_pipelines.pipeline_ssr import SSRPipeline, SSRPipelineOutput  # noqa: F401

__all__ = ['SSRPipeline', 'SSRPipelineOutput']
