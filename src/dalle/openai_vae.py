"""Import OpenAI's released dVAE weights (paper §2.1) without executing pickled code.

OpenAI published the Stage-1 discrete VAE of Ramesh et al. 2021 as `encoder.pkl` and
`decoder.pkl` (github.com/openai/DALL-E): whole `dall_e.Encoder` / `dall_e.Decoder` modules
written with `torch.save` and meant to be read with plain `torch.load`, i.e. unpickled, which
runs whatever callables the file names. This module reads such files with a restricted unpickler
instead: every global the pickle references must be on an explicit allowlist, and each allowed
global is replaced by an inert stand-in (module classes become plain records of their pickled
state, tensor rebuilders become references into raw storage bytes). Nothing from `dall_e`,
`torch.nn` or `torch.load` is ever called; the tensors are built from the bytes with
`torch.frombuffer` / `as_strided`.

Both `torch.save` layouts are understood:

* zip (torch >= 1.6): `<prefix>/data.pkl` holds the pickle, storage `k` lies in
  `<prefix>/data/k`, and `<prefix>/byteorder` says "little" or "big" (absent: little).
* legacy (`_use_new_zipfile_serialization=False`): a stream of pickles (magic number, protocol
  version, sys info, the object, the sorted storage keys) followed, per key, by an 8-byte
  little-endian element count and the storage bytes, always little-endian.

The module tree then maps onto `DiscreteVAE` by renaming each conv's `w` / `b` to
`weight` / `bias`; hyper-parameters come from the attrs fields pickled on the objects.
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import torch

from dalle.config import VAEConfig
from dalle.errors import DalleError
from dalle.vae import DiscreteVAE

# Format constants of torch.save's legacy (non-zip) layout, from torch/serialization.py.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

ENCODER_CLASS = "dall_e.encoder.Encoder"
DECODER_CLASS = "dall_e.decoder.Decoder"


class UnsafePickleError(DalleError):
    """A checkpoint references a global outside the allowlist; nothing was executed."""


# -- inert stand-ins for the globals a released checkpoint references --


class _ModuleRecord:
    """Stand-in for a pickled `nn.Module`: keeps the instance dict that BUILD hands it.

    Pickle creates modules with `cls.__new__(cls)` and then calls `__setstate__(state)`; here
    both are plain Python, so loading a record runs no library code.
    """

    type_name: ClassVar[str] = ""
    state: dict[str, Any] | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]  # (dict, slot-state) form that pickle allows
        if not isinstance(state, dict):
            raise DalleError(f"pickled {self.type_name} has state of type {type(state).__name__}, expected a dict")
        self.state = state


def _record_class(qualified_name: str) -> type[_ModuleRecord]:
    return type(qualified_name.rsplit(".", 1)[1], (_ModuleRecord,), {"type_name": qualified_name})


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for `torch.FloatStorage` & co.: only the element dtype matters."""

    name: str
    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id; its bytes are read after unpickling."""

    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """What `_rebuild_tensor_v2` would have built: a strided view into a storage."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise DalleError(f"tensor {what} must be a tuple of ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, metadata: Any = None) -> _TensorRef:
    """Stand-in for `torch._utils._rebuild_tensor_v2`: validate the arguments, defer the bytes."""
    if not isinstance(storage, _StorageRef):
        raise DalleError(f"tensor storage must come from a persistent id, got {type(storage).__name__}")
    if type(storage_offset) is not int:
        raise DalleError(f"tensor storage offset must be an int, got {storage_offset!r}")
    if metadata:  # conj / neg bits: never set on the dVAE's real float weights
        raise DalleError(f"tensor metadata {metadata!r} is not supported")
    # Hooks are data only here (their callables would have had to pass the allowlist); drop them.
    return _TensorRef(storage, storage_offset, _int_tuple(size, "size"), _int_tuple(stride, "stride"))


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> _TensorRef:
    """Stand-in for `torch._utils._rebuild_parameter[_with_state]`: a parameter is its data."""
    if not isinstance(data, _TensorRef):
        raise DalleError(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


def _device(kind: Any, index: Any = None) -> str:
    """Stand-in for `torch.device`: the saving device is irrelevant, weights load on the CPU."""
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise DalleError(f"bad torch.device arguments {kind!r}, {index!r}")
    return kind if index is None else f"{kind}:{index}"


_MODULE_CLASSES = [
    ENCODER_CLASS, "dall_e.encoder.EncoderBlock",
    DECODER_CLASS, "dall_e.decoder.DecoderBlock",
    "dall_e.utils.Conv2d",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
    "torch.nn.modules.linear.Identity",
]

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# (module, name) -> stand-in. Everything else is refused. `set` and `OrderedDict` are the real
# builtins: they only hold data (the empty hook dicts and `_non_persistent_buffers_set`).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{tuple(n.rsplit(".", 1)): _record_class(n) for n in _MODULE_CLASSES},  # type: ignore[misc]
    **{("torch", n): _StorageType(n, d) for n, d in _STORAGE_DTYPES.items()},
    ("torch", "UntypedStorage"): _StorageType("UntypedStorage", torch.uint8),
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", torch.uint8),
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "device"): _device,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
}

