//! A safe interpreter for the subset of Python's pickle format that `torch.save` writes.
//!
//! It builds an object graph (dicts, lists, tuples, numbers, strings) plus references to
//! tensors and their storages; it never imports or calls anything. `GLOBAL` opcodes are
//! checked against a short whitelist (`collections.OrderedDict`, the `torch._utils`
//! tensor rebuilders, `torch.*Storage`, `torch.device`, torch dtypes); any other class is
//! refused with an error that names it.
//!
//! Resource limits: containers refer to their items by id, so the interpreter never
//! recurses and builds nothing larger than the program; the object heap, the stack and the
//! memo hold at most [`MAX_OBJECTS`] entries each, MARKs nest at most [`MAX_DEPTH`] deep and
//! a tensor has at most [`MAX_DIMS`] dimensions, so a hostile pickle can neither exhaust
//! memory nor make the work quadratic. Follows the opcode definitions of CPython's
//! `Lib/pickletools.py` (protocols 0–5, binary opcodes) and the tensor layout of
//! `torch/_utils.py` (`_rebuild_tensor_v2`, `_rebuild_tensor_v3`, `_rebuild_parameter`).

use super::torch_objects::{StorageRef, TensorRef, dtype_kind, storage_kind, whitelisted};
use anyhow::{Context, bail};
use std::collections::HashMap;
use tch::Kind;

/// Index of an object in [`Unpickler::heap`]. Containers refer to their items by id, so
/// that objects shared through the pickle memo stay shared when they are mutated later.
pub type Id = usize;

/// A Python value as far as kestrel needs to understand it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Python `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An int (128 bits hold torch's legacy magic number).
    Int(i128),
    /// A float (kept for completeness: optimizer states in checkpoints hold them).
    Float(f64),
    /// A str.
    Str(String),
    /// bytes (protocol 2 strings, `BINBYTES`).
    Bytes(Vec<u8>),
    /// A tuple of objects.
    Tuple(Vec<Id>),
    /// A list of objects.
    List(Vec<Id>),
    /// `dict` or `collections.OrderedDict`; items in insertion order.
    Dict(Vec<(Id, Id)>),
    /// A whitelisted class or function, e.g. `torch._utils._rebuild_tensor_v2`.
    Global(String),
    /// A storage from a persistent id.
    Storage(Box<StorageRef>),
    /// A tensor from one of the `_rebuild_tensor*` functions.
    Tensor(Box<TensorRef>),
    /// A torch dtype (`torch.float16`), an argument of `_rebuild_tensor_v3`.
    Dtype(Kind),
    /// The position of a MARK opcode on the stack (internal).
    Mark,
}

/// Most objects (heap entries), stack entries and memo entries one pickle may make: a
/// ResNet-152 state dict needs about 10,000 objects; 4 Mi objects take 128 MiB.
pub const MAX_OBJECTS: usize = 1 << 22;
/// Most MARKs open at once (nesting depth of tuples, lists and dicts being built); a
/// state dict nests 4 deep.
pub const MAX_DEPTH: usize = 1000;
/// Most dimensions of a tensor (PyTorch's own limit for most operations is 64... and
/// `torch.save` files never come close).
pub const MAX_DIMS: usize = 64;

/// Runs a pickle program over `data` and keeps the objects it builds.
pub struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// Every object built so far; [`Id`]s index it.
    pub heap: Vec<Value>,
    stack: Vec<Id>,
    memo: HashMap<u64, Id>,
    /// MARKs on the stack.
    depth: usize,
}

impl<'a> Unpickler<'a> {
    /// An interpreter reading `data` from offset `pos`.
    pub fn new(data: &'a [u8], pos: usize) -> Self {
        Unpickler {
            data,
            pos,
            heap: Vec::new(),
            stack: Vec::new(),
            memo: HashMap::new(),
            depth: 0,
        }
    }

    /// Offset of the first byte after the last STOP (where the old format's next pickle starts).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Runs one pickle up to its STOP opcode and returns the id of the result.
    ///
    /// Errors: an unknown opcode, a class outside the whitelist (the error names it), a
    /// malformed program (stack underflow, bad memo index, wrong argument types) or data
    /// that ends before STOP; each names the byte offset.
    pub fn load(&mut self) -> crate::Result<Id> {
        self.stack.clear();
        self.memo.clear();
        self.depth = 0;
        loop {
            let at = self.pos;
            let op = self
                .u8()
                .context("the pickle ends before its STOP opcode")?;
            let done = self
                .step(op)
                .with_context(|| format!("pickle opcode 0x{op:02x} at byte {at}"))?;
            if done {
                let top = self.pop()?;
                return Ok(top);
            }
        }
    }

    /// The value with id `id`.
    pub fn get(&self, id: Id) -> &Value {
        &self.heap[id]
    }

