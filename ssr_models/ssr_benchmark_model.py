"""SSRBenchmarkModel: the paper's Table 1 on paired test sets, from ``basicsr/test.py``.

For every test image it produces the bicubic upsampling of the LR input, the SVKR result Iᵀ and the SSR
diffusion result (through the pipeline), scores each with the ``val.metrics`` block (PSNR / SSIM / NIQE
from BasicSR, LPIPS / MUSIQ / CLIP-IQA through pyiqa when available, kernel PSNR against the ground-truth
kernel maps), and writes under ``results/<name>/``: ``<dataset>_metrics.csv`` (every image and method),
``<dataset>_metrics.md`` (means per method, and the metrics that could not run with the reason),
``<dataset>_crops/<image>.png`` (LR bicubic | SVKR | SSR | HR) and, with ``val.save_img``, every output
under ``visualization/<dataset>/<image>_<method>.png``. It runs the training base's validation loop; the
hooks below add the methods, the table and the crops.
"""
import os.path as osp
from collections import OrderedDict

import torch
from torch.nn import functional as F

from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import MODEL_REGISTRY

from ssr_models.ssr_model import SSRModel
from ssr_utils.errors import OptionError
from ssr_utils.evaluation import ResultTable, side_by_side

METHODS = OrderedDict([('bicubic', 'Bicubic'), ('svkr', 'SVKR (I^T)'), ('ssr', 'SSR')])


@MODEL_REGISTRY.register()
class SSRBenchmarkModel(SSRModel):
    """SSRModel options plus an optional ``benchmark`` block:

    ``methods`` (default ``[bicubic, svkr, ssr]``; ``svkr`` needs ``network_svkr``), ``crop_size`` (HR
    pixels of the side-by-side crops, default 128), ``save_crops`` (default true).
    """
    wants_images = True  # the crops are made from the validation images

    @classmethod
    def methods_of(cls, opt):
        methods = list((opt.get('benchmark') or {}).get('methods', list(METHODS)))
        for m in methods:
            if m not in METHODS:
                raise OptionError('benchmark:methods', m, f'expected some of {list(METHODS)}')
        if not methods:
            raise OptionError('benchmark:methods', methods, f'expected some of {list(METHODS)}')
        return methods

    @classmethod
    def svkr_use(cls, opt):
        use = super().svkr_use(opt)
        if 'svkr' in cls.methods_of(opt):
            use = ' and '.join(u for u in (use, 'benchmark:methods: svkr') if u)
        return use

    def setup_model(self):
        super().setup_model()
        bench = self.opt.get('benchmark') or {}
        self.methods = self.methods_of(self.opt)
        # BasicSR's metric log / best-metric tracking follows the SSR row (or the last method)
        self.main_method = 'ssr' if 'ssr' in self.methods else self.methods[-1]
        self.crop_size = int(bench.get('crop_size', 128))
        self.save_crops = bool(bench.get('save_crops', True))
        self.last_tables = {}

    def method_suffix(self, method):
        return '' if method == self.main_method else f'_{method}'

    @torch.no_grad()
    def benchmark_outputs(self):
        """SR outputs of the fed batch per method and the kernel map used by SSR (or None)."""
        outs, kernel = OrderedDict(), None
        svkr_out = self.net_svkr(self.lq) if self.net_svkr is not None and (
            'svkr' in self.methods or ('ssr' in self.methods and self.val_cond_source == 'svkr')) else None
        if svkr_out is not None:
            kernel = svkr_out.get('kernel')
        for m in self.methods:
            if m == 'bicubic':
                outs[m] = F.interpolate(self.lq, scale_factor=self.scale, mode='bicubic',
                                        align_corners=False).clamp(0, 1)
            elif m == 'svkr':
                outs[m] = svkr_out['sr'].clamp(0, 1)
            elif m == 'ssr':
                if self.val_cond_source == 'svkr' and svkr_out is not None:
                    depth, kmap = svkr_out.get('depth'), svkr_out.get('kernel')
                else:
                    depth, kmap = self.condition_maps(self.lq, 'gt', self.depth_in, self.kernel_in)
                outs[m] = self.sr(self.lq, depth=depth, kernel=kmap, num_steps=self.validation_steps())['sr']
        return outs, kernel

    def run_network(self, net):
        outs, kernel = self.benchmark_outputs()
        return dict(sr=outs[self.main_method], methods=outs, kernel=kernel)

    def scored_outputs(self, b):
        kernel = self.output['kernel']
        return [(self.method_suffix(m), out[b:b + 1],
                 kernel[b:b + 1] if kernel is not None and m in ('svkr', 'ssr') else None)
                for m, out in self.output['methods'].items()]

    def validation_images(self, b):
        return OrderedDict((f'_{m}', tensor2img(out[b:b + 1].detach().float().cpu(), rgb2bgr=True, min_max=(0, 1)))
                           for m, out in self.output['methods'].items())

    def visual_path(self, dataset_name, img_name, current_iter, suffix):
        return osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}{suffix}.png')

    def _results_root(self):
        return self.opt['path'].get('results_root') or osp.join(self.opt['path'].get('root', '.'), 'results',
                                                                 self.opt['name'])

    def validation_start(self, dataset_name, suite):
        self._table = ResultTable(suite.names, [METHODS[m] for m in self.methods])
        self._has_gt_kernel = False

    def validation_item(self, dataset_name, img_name, b, scores, images):
        for m in self.methods:
            self._table.add(img_name, METHODS[m], scores[self.method_suffix(m)])
        self._has_gt_kernel = self._has_gt_kernel or self.kernel_in is not None
        if not self.save_crops:
            return
        panels = [('LR bicubic' if m == 'bicubic' else METHODS[m], images[f'_{m}']) for m in self.methods]
        h, w = panels[0][1].shape[:2]
        if self.gt is not None:
            hr = tensor2img(self.gt[b:b + 1].detach().float().cpu(), rgb2bgr=True, min_max=(0, 1))
            panels.append(('HR', hr[:h, :w]))
        size = min(self.crop_size, h, w)
        strip = side_by_side(panels, ((h - size) // 2, (w - size) // 2, size))
        imwrite(strip, osp.join(self._results_root(), f'{dataset_name}_crops', f'{img_name}.png'))

    def validation_end(self, dataset_name, suite, results):
        notes = suite.na_notes()
        if notes:
            notes.insert(0, 'Not available on some images:')
        if not self._has_gt_kernel and any(suite.is_kernel_metric(n) for n in suite.names):
            notes.append('Kernel PSNR: this test set has no ground-truth kernels (n/a).')
        csv_path, md_path = self._table.write(self._results_root(), dataset_name, suite.unavailable, notes)
        self.last_tables[dataset_name] = (csv_path, md_path)
        get_root_logger().info(f'Benchmark {dataset_name} (means):\n{self._table.markdown()}\n'
                               f'Tables: {csv_path}, {md_path}')

    def ground_truth_kernel(self):
        return self.kernel_in
