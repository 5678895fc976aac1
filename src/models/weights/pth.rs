//! PyTorch `.pth`/`.pt` files written by `torch.save`, in both of its layouts:
//!
//! - **zip** (the default since PyTorch 1.6): `<prefix>/data.pkl` is the pickle, each
//!   storage is the raw little-endian bytes of `<prefix>/data/<key>`, `<prefix>/byteorder`
//!   says `little` (`torch/serialization.py`: `_save`, `_load`);
//! - **legacy** (`_use_new_zipfile_serialization=False`, and files from before 1.6): a
//!   pickled magic number `0x1950a86a20f9469cfc6c`, the protocol version 1001, a `sys_info`
//!   dict, the main pickle, the sorted list of storage keys, then per storage an 8-byte
//!   little-endian element count and the raw bytes (`_legacy_save`, `_legacy_load`).
//!
//! Tensors come out as strided views (exact dtype, shape, strides and storage offset) of
//! CPU storages; tensors that shared a storage in the file share it here too.

use super::pickle::{Id, Unpickler, Value};
use super::torch_objects::{StorageRef, TensorRef};
use anyhow::{Context, bail};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use tch::{Device, Kind, Tensor};

const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;

/// Reads the state dict of a zip-format `.pth` file (`bytes` is its content).
///
/// Errors: a damaged archive, no `data.pkl`, a big-endian file, a refused class, a
/// missing or short storage entry, a tensor reaching outside its storage.
pub fn load_zip(bytes: &[u8]) -> crate::Result<Vec<(String, Tensor)>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .context("not a readable zip archive (truncated or damaged file?)")?;
    let pkl = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_owned))
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .context("the zip archive has no data.pkl, so it was not written by torch.save")?;
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    if let Ok(mut f) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut order = String::new();
        f.read_to_string(&mut order)
            .context("cannot read byteorder")?;
        if order.trim() != "little" {
            bail!(
                "the tensors are stored {}-endian; only little-endian files are supported",
                order.trim()
            );
        }
    }
    let program = read_entry(&mut zip, bytes, &pkl, MAX_PICKLE_BYTES, false)?;
    let mut u = Unpickler::new(&program, 0);
    let root = u.load().context("in data.pkl")?;
    let refs = state_dict(&u, root)?;
    let mut storages = Storages::default();
    refs.into_iter()
        .map(|(name, t)| {
            let key = &t.storage.key;
            let need = storage_bytes(&t.storage)?;
            let st = storages.get(&t.storage, || {
                read_entry(&mut zip, bytes, &format!("{prefix}data/{key}"), need, true)
            })?;
            Ok((
                name.clone(),
                view(&st, &t).with_context(|| format!("tensor {name}"))?,
            ))
        })
        .collect()
}

/// Largest `data.pkl` accepted (a state dict's pickle is a few hundred kB).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Deflate's best compression ratio is 1032:1, so a compressed entry of `c` bytes cannot
/// hold more than this many times `c` bytes (plus a little for tiny entries).
const MAX_DEFLATE_RATIO: u64 = 1032;

/// At most `limit` bytes of the archive entry `name`; torch stores entries uncompressed,
/// and those are borrowed from `bytes` (the whole archive) without a copy.
///
/// A compressed entry (not written by torch, but valid zip) is decompressed up to `limit`
/// bytes and no more than its compressed size allows ([`MAX_DEFLATE_RATIO`]); memory is
/// reserved for what actually comes out, never for the size the archive's header claims.
/// Errors: `want_all` and the entry cannot hold `limit` bytes (a storage declared larger
/// than its data: refused before anything is allocated).
fn read_entry<'b>(
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    bytes: &'b [u8],
    name: &str,
    limit: u64,
    want_all: bool,
) -> crate::Result<Cow<'b, [u8]>> {
    let f = zip
        .by_name(name)
        .with_context(|| format!("the archive has no entry {name}"))?;
    let most = match f.compression() {
        zip::CompressionMethod::Stored => f.size(),
        _ => f.compressed_size().saturating_mul(MAX_DEFLATE_RATIO).saturating_add(1024),
    };
    if want_all && limit > most {
        bail!(
            "archive entry {name} should hold {limit} bytes, but its {} bytes in the file cannot (damaged or hostile file)",
            f.compressed_size()
        );
    }
    if f.compression() == zip::CompressionMethod::Stored {
        let (start, len) = (f.data_start(), f.size().min(limit));
        let slice = start
            .checked_add(len)
            .and_then(|end| bytes.get(start as usize..end as usize));
        return slice.map(Cow::Borrowed).with_context(|| {
            format!("archive entry {name} reaches past the end of the file (truncated?)")
        });
    }
    let mut buf = Vec::with_capacity(f.size().min(limit).min(most).min(1 << 20) as usize);
    f.take(limit)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read archive entry {name} (file damaged?)"))?;
    Ok(Cow::Owned(buf))
}

