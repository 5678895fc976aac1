//! Looking at a trained classifier's mistakes (fastai `ClassificationInterpretation`):
//! predictions over a loader, confusion matrix, most confused pairs, top losses, the
//! classification report, and their PNG plots; test-time augmentation over loaders;
//! calibration (ECE, reliability diagram, temperature scaling).

pub mod calibration;
mod interpretation;
mod multi;
mod plot;
mod preds;
mod report;

pub use interpretation::{ClassificationInterpretation, TopLoss, distinct_names, preds_from_probs};
pub use multi::{LabelStats, MultiLabelReport, MultiPreds, accuracy_multi_probs, best_threshold, f1_samples, get_multi_preds, threshold_grid};
pub use plot::{plot_confusion_matrix, plot_top_losses, register_font};
pub use preds::{Preds, get_preds, get_preds_pass, tta};
pub use report::{ClassificationReport, ReportRow};
