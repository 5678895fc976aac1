//! safetensors files (Hugging Face format: an 8-byte little-endian header length, a JSON
//! header of name → dtype, shape, byte range, then the raw little-endian data), read with
//! the `safetensors` crate.

use anyhow::{Context, bail};
use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

/// Reads every tensor of a safetensors file (`bytes` is its content), contiguous, in the
/// order of their data in the file.
///
/// Errors: a damaged header or data section, a dtype libtorch has no kind for (U16, U32, U64).
pub fn load_safetensors(bytes: &[u8]) -> crate::Result<Vec<(String, Tensor)>> {
    let st = SafeTensors::deserialize(bytes)
        .context("not a valid safetensors file (truncated or damaged?)")?;
    let mut out = Vec::new();
    let mut views = st.tensors();
    views.sort_by(|(a, va), (b, vb)| {
        (va.data().as_ptr() as usize, a).cmp(&(vb.data().as_ptr() as usize, b))
    });
    for (name, view) in views {
        let Some(kind) = kind_of(view.dtype()) else {
            bail!("tensor {name} has dtype {:?}, which libtorch cannot hold", view.dtype());
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .with_context(|| format!("tensor {name}"))?;
        out.push((name, t));
    }
    Ok(out)
}

/// The libtorch kind of a safetensors dtype; `None` for those libtorch cannot hold (U16,
/// U32, U64, …).
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F8_E5M2 => Kind::Float8e5m2,
        Dtype::F8_E4M3 => Kind::Float8e4m3fn,
        _ => return None,
    })
}

/// The safetensors dtype of a libtorch kind ([`kind_of`]'s inverse); `None` for kinds
/// safetensors cannot store (complex, quantised).
pub fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Float8e5m2 => Dtype::F8_E5M2,
        Kind::Float8e4m3fn => Dtype::F8_E4M3,
        _ => return None,
    })
}