/// Size in bytes of a storage, or an error when it overflows.
fn storage_bytes(s: &StorageRef) -> crate::Result<u64> {
    (s.numel as u64)
        .checked_mul(s.kind.unwrap_or(Kind::Uint8).elt_size_in_bytes() as u64)
        .with_context(|| {
            format!(
                "storage {} claims an impossible size of {} elements",
                s.key, s.numel
            )
        })
}

/// Reads the state dict of a legacy (non-zip) `.pth` file.
///
/// Errors: not a torch pickle (wrong magic number), a big-endian file, a refused class,
/// a truncated storage section, a tensor reaching outside its storage.
pub fn load_legacy(bytes: &[u8]) -> crate::Result<Vec<(String, Tensor)>> {
    let mut u = Unpickler::new(bytes, 0);
    let magic = u.load().ok().map(|id| u.get(id).clone());
    if magic != Some(Value::Int(LEGACY_MAGIC)) {
        bail!(
            "not a PyTorch weight file, or a truncated one (neither a zip archive nor torch's legacy format, nor safetensors)"
        );
    }
    let version = u.load().context("in the protocol version")?;
    if *u.get(version) != Value::Int(1001) {
        bail!("unsupported legacy protocol version (expected 1001)");
    }
    let info = u.load().context("in sys_info")?;
    if dict_get(&u, info, "little_endian") == Some(&Value::Bool(false)) {
        bail!("the tensors are stored big-endian; only little-endian files are supported");
    }
    let root = u.load().context("in the main pickle")?;
    let refs = state_dict(&u, root)?;
    let keys_id = u.load().context("in the list of storage keys")?;
    let Value::List(keys) = u.get(keys_id) else {
        bail!("the list of storage keys is not a list")
    };
    let kinds: HashMap<&str, &StorageRef> = u
        .heap
        .iter()
        .filter_map(|v| {
            if let Value::Storage(s) = v {
                Some((s.key.as_str(), &**s))
            } else {
                None
            }
        })
        .collect();
    let mut pos = u.position();
    let mut data: HashMap<String, &[u8]> = HashMap::new();
    for &k in keys {
        let Value::Str(key) = u.get(k) else {
            bail!("a storage key is not a string")
        };
        let s = kinds
            .get(key.as_str())
            .with_context(|| format!("storage {key} is listed but never used"))?;
        let elt = s.kind.unwrap_or(Kind::Uint8).elt_size_in_bytes() as u64;
        let head = bytes
            .get(pos..pos + 8)
            .with_context(|| format!("the file is truncated: it ends before storage {key}"))?;
        let count = u64::from_le_bytes(head.try_into().expect("8 bytes"));
        let len = count
            .checked_mul(elt)
            .filter(|&n| n <= (bytes.len() - pos - 8) as u64);
        let len = len.with_context(|| format!("the file is truncated: it ends inside storage {key} ({count} elements of {elt} bytes)"))?;
        data.insert(key.clone(), &bytes[pos + 8..pos + 8 + len as usize]);
        pos += 8 + len as usize;
    }
    let mut storages = Storages::default();
    refs.into_iter()
        .map(|(name, t)| {
            let key = &t.storage.key;
            let raw = || {
                data.get(key)
                    .map(|&d| Cow::Borrowed(d))
                    .with_context(|| format!("storage {key} has no data in the file"))
            };
            let st = storages.get(&t.storage, raw)?;
            Ok((
                name.clone(),
                view(&st, &t).with_context(|| format!("tensor {name}"))?,
            ))
        })
        .collect()
}

