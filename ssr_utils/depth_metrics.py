"""The relative-depth metrics (``val: metrics: <name>: type: ...``), registered in BasicSR's METRIC_REGISTRY;
``ssr_utils/*_metrics.py`` modules are imported by :func:`ssr_utils.registry_scan.import_losses_and_metrics`. What
they compute: :func:`ssr_utils.relative_depth.depth_accuracy`."""
from basicsr.utils.registry import METRIC_REGISTRY

from ssr_utils.relative_depth import depth_accuracy

# metric types that read depth maps (models route their data by this set, like KERNEL_METRICS)
DEPTH_METRICS = {'calculate_depth_absrel', 'calculate_depth_delta1'}

@METRIC_REGISTRY.register()
def calculate_depth_absrel(depth, depth2, mask=None, **kwargs):
    """AbsRel (lower is better) of ``depth`` (relative inverse-depth prediction) against ``depth2`` (true
    disparity), mean over the batch; see :func:`depth_accuracy`. Extra keys (e.g. ``better``) are ignored."""
    return float(depth_accuracy(depth, depth2, mask)['absrel'].mean())


@METRIC_REGISTRY.register()
def calculate_depth_delta1(depth, depth2, mask=None, **kwargs):
    """δ1 = fraction of pixels with max(Ẑ/Z, Z/Ẑ) < 1.25 (higher is better), mean over the batch; see
    :func:`depth_accuracy`."""
    return float(depth_accuracy(depth, depth2, mask)['delta1'].mean())
