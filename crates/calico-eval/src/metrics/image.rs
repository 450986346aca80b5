//! Per-image matrices shared by the metrics.

use super::predicted_label;
use crate::{ImageEval, Similarity};
use calico_masks::IouRle;

/// IoU of every prediction (rows) with every ground-truth mask (columns),
/// as pycocotools' `maskUtils.iou(pred, gt, [0] * n_gt)`.
pub(crate) struct PredGtIou {
    /// Number of predictions (rows).
    pub n_pred: usize,
    /// Number of ground-truth masks (columns).
    pub n_gt: usize,
    data: Vec<f64>,
}

impl PredGtIou {
    /// Computes the matrix of one image.
    pub fn new(img: &ImageEval) -> Self {
        let gt: Vec<IouRle> = img.gt.iter().map(|m| IouRle::new(&m.rle)).collect();
        let mut data = Vec::with_capacity(img.pred.len() * gt.len());
        for p in &img.pred {
            let p = IouRle::new(&p.rle);
            data.extend(gt.iter().map(|g| p.iou(g, false)));
        }
        PredGtIou {
            n_pred: img.pred.len(),
            n_gt: gt.len(),
            data,
        }
    }

    /// IoU of prediction `p` with ground truth `g`.
    #[inline]
    pub fn at(&self, p: usize, g: usize) -> f64 {
        self.data[p * self.n_gt + g]
    }
}

/// Text similarity of every ground-truth label (rows) with every predicted
/// label (columns, article removed), row-major.
pub(crate) fn gt_pred_similarity(img: &ImageEval, sim: &dyn Similarity) -> Vec<f64> {
    let preds: Vec<&str> = img.pred.iter().map(|p| predicted_label(&p.label)).collect();
    let mut out = Vec::with_capacity(img.gt.len() * preds.len());
    for g in &img.gt {
        out.extend(preds.iter().map(|p| sim.similarity(&g.label, p)));
    }
    out
}