/// Looks up a string key in a dict value.
fn dict_get<'u>(u: &'u Unpickler, dict: Id, key: &str) -> Option<&'u Value> {
    let Value::Dict(items) = u.get(dict) else {
        return None;
    };
    items
        .iter()
        .find(|(k, _)| matches!(u.get(*k), Value::Str(s) if s == key))
        .map(|&(_, v)| u.get(v))
}

/// The `name → tensor` entries of the unpickled root: a dict of tensors, or a checkpoint
/// dict that holds one under `"state_dict"` or `"model"` (fastai's `Learner.save`).
fn state_dict(u: &Unpickler, root: Id) -> crate::Result<Vec<(String, TensorRef)>> {
    let Value::Dict(items) = u.get(root) else {
        bail!("the file holds a {}, not a state dict", u.describe(root))
    };
    let all_tensors = |items: &Vec<(Id, Id)>| {
        items
            .iter()
            .all(|(_, v)| matches!(u.get(*v), Value::Tensor(_)))
    };
    let items = if all_tensors(items) {
        items
    } else {
        let wrapped = items
            .iter()
            .find_map(|(k, v)| match (u.get(*k), u.get(*v)) {
                (Value::Str(s), Value::Dict(inner))
                    if (s == "state_dict" || s == "model") && all_tensors(inner) =>
                {
                    Some(inner)
                }
                _ => None,
            });
        let keys: Vec<String> = items.iter().take(10).map(|(k, _)| u.describe(*k)).collect();
        wrapped.with_context(|| {
            format!("no state dict found: the top-level dict has keys [{}] and values that are not all tensors", keys.join(", "))
        })?
    };
    items
        .iter()
        .map(|(k, v)| match (u.get(*k), u.get(*v)) {
            (Value::Str(name), Value::Tensor(t)) => Ok((name.clone(), (**t).clone())),
            _ => bail!("a state-dict key is a {}, not a string", u.describe(*k)),
        })
        .collect()
}

/// Storages built so far, by key: 1-D CPU tensors of the storage's element type.
#[derive(Default)]
struct Storages(HashMap<String, Tensor>);

impl Storages {
    fn get<'b>(
        &mut self,
        s: &StorageRef,
        raw: impl FnOnce() -> crate::Result<Cow<'b, [u8]>>,
    ) -> crate::Result<Tensor> {
        if let Some(t) = self.0.get(&s.key) {
            return Ok(t.shallow_clone());
        }
        let kind = s.kind.unwrap_or(Kind::Uint8);
        let need = storage_bytes(s)?;
        let bytes = raw()?;
        if need > bytes.len() as u64 {
            bail!(
                "storage {} should hold {} elements of {:?} but has only {} bytes",
                s.key,
                s.numel,
                kind,
                bytes.len()
            );
        }
        let t = Tensor::f_from_data_size(&bytes[..need as usize], &[s.numel], kind)?;
        self.0.insert(s.key.clone(), t.shallow_clone());
        Ok(t)
    }
}

/// The strided view `t` of `storage`, after checking that it stays inside the storage.
fn view(storage: &Tensor, t: &TensorRef) -> crate::Result<Tensor> {
    let st = if storage.kind() == t.kind {
        storage.shallow_clone()
    } else {
        let (from, to) = (
            storage.kind().elt_size_in_bytes() as i64,
            t.kind.elt_size_in_bytes() as i64,
        );
        let bytes = storage.size()[0] * from;
        storage
            .f_narrow(0, 0, bytes / to * to / from)?
            .f_view_dtype(t.kind)?
    };
    let numel = st.size()[0];
    if t.size.len() != t.stride.len()
        || t.size.iter().chain(&t.stride).any(|&x| x < 0)
        || t.offset < 0
    {
        bail!(
            "invalid layout: size {:?}, stride {:?}, offset {}",
            t.size,
            t.stride,
            t.offset
        );
    }
    if t.size.contains(&0) {
        return Ok(Tensor::f_empty(&t.size, (t.kind, Device::Cpu))?);
    }
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&n, &s)| {
            acc.checked_add((n - 1).checked_mul(s)?)
        });
    if last.is_none_or(|l| l >= numel) {
        bail!(
            "size {:?}, stride {:?} and offset {} reach outside its storage {} of {} elements",
            t.size,
            t.stride,
            t.offset,
            t.storage.key,
            numel
        );
    }
    Ok(st.f_as_strided(&t.size, &t.stride, t.offset)?)
}
