//! What `torch.save`'s pickles may contain beyond plain Python values: the whitelist of
//! globals, storages (persistent ids) and tensors (`torch/_utils.py`: `_rebuild_tensor_v2`,
//! `_rebuild_tensor_v3`, `_rebuild_parameter`; `torch/serialization.py`: `persistent_id`).

use super::pickle::{Id, MAX_DIMS, Unpickler, Value};
use anyhow::{Context, bail};
use tch::Kind;

/// A storage referenced by a persistent id `('storage', type, key, location, numel, ...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// Storage key: the file name under `data/` (zip format) or the key in the list of
    /// storages that follows the pickle (old format).
    pub key: String,
    /// Element type of a typed storage (`torch.FloatStorage` …); `None` for
    /// `torch.UntypedStorage` (bytes, used by `_rebuild_tensor_v3`).
    pub kind: Option<Kind>,
    /// Number of elements (bytes for an untyped storage).
    pub numel: i64,
}

/// A tensor as `_rebuild_tensor_v2` would build it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The storage holding the elements.
    pub storage: StorageRef,
    /// Element type of the tensor.
    pub kind: Kind,
    /// Offset of the first element, in elements.
    pub offset: i64,
    /// Shape.
    pub size: Vec<i64>,
    /// Strides, in elements.
    pub stride: Vec<i64>,
}

/// Globals a state dict may reference; everything else is refused.
pub(super) fn whitelisted(module: &str, name: &str) -> bool {
    match module {
        "collections" => name == "OrderedDict",
        "torch._utils" => matches!(
            name,
            "_rebuild_tensor"
                | "_rebuild_tensor_v2"
                | "_rebuild_tensor_v3"
                | "_rebuild_parameter"
                | "_rebuild_parameter_with_state"
        ),
        "torch" => name == "device" || storage_kind(name).is_some() || dtype_kind(name).is_some(),
        _ => false,
    }
}

/// Element type of `torch.<name>` storage classes; `Some(None)` for `UntypedStorage`.
pub(super) fn storage_kind(name: &str) -> Option<Option<Kind>> {
    Some(Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        "ComplexFloatStorage" => Kind::ComplexFloat,
        "ComplexDoubleStorage" => Kind::ComplexDouble,
        "UntypedStorage" => return Some(None),
        _ => return None,
    }))
}

/// Element type of a `torch.<dtype>` global.
pub(super) fn dtype_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "float32" | "float" => Kind::Float,
        "float64" | "double" => Kind::Double,
        "float16" | "half" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" | "long" => Kind::Int64,
        "int32" | "int" => Kind::Int,
        "int16" | "short" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        "float8_e5m2" => Kind::Float8e5m2,
        "float8_e4m3fn" => Kind::Float8e4m3fn,
        "float8_e5m2fnuz" => Kind::Float8e5m2fnuz,
        "float8_e4m3fnuz" => Kind::Float8e4m3fnuz,
        _ => return None,
    })
}

impl Unpickler<'_> {
    fn tuple(&self, id: Id, what: &str) -> crate::Result<&[Id]> {
        match &self.heap[id] {
            Value::Tuple(t) => Ok(t.as_slice()),
            _ => bail!("{what}: expected a tuple, found {}", self.describe(id)),
        }
    }
    fn int(&self, id: Id, what: &str) -> crate::Result<i64> {
        match &self.heap[id] {
            Value::Int(i) => {
                i64::try_from(*i).with_context(|| format!("{what}: {i} is out of range"))
            }
            _ => bail!("{what}: expected an integer, found {}", self.describe(id)),
        }
    }
    fn ints(&self, id: Id, what: &str) -> crate::Result<Vec<i64>> {
        let t = self.tuple(id, what)?;
        if t.len() > MAX_DIMS {
            bail!("{what}: {} dimensions, more than {MAX_DIMS}", t.len());
        }
        t.iter()
            .map(|&i| self.int(i, what))
            .collect()
    }

    /// A persistent id `('storage', storage_type, key, location, numel[, view_metadata])`.
    pub(super) fn persistent(&self, pid: Id) -> crate::Result<Value> {
        let t = self.tuple(pid, "persistent id")?;
        if t.len() < 5 || self.heap[t[0]] != Value::Str("storage".into()) {
            bail!("unsupported persistent id (expected ('storage', type, key, location, size))");
        }
        let kind = match &self.heap[t[1]] {
            Value::Global(g) => g.strip_prefix("torch.").and_then(storage_kind),
            _ => None,
        }
        .with_context(|| {
            format!(
                "persistent id: {} is not a storage type",
                self.describe(t[1])
            )
        })?;
        let key = match &self.heap[t[2]] {
            Value::Str(s) => s.clone(),
            _ => bail!("persistent id: the storage key is not a string"),
        };
        if t.get(5).is_some_and(|&v| self.heap[v] != Value::None) {
            bail!(
                "storage {key} is a view of another storage (PyTorch < 0.4 files), which kestrel does not read"
            );
        }
        let numel = self.int(t[4], "storage size")?;
        if numel < 0 {
            bail!("storage {key} has a negative size {numel}");
        }
        Ok(Value::Storage(Box::new(StorageRef { key, kind, numel })))
    }

    /// Applies a whitelisted callable to its argument tuple.
    pub(super) fn reduce(&self, f: Id, args: Id) -> crate::Result<Value> {
        let name = match &self.heap[f] {
            Value::Global(g) => g.as_str(),
            _ => bail!("REDUCE on {}, which is not a known class", self.describe(f)),
        };
        let a = self.tuple(args, name)?;
        match name {
            "collections.OrderedDict" if a.is_empty() => Ok(Value::Dict(Vec::new())),
            "torch.device" => match a.first().map(|&i| &self.heap[i]) {
                Some(Value::Str(s)) => Ok(Value::Str(s.clone())),
                _ => bail!("torch.device expects a string"),
            },
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                match a.first().map(|&i| &self.heap[i]) {
                    Some(v @ Value::Tensor(_)) => Ok(v.clone()),
                    _ => bail!("{name}: the first argument is not a tensor"),
                }
            }
            "torch._utils._rebuild_tensor"
            | "torch._utils._rebuild_tensor_v2"
            | "torch._utils._rebuild_tensor_v3" => {
                if a.len() < 4 {
                    bail!("{name} got {} arguments, expected at least 4", a.len());
                }
                let Value::Storage(storage) = &self.heap[a[0]] else {
                    bail!("{name}: the first argument is not a storage")
                };
                let kind = match (name, storage.kind) {
                    ("torch._utils._rebuild_tensor_v3", _) => {
                        match a.get(6).map(|&i| &self.heap[i]) {
                            Some(Value::Dtype(k)) => *k,
                            _ => bail!("{name}: the 7th argument is not a dtype"),
                        }
                    }
                    (_, Some(k)) => k,
                    (_, None) => bail!("{name} on an untyped storage"),
                };
                let t = TensorRef {
                    storage: (**storage).clone(),
                    kind,
                    offset: self.int(a[1], "storage offset")?,
                    size: self.ints(a[2], "tensor size")?,
                    stride: self.ints(a[3], "tensor stride")?,
                };
                Ok(Value::Tensor(Box::new(t)))
            }
            _ => bail!("calling {name} with these arguments is not supported"),
        }
    }
}