# Protocol-2 pickles name Python 2 modules; pickle's own find_class renames them, ours must too.
_PY2_MODULES = {"__builtin__": "builtins"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only through `ALLOWED_GLOBALS` and records storages."""

    def __init__(self, file: IO[bytes], label: str) -> None:
        super().__init__(file)
        self.label = label
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            qualified = f"{module}.{name}"
            if not qualified.isprintable():  # keep the message on one line whatever the file says
                qualified = ascii(qualified)
            raise UnsafePickleError(
                f"refused to load global {qualified}: {self.label} is not an OpenAI dVAE checkpoint"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage":
            # zip: (tag, type, key, location, numel); legacy adds view metadata (None unless the
            # storage was a view, which torch stopped writing long ago).
            storage_type, key, _location, numel = pid[1:5]
            if not isinstance(storage_type, _StorageType) or not isinstance(key, str) \
                    or type(numel) is not int or numel < 0 or (len(pid) == 6 and pid[5] is not None):
                raise DalleError(f"unsupported storage reference {pid!r}")
            ref = self.storages.setdefault(key, _StorageRef(key, storage_type.dtype, numel))
            if (ref.dtype, ref.numel) != (storage_type.dtype, numel):
                raise DalleError(f"storage {key} is referenced with two different types or sizes")
            return ref
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module" \
                and isinstance(pid[1], type) and issubclass(pid[1], _ModuleRecord):
            # Legacy files name each module class once, with its source code (ignored).
            return pid[1]
        raise DalleError(f"unsupported persistent id {str(pid)[:80]!r}")


def _unpickle(unpickler: _RestrictedUnpickler) -> Any:
    """Run `unpickler.load()`, turning any failure but a refused global into a one-line error."""
    try:
        return unpickler.load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - malformed input can fail in many ways
        detail = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise DalleError(f"{unpickler.label} is not a readable torch checkpoint ({detail})") from None


# -- the two torch.save layouts --


def _nbytes(ref: _StorageRef) -> int:
    return ref.numel * torch.empty((), dtype=ref.dtype).element_size()


def _check_nbytes(found: int, ref: _StorageRef, label: str) -> None:
    # Checked before reading, so a forged element count cannot make us allocate gigabytes.
    if found != _nbytes(ref):
        raise DalleError(f"{label}: storage {ref.key} has {found} bytes, expected {_nbytes(ref)}")


def _flat_storage(raw: bytes, ref: _StorageRef, byteorder: str, label: str) -> torch.Tensor:
    """One storage as a 1-D tensor of its dtype, in native byte order."""
    _check_nbytes(len(raw), ref, label)
    itemsize = torch.empty((), dtype=ref.dtype).element_size()
    if ref.numel == 0:
        return torch.empty(0, dtype=ref.dtype)
    # A bytearray is writable memory we own, so frombuffer neither warns nor aliases the file.
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    if byteorder != sys.byteorder and itemsize > 1:
        data = data.view(-1, itemsize).flip(1).contiguous().view(-1)
    return data.view(ref.dtype)


# A zip member's declared size is checked before it is inflated: the pickle of a checkpoint is a
# few kilobytes, and torch.save stores tensors uncompressed, so a member inflating to more than a
# hundred times its compressed size (plus a megabyte) is a zip bomb, not a checkpoint.
MAX_PICKLE_BYTES = 64 * 2**20
MAX_INFLATION = 100


def _check_member(info: zipfile.ZipInfo, label: str, limit: int | None = None) -> None:
    if (limit is not None and info.file_size > limit) \
            or info.file_size > MAX_INFLATION * info.compress_size + 2**20:
        raise DalleError(f"{label}: {info.filename} would inflate {info.compress_size:,} bytes to "
                         f"{info.file_size:,}; refused as a zip bomb")


def _read_zip(path: Path, label: str) -> tuple[Any, dict[str, torch.Tensor]]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise DalleError(f"{label} is a zip archive but not a torch.save checkpoint (no single <prefix>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"  # torch's default for files written before the byteorder record
        if prefix + "byteorder" in names:
            _check_member(archive.getinfo(prefix + "byteorder"), label, 16)
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise DalleError(f"{label} has an unknown byteorder record {byteorder!r}")
        _check_member(archive.getinfo(pickles[0]), label, MAX_PICKLE_BYTES)
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), label)
        root = _unpickle(unpickler)
        storages = {}
        for key, ref in unpickler.storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise DalleError(f"{label} lacks the storage record {member}")
            _check_nbytes(archive.getinfo(member).file_size, ref, label)
            _check_member(archive.getinfo(member), label)
            storages[key] = _flat_storage(archive.read(member), ref, byteorder, label)
    return root, storages


def _read_legacy(path: Path, label: str) -> tuple[Any, dict[str, torch.Tensor]]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        # The C unpickler reads exactly up to each STOP opcode, so pickles can be read one by one.
        magic = _unpickle(_RestrictedUnpickler(f, label))
        if type(magic) is not int or magic != LEGACY_MAGIC_NUMBER:
            raise DalleError(f"{label} is not a torch checkpoint (neither a zip archive nor the legacy format)")
        version = _unpickle(_RestrictedUnpickler(f, label))
        if version != LEGACY_PROTOCOL_VERSION:
            raise DalleError(f"{label} has unsupported legacy protocol version {version!r}")
        _unpickle(_RestrictedUnpickler(f, label))  # sys info: type sizes / endianness of the writer
        unpickler = _RestrictedUnpickler(f, label)
        root = _unpickle(unpickler)
        keys = _unpickle(_RestrictedUnpickler(f, label))
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise DalleError(f"{label} has a malformed storage key list")
        storages = {}
        for key in keys:
            ref = unpickler.storages.get(key)
            if ref is None:  # the element size is only known from the object's persistent ids
                raise DalleError(f"{label} stores storage {key} that no tensor references")
            header = f.read(8)
            if len(header) != 8:
                raise DalleError(f"{label} is truncated before storage {key}")
            # torch writes the count and the data little-endian whatever the machine.
            (count,) = struct.unpack("<q", header)
            if count != ref.numel:
                raise DalleError(f"{label}: storage {key} holds {count} elements, expected {ref.numel}")
            if _nbytes(ref) > size - f.tell():
                raise DalleError(f"{label} is truncated inside storage {key}")
            storages[key] = _flat_storage(f.read(_nbytes(ref)), ref, "little", label)
    missing = sorted(set(unpickler.storages) - set(storages))
    if missing:
        raise DalleError(f"{label} lacks the data of storage {missing[0]}")
    return root, storages


def _read_checkpoint(path: str | Path) -> tuple[Any, dict[str, torch.Tensor], str]:
    """Unpickle a torch.save file safely: (root object with stand-ins, storages by key, label)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no OpenAI dVAE checkpoint at {path}")
    label = str(path)
    if zipfile.is_zipfile(path):
        root, storages = _read_zip(path, label)
    else:
        root, storages = _read_legacy(path, label)
    return root, storages, label


# -- records -> tensors, config and model --


def _materialise(ref: _TensorRef, storages: dict[str, torch.Tensor], name: str, label: str) -> torch.Tensor:
    flat = storages[ref.storage.key]
    if len(ref.size) != len(ref.stride) or any(s < 0 for s in ref.size + ref.stride) or ref.offset < 0:
        raise DalleError(f"{label}: tensor {name} has invalid size/stride {ref.size}/{ref.stride}")
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if all(ref.size) and last >= flat.numel():
        raise DalleError(f"{label}: tensor {name} reaches past the end of its storage")
    return torch.as_strided(flat, ref.size, ref.stride, ref.offset).clone(memory_format=torch.contiguous_format)


def _walk(root: _ModuleRecord, label: str) -> tuple[dict[str, _TensorRef], dict[str, str]]:
    """Flatten a record tree: ({dotted tensor name: ref}, {dotted module path: class name})."""
    tensors: dict[str, _TensorRef] = {}
    modules: dict[str, str] = {}
    stack: list[tuple[str, _ModuleRecord]] = [("", root)]
    seen: set[int] = set()
    while stack:
        prefix, record = stack.pop()
        if id(record) in seen:  # a crafted pickle may share or loop modules
            raise DalleError(f"{label}: module {prefix.rstrip('.') or '<root>'} appears twice in the tree")
        seen.add(id(record))
        if record.state is None:
            raise DalleError(f"{label}: pickled {record.type_name} carries no state")
        for field in ("_parameters", "_buffers"):
            for name, value in (record.state.get(field) or {}).items():
                if value is None:
                    continue
                if not isinstance(value, _TensorRef):
                    raise DalleError(f"{label}: {prefix}{name} is a {type(value).__name__}, not a tensor")
                tensors[prefix + name] = value
        for name, child in (record.state.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, _ModuleRecord):
                raise DalleError(f"{label}: submodule {prefix}{name} is a {type(child).__name__}")
            modules[prefix + name] = child.type_name
            stack.append((f"{prefix}{name}.", child))
    return tensors, modules


def _int_field(record: _ModuleRecord, field: str, label: str) -> int:
    value = (record.state or {}).get(field)
    if type(value) is not int:
        raise DalleError(f"{label}: {record.type_name} has no integer field {field} (got {value!r})")
    return value


def _group_count(record: _ModuleRecord, modules: dict[str, str], label: str) -> int:
    """`group_count` is a class attribute in `dall_e` (not pickled); count the groups instead."""
    count = sum(1 for path in modules if path.startswith("blocks.group_") and path.count(".") == 1)
    stored = (record.state or {}).get("group_count")
    if stored is not None and stored != count:
        raise DalleError(f"{label}: group_count {stored!r} disagrees with the {count} groups in the module tree")
    return count


def _root(path: str | Path, expected: str) -> tuple[_ModuleRecord, dict[str, torch.Tensor], str]:
    root, storages, label = _read_checkpoint(path)
    roles = {ENCODER_CLASS: "encoder", DECODER_CLASS: "decoder"}
    found = root.type_name if isinstance(root, _ModuleRecord) else None
    if found in roles and found != expected:
        raise DalleError(f"{label} holds an OpenAI dVAE {roles[found]} but was passed as the "
                         f"{roles[expected]} (are the two paths swapped?)")
    if not isinstance(root, _ModuleRecord) or root.type_name != expected:
        found = root.type_name if isinstance(root, _ModuleRecord) else type(root).__name__
        raise DalleError(f"{label} holds a {found}, not a pickled {expected} module")
    return root, storages, label


# OpenAI class -> our class, to check the two module trees line up name for name.
_OUR_CLASS = {"Conv2d": "Conv2d", "EncoderBlock": "BottleneckBlock", "DecoderBlock": "BottleneckBlock",
              "Sequential": "Sequential", "ReLU": "ReLU", "MaxPool2d": "MaxPool2d",
              "Upsample": "Upsample", "Identity": "Identity"}


def _check_tree(ours: torch.nn.Module, theirs: dict[str, str], part: str, label: str) -> None:
    expected = {name: type(m).__name__ for name, m in ours.named_modules() if name}
    found = {name: _OUR_CLASS.get(cls.rsplit(".", 1)[1], cls) for name, cls in theirs.items()}
    for name in sorted(expected.keys() | found.keys()):
        if expected.get(name) != found.get(name):
            raise DalleError(f"{label}: the {part} module tree differs from ours at {name} "
                             f"(file: {found.get(name)}, ours: {expected.get(name)})")


def _renamed(name: str) -> str:
    """`...conv_1.w` -> `...conv_1.weight` (OpenAI's Conv2d names its parameters w and b)."""
    head, _, last = name.rpartition(".")
    last = {"w": "weight", "b": "bias"}.get(last, last)
    return f"{head}.{last}" if head else last


def load_openai_vae(encoder_path: str | Path, decoder_path: str | Path) -> DiscreteVAE:
    """Build a `DiscreteVAE` holding OpenAI's released dVAE weights (`encoder.pkl`, `decoder.pkl`).

    The files are read without executing pickled code; any global outside the allowlist raises
    `UnsafePickleError`. The model is returned on the CPU in float32 and eval mode.
    """
    enc, enc_storages, enc_label = _root(encoder_path, ENCODER_CLASS)
    dec, dec_storages, dec_label = _root(decoder_path, DECODER_CLASS)
    enc_tensors, enc_modules = _walk(enc, enc_label)
    dec_tensors, dec_modules = _walk(dec, dec_label)

    e = {k: _int_field(enc, k, enc_label) for k in ("n_hid", "n_blk_per_group", "vocab_size", "input_channels")}
    d = {k: _int_field(dec, k, dec_label)
         for k in ("n_init", "n_hid", "n_blk_per_group", "vocab_size", "output_channels")}
    e["group_count"] = _group_count(enc, enc_modules, enc_label)
    d["group_count"] = _group_count(dec, dec_modules, dec_label)
    d["input_channels"] = d.pop("output_channels")
    for key in ("vocab_size", "n_hid", "n_blk_per_group", "group_count", "input_channels"):
        if e[key] != d[key]:
            raise DalleError(f"encoder {enc_label} and decoder {dec_label} disagree on {key} "
                             f"({e[key]} vs {d[key]}): they are not one dVAE")
    config = VAEConfig(image_size=256, channels=e["input_channels"], downsample=2 ** (e["group_count"] - 1),
                        codebook_size=e["vocab_size"], hidden=e["n_hid"], blocks_per_group=e["n_blk_per_group"],
                        decoder_init=d["n_init"])
    model = DiscreteVAE(config)
    _check_tree(model.encoder, enc_modules, "encoder", enc_label)
    _check_tree(model.decoder, dec_modules, "decoder", dec_label)

    refs = {f"encoder.{_renamed(k)}": (v, enc_storages, enc_label) for k, v in enc_tensors.items()}
    refs |= {f"decoder.{_renamed(k)}": (v, dec_storages, dec_label) for k, v in dec_tensors.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(refs))
    unexpected = sorted(set(refs) - set(expected))
    mismatched = sorted(k for k in expected if k in refs and refs[k][0].size != tuple(expected[k].shape))
    if missing or unexpected or mismatched:
        first = (missing or unexpected or mismatched)[0]
        raise DalleError(f"OpenAI dVAE weights do not fit {config}: {len(missing)} missing, {len(unexpected)} "
                         f"unexpected, {len(mismatched)} mis-shaped tensors (first: {first})")
    state = {}
    for key, (ref, storages, label) in refs.items():
        if not ref.storage.dtype.is_floating_point:
            raise DalleError(f"{label}: tensor {key} has dtype {ref.storage.dtype}, expected floating point")
        state[key] = _materialise(ref, storages, key, label).float()
    model.load_state_dict(state, strict=True)
    return model.eval()


def import_openai_vae(encoder_path: str | Path, decoder_path: str | Path, out_dir: str | Path) -> Path:
    """Convert OpenAI's `encoder.pkl` / `decoder.pkl` into a `DiscreteVAE.from_pretrained` directory."""
    return load_openai_vae(encoder_path, decoder_path).save_pretrained(out_dir)
