"""SSRBenchmarkModel: the paper's Table 1 on paired test sets, from ``basicsr/test.py``.

For every test image it produces the bicubic upsampling of the LR input, the SVKR result Iᵀ and the SSR
diffusion result, scores each with the ``val.metrics`` block (PSNR / SSIM / NIQE from BasicSR, LPIPS /
MUSIQ / CLIP-IQA through pyiqa when available, kernel PSNR against the ground-truth kernel maps), and
writes under ``results/<name>/``: ``<dataset>_metrics.csv`` (every image and method),
``<dataset>_metrics.md`` (means per method, and the metrics that could not run with the reason),
``<dataset>_crops/<image>.png`` (LR bicubic | SVKR | SSR | HR) and, with ``val.save_img``, every output
under ``visualization/<dataset>/``.
"""
import os.path as osp
from collections import OrderedDict

import torch
from torch.nn import functional as F
from tqdm import tqdm

from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import MODEL_REGISTRY

from ssr_arch.depth_arch import depth_note, depth_sources
from ssr_models.ssr_model import SSRModel
from ssr_utils.errors import OptionError
from ssr_utils.evaluation import MetricSuite, ResultTable, side_by_side

METHODS = OrderedDict([('bicubic', 'Bicubic'), ('svkr', 'SVKR (I^T)'), ('ssr', 'SSR')])


@MODEL_REGISTRY.register()
class SSRBenchmarkModel(SSRModel):
    """SSRModel options plus an optional ``benchmark`` block:

    ``methods`` (default ``[bicubic, svkr, ssr]``; ``svkr`` needs ``network_svkr``), ``crop_size`` (HR
    pixels of the side-by-side crops, default 128), ``save_crops`` (default true).
    """

    def __init__(self, opt):
        super().__init__(opt)
        bench = opt.get('benchmark') or {}
        self.methods = list(bench.get('methods', list(METHODS)))
        for m in self.methods:
            if m not in METHODS:
                raise OptionError('benchmark:methods', m, f'expected some of {list(METHODS)}')
        if 'svkr' in self.methods and self.net_svkr is None:
            raise OptionError('benchmark:methods', 'svkr', 'needs network_svkr')
        self.crop_size = int(bench.get('crop_size', 128))
        self.save_crops = bool(bench.get('save_crops', True))
        self.last_tables = {}

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
                outs[m] = F.interpolate(self.lq, scale_factor=self.scale, mode='bicubic', align_corners=False).clamp(0, 1)
            elif m == 'svkr':
                outs[m] = svkr_out['sr'].clamp(0, 1)
            elif m == 'ssr':
                if self.val_cond_source == 'svkr' and svkr_out is not None:
                    depth, kmap = svkr_out.get('depth'), svkr_out.get('kernel')
                else:
                    depth, kmap = self.condition_maps(self.lq, 'gt', self.depth_in, self.kernel_in)
                steps = self.diff_opt.get('val_num_inference_steps', self.diff_opt.get('num_inference_steps', 50))
                self.output = self.sr(self.lq, depth=depth, kernel=kmap, num_steps=steps)['sr']
                outs[m] = self.output
        return outs, kernel

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        logger = get_root_logger()
        dataset_name = dataloader.dataset.opt['name']
        suite = MetricSuite(self.opt['val'].get('metrics'), device=self.device, logger=logger)
        sources = {'svkr': depth_sources(self.net_svkr), 'ssr': self.depth_sources(dataloader.dataset)}
        depth = {METHODS[m]: ', '.join(sources[m]) for m in self.methods if sources.get(m)}
        note = depth_note([s for m in self.methods for s in sources.get(m, [])])
        table = ResultTable(suite.names, [METHODS[m] for m in self.methods], depth=depth, depth_note=note)
        results_root = self.opt['path'].get('results_root') or osp.join(self.opt['path'].get('root', '.'), 'results',
                                                                         self.opt['name'])
        has_gt_kernel = False
        for val_data in tqdm(dataloader, desc=f'Benchmark {dataset_name}', unit='image'):
            self.feed_data(val_data)
            outs, kernel = self.benchmark_outputs()
            for b in range(self.lq.shape[0]):
                name = osp.splitext(osp.basename(val_data['lq_path'][b]))[0]
                imgs = {m: tensor2img(o[b:b + 1].detach().float().cpu(), rgb2bgr=True, min_max=(0, 1))
                        for m, o in outs.items()}
                gt = None
                if self.gt is not None:
                    gt = tensor2img(self.gt[b:b + 1].detach().float().cpu(), rgb2bgr=True, min_max=(0, 1))
                kgt = self.kernel_in[b:b + 1] if self.kernel_in is not None else None
                has_gt_kernel = has_gt_kernel or kgt is not None
                for m, img in imgs.items():
                    k_est = kernel[b:b + 1] if kernel is not None and m in ('svkr', 'ssr') else None
                    if gt is not None and gt.shape != img.shape:
                        gt_m = gt[:img.shape[0], :img.shape[1]]
                    else:
                        gt_m = gt
                    table.add(name, METHODS[m], suite.score(img, gt_m, k_est, kgt))
                    if save_img:
                        folder = osp.join(self.opt['path']['visualization'], dataset_name)
                        imwrite(img, osp.join(folder, f'{name}_{m}.png'))
                if self.save_crops:
                    panels = [('LR bicubic' if m == 'bicubic' else METHODS[m], imgs[m]) for m in imgs]
                    if gt is not None:
                        panels.append(('HR', gt[:panels[0][1].shape[0], :panels[0][1].shape[1]]))
                    size = min(self.crop_size, *panels[0][1].shape[:2])
                    h, w = panels[0][1].shape[:2]
                    strip = side_by_side(panels, ((h - size) // 2, (w - size) // 2, size))
                    imwrite(strip, osp.join(results_root, f'{dataset_name}_crops', f'{name}.png'))
        notes = suite.na_notes()
        if notes:
            notes.insert(0, 'Not available on some images:')
        if not has_gt_kernel and any(suite.is_kernel_metric(n) for n in suite.names):
            notes.append('Kernel PSNR: this test set has no ground-truth kernels (n/a).')
        csv_path, md_path = table.write(results_root, dataset_name, suite.unavailable, notes)
        self.last_tables[dataset_name] = (csv_path, md_path)
        logger.info(f'Benchmark {dataset_name} (means)' + (f' [{note}]' if note else '') +
                    f':\n{table.markdown()}\nTables: {csv_path}, {md_path}')
        # BasicSR's own metric log / best-metric tracking follows the SSR row (or the last method)
        main = METHODS['ssr'] if 'ssr' in self.methods else METHODS[self.methods[-1]]
        means = table.means()[main]
        metrics_opt = self.opt['val'].get('metrics') or {}
        if metrics_opt:
            self._initialize_best_metric_results(dataset_name)
            self.metric_results = {k: v for k, v in means.items() if v is not None}
            for metric, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, metric, value, current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger, note)
