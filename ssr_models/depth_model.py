"""DepthModel: trains a monocular depth network on images with exact depth and writes it as a
``save_pretrained`` folder that ``MonocularDepth(backend, model_path=<folder>)`` loads (SPEC item 5)."""
import os.path as osp
from collections import OrderedDict

import numpy as np
import torch
from torch.nn import functional as F

from basicsr.metrics import calculate_metric
from basicsr.utils import get_root_logger, tensor2img
from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.registry import MODEL_REGISTRY
from ssr_models.ssr_base_model import SSRBaseModel, all_finite
from ssr_utils.depth_metrics import DEPTH_METRICS
from ssr_utils.errors import OptionError
from ssr_utils.visualize import depth_image

PRETRAINED_FOLDER = 'depth_model'  # experiments/<name>/depth_model/: the network as a save_pretrained folder


@MODEL_REGISTRY.register()
class DepthModel(SSRBaseModel):
    """Trains ``network_g`` (``type: TransformersDepthNet``, a DPT or Depth Anything model) on samples with
    ``img`` and exact ``depth`` (``type: SceneDepthDataset``).

    Options:
        train.depth_opt: the loss on (prediction, depth), e.g. ``{type: ScaleShiftInvariantLoss}``.
        train.relu_hinge_weight (1.0): weight of ``mean(relu(−z))`` on the input ``z`` of the head's final ReLU
            (``TransformersDepthNet.head_preactivation``), which keeps pixels from dying at 0; 0 = off.
        val.metrics: ``calculate_depth_absrel`` / ``calculate_depth_delta1`` (``ssr_utils.relative_depth``)
            against the sample's true ``disparity``, on the prediction at the image's full size, computed
            exactly as ``MonocularDepth`` computes it.
        path.depth_model_folder: where the ``save_pretrained`` folder goes (default
            ``experiments/<name>/depth_model``).

    Hooks of ``SSRBaseModel`` (docs/training.md; EMA, AMP, gradient clipping, non-finite steps, checkpoints
    come from there): ``setup_losses``, ``feed_data``, ``compute_losses``, ``run_network``. Two documented
    overrides: ``nondist_validation`` (depth metrics and depth images instead of SR metrics) and ``save``
    (after the BasicSR checkpoint, the network -- with the EMA weights when ``train: ema_decay`` is on -- is
    also written as the ``save_pretrained`` folder, at every checkpoint and at the end of training).
    """

    def setup_losses(self, train_opt):
        self.cri_depth = self.build_optional_loss(train_opt, 'depth_opt')
        if self.cri_depth is None:
            raise OptionError('train:depth_opt', None, 'DepthModel needs a depth loss (e.g. type: '
                              'ScaleShiftInvariantLoss)')
        self.relu_hinge_weight = float(train_opt.get('relu_hinge_weight', 1.0))
        if self.relu_hinge_weight < 0:
            raise OptionError('train:relu_hinge_weight', self.relu_hinge_weight, 'expected a weight >= 0')

    def feed_data(self, data):
        # no maybe_degrade_batch: the depth network sees clean images (scenes carry no degradation recipe)
        if 'img' not in data:
            raise KeyError("DepthModel: the data has no 'img' entry (use type: SceneDepthDataset)")
        self.lq = data['img'].to(self.device)  # the network's input image (named lq for BasicSR's visuals)
        self.gt = None
        self.depth_gt = data['depth'].to(self.device) if 'depth' in data else None
        self.disparity = data['disparity'].to(self.device) if 'disparity' in data else None

    def compute_losses(self):
        if self.depth_gt is None:
            raise KeyError("DepthModel: the training data has no 'depth' entry")
        pred = self.net_g(self.lq)
        l_depth = self.cri_depth(pred, self.depth_gt)
        loss_dict = OrderedDict(l_depth=l_depth)
        preact = getattr(self.get_bare_model(self.net_g), 'head_preactivation', None)
        if self.relu_hinge_weight > 0 and preact is not None:
            # DPT / Depth Anything heads end in a ReLU: a pixel pushed below zero outputs 0 and gets no gradient
            # (a scale-and-shift-invariant loss does not care where the zero is), and such dead pixels pile up
            # and stall training. The hinge pulls them back; it is 0 once every pixel is in the active range.
            l_relu = self.relu_hinge_weight * F.relu(-preact.float()).mean()
            loss_dict['l_relu_hinge'] = l_relu
            return l_depth + l_relu, loss_dict
        return l_depth, loss_dict

    def run_network(self, net):
        return {'sr': None, 'kernel': None, 'depth': net.predict(self.lq)}

    # --------------------------------------------------------------------------------- pretrained folder
    def pretrained_folder(self):
        folder = self.opt['path'].get('depth_model_folder')
        if folder is None:
            folder = osp.join(self.opt['path']['experiments_root'], PRETRAINED_FOLDER)
        return folder

    def save(self, epoch, current_iter):
        """BasicSR's checkpoint, then the ``save_pretrained`` folder of the evaluation network."""
        super().save(epoch, current_iter)
        if get_dist_info()[0] != 0:
            return
        net = self.bare_g
        with torch.no_grad(), self.ema_weights():
            if not all_finite(net.state_dict()):
                return  # the base class has logged it; the previous folder stays
            folder = net.save_pretrained(self.pretrained_folder())
        get_root_logger().info(f'Depth network ({"EMA" if self.ema is not None else "net_g"}, iter '
                               f'{current_iter if current_iter >= 0 else "latest"}) written as a save_pretrained '
                               f'folder: {folder} (load: MonocularDepth backend: {net.backend}, model_path: {folder})')

    # ---------------------------------------------------------------------------------------- validation
    # the base class's validation loop, scoring depth: the metrics of ``val.metrics`` on every validation image
    # (its whole size, the way ``MonocularDepth`` predicts) against its true disparity, and ``image | prediction
    # | ground truth`` strips saved and logged to TensorBoard (the first ``val.tb_images``)
    def validation_start(self, dataset_name, suite):
        for name, mopt in (self.opt['val'].get('metrics') or {}).items():
            if mopt.get('type') not in DEPTH_METRICS:
                raise OptionError(f'val:metrics:{name}:type', mopt.get('type'),
                                  f'DepthModel scores depth only: {", ".join(sorted(DEPTH_METRICS))}')
        self.no_disparity = 0

    def score_item(self, b, suite, gt_img):
        scores = OrderedDict((name, None) for name in suite.names)
        if self.disparity is None:
            self.no_disparity += 1
        else:
            pred, disparity = self.output['depth'][b:b + 1], self.disparity[b:b + 1]
            for name in suite.names:
                scores[name] = calculate_metric({'depth': pred, 'depth2': disparity}, suite.metrics[name])
        return OrderedDict([('', scores)])

    def validation_images(self, b):
        return OrderedDict([('', self.depth_strip(b, self.output['depth']))])

    def tb_image_tag(self, dataset_name, img_name, suffix):
        return f'val/{dataset_name}/{img_name}'

    def log_tb_references(self, tb_logger, dataset_name, img_name, b, gt_img, current_iter):
        """None: the strip holds the image and the ground truth."""

    def validation_end(self, dataset_name, suite, results):
        if self.no_disparity:
            get_root_logger().warning(f'Validation {dataset_name}: {self.no_disparity} image(s) without a true '
                                      'disparity (no scenes.json inverse-depth range): not scored.')

    def depth_strip(self, i, pred):
        """``image | prediction | ground truth`` (depth in the inferno colour map, 1 = near = bright)."""
        panels = [tensor2img(self.lq[i:i + 1].detach().float().cpu(), rgb2bgr=True, min_max=(0, 1)),
                  depth_image(pred[i:i + 1])]
        if self.depth_gt is not None:
            panels.append(depth_image(self.depth_gt[i:i + 1]))
        gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
        out = [panels[0]]
        for p in panels[1:]:
            out += [gap, p]
        return np.concatenate(out, axis=1)