    fn take(&mut self, n: usize) -> crate::Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            bail!(
                "the data is cut short (truncated file?): it ends at byte {}, {} more bytes were expected at byte {}",
                self.data.len(),
                n,
                self.pos
            )
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> crate::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> crate::Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn line(&mut self) -> crate::Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .context("a text argument has no end of line")?;
        let s = std::str::from_utf8(&rest[..n]).context("a text argument is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }
    fn push(&mut self, v: Value) -> crate::Result<()> {
        if self.heap.len() >= MAX_OBJECTS {
            bail!("the pickle builds more than {MAX_OBJECTS} objects (a state dict needs far fewer)");
        }
        if matches!(v, Value::Mark) {
            if self.depth >= MAX_DEPTH {
                bail!("the pickle nests containers more than {MAX_DEPTH} deep");
            }
            self.depth += 1;
        }
        self.heap.push(v);
        self.push_id(self.heap.len() - 1)
    }
    fn push_id(&mut self, id: Id) -> crate::Result<()> {
        if self.stack.len() >= MAX_OBJECTS {
            bail!("the pickle's stack grows beyond {MAX_OBJECTS} entries");
        }
        self.stack.push(id);
        Ok(())
    }
    fn pop(&mut self) -> crate::Result<Id> {
        self.stack.pop().context("the pickle's stack is empty")
    }
    fn top(&self) -> crate::Result<Id> {
        self.stack
            .last()
            .copied()
            .context("the pickle's stack is empty")
    }
    /// Pops everything down to (and including) the topmost MARK.
    fn pop_mark(&mut self) -> crate::Result<Vec<Id>> {
        let m = self
            .stack
            .iter()
            .rposition(|&id| matches!(self.heap[id], Value::Mark))
            .context("no MARK on the stack")?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        self.depth = self.depth.saturating_sub(1);
        Ok(items)
    }
    fn str_of(&mut self, n: usize) -> crate::Result<()> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).context("a string is not valid UTF-8")?;
        self.push(Value::Str(s.to_owned()))
    }
    fn bytes_of(&mut self, n: usize) -> crate::Result<()> {
        let b = self.take(n)?.to_vec();
        self.push(Value::Bytes(b))
    }
    fn memo_put(&mut self, key: u64) -> crate::Result<()> {
        let top = self.top()?;
        if self.memo.len() >= MAX_OBJECTS && !self.memo.contains_key(&key) {
            bail!("the pickle's memo grows beyond {MAX_OBJECTS} entries");
        }
        self.memo.insert(key, top);
        Ok(())
    }
    fn memo_get(&mut self, key: u64) -> crate::Result<()> {
        let id = *self
            .memo
            .get(&key)
            .with_context(|| format!("memo entry {key} does not exist"))?;
        self.push_id(id)
    }
    fn global(&mut self, module: &str, name: &str) -> crate::Result<()> {
        if !whitelisted(module, name) {
            bail!(
                "refusing to load: the file references {module}.{name}, which kestrel does not execute \
                 (only state dicts of tensors load; save `model.state_dict()` rather than a whole object)"
            );
        }
        let v = match (module, storage_kind(name), dtype_kind(name)) {
            ("torch", _, Some(k)) => Value::Dtype(k),
            _ => Value::Global(format!("{module}.{name}")),
        };
        self.push(v)
    }
    fn dict_set(&mut self, dict: Id, pairs: &[Id]) -> crate::Result<()> {
        if !pairs.len().is_multiple_of(2) {
            bail!("SETITEMS got an odd number of items");
        }
        let Value::Dict(items) = &mut self.heap[dict] else {
            bail!("SETITEM(S) on a value that is not a dict")
        };
        items.extend(pairs.chunks(2).map(|p| (p[0], p[1])));
        Ok(())
    }
    fn list_extend(&mut self, list: Id, items: &[Id]) -> crate::Result<()> {
        let Value::List(l) = &mut self.heap[list] else {
            bail!("APPEND(S) on a value that is not a list")
        };
        l.extend_from_slice(items);
        Ok(())
    }

    /// Executes one opcode; returns true at STOP.
    fn step(&mut self, op: u8) -> crate::Result<bool> {
        match op {
            b'.' => return Ok(true),
            0x80 => {
                let p = self.u8()?;
                if p > 5 {
                    bail!("pickle protocol {p} is newer than 5");
                }
            }
            0x95 => {
                self.le::<8>()?;
            }
            b'(' => self.push(Value::Mark)?,
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let t = self.top()?;
                self.push_id(t)?;
            }
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'J' => {
                let v = i32::from_le_bytes(self.le()?);
                self.push(Value::Int(v.into()))?
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v.into()))?
            }
            b'M' => {
                let v = u16::from_le_bytes(self.le()?);
                self.push(Value::Int(v.into()))?
            }
            0x8a | 0x8b => {
                let n = if op == 0x8a {
                    self.u8()? as usize
                } else {
                    u32::from_le_bytes(self.le()?) as usize
                };
                if n > 16 {
                    bail!("an integer of {n} bytes is too large");
                }
                let b = self.take(n)?;
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xff; 16]
                } else {
                    [0; 16]
                };
                buf[..n].copy_from_slice(b);
                self.push(Value::Int(i128::from_le_bytes(buf)))?
            }
            b'I' => {
                let s = self.line()?;
                let v = match s {
                    "01" => Value::Bool(true),
                    "00" => Value::Bool(false),
                    _ => Value::Int(s.parse().with_context(|| format!("bad integer {s:?}"))?),
                };
                self.push(v)?
            }
            b'G' => {
                let v = f64::from_be_bytes(self.le()?);
                self.push(Value::Float(v))?
            }
            b'X' => {
                let n = u32::from_le_bytes(self.le()?) as usize;
                self.str_of(n)?
            }
            0x8c => {
                let n = self.u8()? as usize;
                self.str_of(n)?
            }
            0x8d => {
                let n = u64::from_le_bytes(self.le()?) as usize;
                self.str_of(n)?
            }
            b'T' | b'B' => {
                let n = u32::from_le_bytes(self.le()?) as usize;
                self.bytes_of(n)?
            }
            b'U' | b'C' => {
                let n = self.u8()? as usize;
                self.bytes_of(n)?
            }
            0x8e => {
                let n = u64::from_le_bytes(self.le()?) as usize;
                self.bytes_of(n)?
            }
            b'}' => self.push(Value::Dict(Vec::new()))?,
            b'd' => {
                let items = self.pop_mark()?;
                self.push(Value::Dict(Vec::new()))?;
                let d = self.top()?;
                self.dict_set(d, &items)?
            }
            b']' => self.push(Value::List(Vec::new()))?,
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(items))?
            }
            b')' => self.push(Value::Tuple(Vec::new()))?,
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items))?
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    bail!("TUPLE{n} needs {n} items on the stack");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Value::Tuple(items))?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                let d = self.top()?;
                self.dict_set(d, &[k, v])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                let d = self.top()?;
                self.dict_set(d, &items)?
            }
            b'a' => {
                let v = self.pop()?;
                let l = self.top()?;
                self.list_extend(l, &[v])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                let l = self.top()?;
                self.list_extend(l, &items)?
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(module, name)?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (&self.heap[module], &self.heap[name]) {
                    (Value::Str(m), Value::Str(n)) => {
                        let (m, n) = (m.clone(), n.clone());
                        self.global(&m, &n)?
                    }
                    _ => bail!("STACK_GLOBAL needs two strings"),
                }
            }
            b'p' => {
                let key = self.line()?.parse().context("bad PUT index")?;
                self.memo_put(key)?
            }
            b'q' => {
                let key = self.u8()?.into();
                self.memo_put(key)?
            }
            b'r' => {
                let key = u32::from_le_bytes(self.le()?).into();
                self.memo_put(key)?
            }
            0x94 => {
                let key = self.memo.len() as u64;
                self.memo_put(key)?
            }
            b'g' => {
                let key = self.line()?.parse().context("bad GET index")?;
                self.memo_get(key)?
            }
            b'h' => {
                let key = self.u8()?.into();
                self.memo_get(key)?
            }
            b'j' => {
                let key = u32::from_le_bytes(self.le()?).into();
                self.memo_get(key)?
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent(pid)?;
                self.push(v)?
            }
            b'R' => {
                let args = self.pop()?;
                let f = self.pop()?;
                let v = self.reduce(f, args)?;
                self.push(v)?
            }
            0x81 => {
                let args = self.pop()?;
                let cls = self.pop()?;
                let v = self.reduce(cls, args)?;
                self.push(v)?
            }
            b'b' => {
                let _state = self.pop()?;
                let obj = self.top()?;
                // An OrderedDict state dict carries `_metadata` (layer versions) as state;
                // kestrel has no use for it. No other object takes state here.
                if !matches!(self.heap[obj], Value::Dict(_)) {
                    bail!(
                        "BUILD (set state) on a {} is not supported",
                        self.describe(obj)
                    );
                }
            }
            _ => bail!("unsupported pickle opcode 0x{op:02x} (not written by torch.save)"),
        }
        Ok(false)
    }

    /// A short description of a value for error messages.
    pub fn describe(&self, id: Id) -> String {
        match &self.heap[id] {
            Value::Global(g) => g.clone(),
            Value::Str(s) => format!("string {s:?}"),
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(i) => format!("integer {i}"),
            Value::Float(_) => "float".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Storage(_) => "storage".into(),
            Value::Tensor(_) => "tensor".into(),
            Value::Dtype(k) => format!("dtype {k:?}"),
            Value::Mark => "MARK".into(),
        }
    }
}
