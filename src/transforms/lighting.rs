//! Brightness and contrast in logit space (fastai `Brightness`, `Contrast`,
//! `LightingTfm`), fused into one pass: `sigmoid(c · (logit(x) + logit(b)))`.

use anyhow::ensure;
use tch::Tensor;

/// fastai `logit`'s clamp: values are kept in [EPS, 1 − EPS] before the logit.
const EPS: f64 = 1e-7;

fn logit(p: f64) -> f64 {
    let p = p.clamp(EPS, 1.0 - EPS);
    (p / (1.0 - p)).ln()
}

/// Per-image (N, 1, 1, 1) column of `v` on `x`'s device and kind.
fn per_image(v: &[f64], x: &Tensor) -> Tensor {
    let v: Vec<f32> = v.iter().map(|&v| v as f32).collect();
    Tensor::from_slice(&v).view([-1, 1, 1, 1]).to_device(x.device()).to_kind(x.kind())
}

fn check(x: &Tensor, n: usize, what: &str) -> crate::Result<()> {
    let size = x.size();
    ensure!(size.len() == 4 && size[0] == n as i64, "{what}: {n} values for a batch of shape {size:?}");
    ensure!(x.is_floating_point(), "{what}: expected a float batch in [0, 1], got {:?}", x.kind());
    Ok(())
}

/// Brightness and contrast together, as fastai's composed `LightingTfm`:
/// `y = sigmoid(contrast_i · (logit(x) + logit(brightness_i)))` per image i.
///
/// `x`: float (N, C, H, W) in [0, 1] on any device; `brightness` in (0, 1) (0.5 = no
/// change) and `contrast` > 0 (1 = no change), one per image. Returns the same shape in
/// [0, 1]. Errors: lengths that differ from N, or a non-float `x`.
pub fn lighting(x: &Tensor, brightness: &[f64], contrast: &[f64]) -> crate::Result<Tensor> {
    check(x, brightness.len(), "lighting (brightness)")?;
    check(x, contrast.len(), "lighting (contrast)")?;
    let shift: Vec<f64> = brightness.iter().zip(contrast).map(|(&b, &c)| c * logit(b)).collect();
    let mut y = x.logit(EPS);
    let _ = y.g_mul_(&per_image(contrast, x)).g_add_(&per_image(&shift, x)).sigmoid_();
    Ok(y)
}

/// fastai `brightness` alone (one logit → add → sigmoid pass); for the op-by-op baseline.
pub fn brightness(x: &Tensor, brightness: &[f64]) -> crate::Result<Tensor> {
    check(x, brightness.len(), "brightness")?;
    let b: Vec<f64> = brightness.iter().map(|&b| logit(b)).collect();
    Ok((x.logit(EPS) + per_image(&b, x)).sigmoid())
}

/// fastai `contrast` alone (one logit → multiply → sigmoid pass); for the op-by-op
/// baseline.
pub fn contrast(x: &Tensor, contrast: &[f64]) -> crate::Result<Tensor> {
    check(x, contrast.len(), "contrast")?;
    Ok((x.logit(EPS) * per_image(contrast, x)).sigmoid())
}
