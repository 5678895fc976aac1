//! The classification report (scikit-learn `classification_report`, which fastai's
//! `ClassificationInterpretation.print_classification_report` prints).

use std::fmt;

/// Precision, recall, F1 and support of one class or one average.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    /// Class name, or `macro avg` / `weighted avg`.
    pub name: String,
    /// tp / (tp + fp); 0 when nothing was predicted as the class (scikit-learn's `zero_division=0`).
    pub precision: f64,
    /// tp / (tp + fn); 0 when the class has no items.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// Number of items whose actual class it is (the total for averages).
    pub support: u64,
}

/// Per-class rows (every class of the vocabulary, also those without items), accuracy,
/// the unweighted (macro) mean and the support-weighted mean of the per-class numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationReport {
    /// One row per class, vocabulary order.
    pub classes: Vec<ReportRow>,
    /// Share of items predicted correctly, 0..=1.
    pub accuracy: f64,
    /// Number of items.
    pub total: u64,
    /// Unweighted mean over the classes.
    pub macro_avg: ReportRow,
    /// Mean over the classes weighted by support.
    pub weighted_avg: ReportRow,
}

impl ClassificationReport {
    /// The report of confusion matrix `cm` (`cm[actual][predicted]`, C × C) with class names `vocab`.
    pub fn new(cm: &[Vec<u64>], vocab: &[String]) -> Self {
        let c = cm.len();
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let classes: Vec<ReportRow> = (0..c)
            .map(|k| {
                let tp = cm[k][k] as f64;
                let support: u64 = cm[k].iter().sum();
                let predicted: u64 = cm.iter().map(|row| row[k]).sum();
                let precision = div(tp, predicted as f64);
                let recall = div(tp, support as f64);
                let f1 = div(2.0 * precision * recall, precision + recall);
                ReportRow { name: vocab[k].clone(), precision, recall, f1, support }
            })
            .collect();
        let total: u64 = classes.iter().map(|r| r.support).sum();
        let correct: u64 = (0..c).map(|k| cm[k][k]).sum();
        let avg = |name: &str, w: &dyn Fn(&ReportRow) -> f64| {
            let ws: f64 = classes.iter().map(w).sum();
            let mean = |f: &dyn Fn(&ReportRow) -> f64| div(classes.iter().map(|r| w(r) * f(r)).sum(), ws);
            ReportRow {
                name: name.to_owned(),
                precision: mean(&|r| r.precision),
                recall: mean(&|r| r.recall),
                f1: mean(&|r| r.f1),
                support: total,
            }
        };
        let macro_avg = avg("macro avg", &|_| 1.0);
        let weighted_avg = avg("weighted avg", &|r| r.support as f64);
        Self { accuracy: div(correct as f64, total as f64), total, classes, macro_avg, weighted_avg }
    }

    /// The report as a Markdown table (for `report.md` / HTML reports), 4 decimals.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("| class | precision | recall | f1-score | support |\n|---|---:|---:|---:|---:|\n");
        let row = |r: &ReportRow| {
            format!("| {} | {:.4} | {:.4} | {:.4} | {} |\n", r.name, r.precision, r.recall, r.f1, r.support)
        };
        for r in &self.classes {
            s += &row(r);
        }
        s += &format!("| **accuracy** | | | {:.4} | {} |\n", self.accuracy, self.total);
        s += &row(&self.macro_avg);
        s += &row(&self.weighted_avg);
        s
    }
}

/// scikit-learn's text layout with 2 decimals: names right-aligned, columns 9 wide.
impl fmt::Display for ClassificationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.classes.iter().map(|r| r.name.chars().count()).max().unwrap_or(0).max("weighted avg".len());
        writeln!(f, "{:>w$}  {:>9} {:>9} {:>9} {:>9}\n", "", "precision", "recall", "f1-score", "support")?;
        let row = |f: &mut fmt::Formatter<'_>, r: &ReportRow| {
            writeln!(f, "{:>w$}  {:>9.2} {:>9.2} {:>9.2} {:>9}", r.name, r.precision, r.recall, r.f1, r.support)
        };
        for r in &self.classes {
            row(f, r)?;
        }
        writeln!(f)?;
        writeln!(f, "{:>w$}  {:>9} {:>9} {:>9.2} {:>9}", "accuracy", "", "", self.accuracy, self.total)?;
        row(f, &self.macro_avg)?;
        row(f, &self.weighted_avg)
    }
}
