"""Hostile weights files, written here byte by byte (pickle opcodes, zip fields, safetensors headers;
torch is never needed). Each must raise WeightsFileError naming the file and the reason, run no code,
and stay within memory; legitimate files, including odd but valid ones, must still load exactly."""

import copyreg
import json
import os
import pathlib
import pickle
import random
import re
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

from hrnet_tfx.models import WeightImportError, WeightsFileError, read_state_dict, torch_pickle

from conftest import FIXTURES, REPO

TIMM_TINY = FIXTURES / "timm_tiny"
FLOAT4 = np.arange(4, dtype="<f4")  # the 4-float storage most attacks point at


# ---------------------------------------------------------------------------------------------------
# Pickle opcodes by hand (protocol 2, as torch.save writes)


def s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def i(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = pickle.encode_long(n)
    return b"\x8a" + bytes([len(raw)]) + raw


def t(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def g(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def call(func: bytes, *args: bytes) -> bytes:
    return func + t(*args) + b"R"


def lst(*items: bytes) -> bytes:
    return b"]" + (b"(" + b"".join(items) + b"e" if items else b"")


def dct(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}" + (b"(" + b"".join(k + v for k, v in pairs) + b"u" if pairs else b"")


def odict(*pairs: tuple[bytes, bytes]) -> bytes:
    """An OrderedDict the way pickle writes one: OrderedDict() then SETITEMS."""
    return call(g("collections", "OrderedDict")) + (b"(" + b"".join(k + v for k, v in pairs) + b"u" if pairs else b"")


def pkl(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


NONE, TRUE, FALSE = b"N", b"\x88", b"\x89"


def zip_pid(key="0", numel=4, stype="FloatStorage") -> bytes:
    return t(s("storage"), g("torch", stype), s(key), s("cpu"), i(numel)) + b"Q"


def legacy_pid(key="0", numel=4, stype="FloatStorage", view=None) -> bytes:
    view_bytes = NONE if view is None else t(s(view[0]), i(view[1]), i(view[2]))
    return t(s("storage"), g("torch", stype), s(key), s("cpu"), i(numel), view_bytes) + b"Q"


def contiguous(size) -> tuple:
    stride, acc = [], 1
    for n in reversed(size):
        stride.insert(0, acc)
        acc *= n
    return tuple(stride)


def tensor(pid: bytes, size, stride=None, offset=0) -> bytes:
    stride = contiguous(size) if stride is None else stride
    return call(g("torch._utils", "_rebuild_tensor_v2"), pid, i(offset), t(*map(i, size)), t(*map(i, stride)),
                FALSE, call(g("collections", "OrderedDict")))


# ---------------------------------------------------------------------------------------------------
# Files


MAGIC = pkl(i(0x1950A86A20F9469CFC6C))
PROTOCOL = pkl(b"M" + struct.pack("<H", 1001))
SYS_INFO = pkl(dct((s("protocol_version"), i(1001)), (s("little_endian"), TRUE),
                   (s("type_sizes"), dct((s("short"), i(2)), (s("int"), i(4)), (s("long"), i(4))))))


def write_zip(path, data_pkl: bytes, storages: dict, prefix="archive") -> pathlib.Path:
    """A zip-format torch.save file (members stored, as torch writes them)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}/data.pkl", data_pkl)
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, raw in storages.items():
            zf.writestr(f"{prefix}/data/{key}", bytes(raw))
    return path


def legacy_bytes(data_pkl: bytes, storages: list, magic=MAGIC, protocol=PROTOCOL, sys_info=SYS_INFO,
                 keys: bytes | None = None) -> bytes:
    """A legacy-format torch.save file: five pickles, then each storage as int64 numel + raw bytes.
    ``storages``: (key, numel written before the bytes, raw bytes)."""
    keys = pkl(lst(*(s(k) for k, _, _ in storages))) if keys is None else keys
    blobs = b"".join(struct.pack("<q", numel) + bytes(raw) for _, numel, raw in storages)
    return magic + protocol + sys_info + data_pkl + keys + blobs


def write_legacy(path, data_pkl: bytes, storages: list, **kw) -> pathlib.Path:
    path.write_bytes(legacy_bytes(data_pkl, storages, **kw))
    return path


def state_file(path, fmt: str, arrays: dict, wrap=lambda body: body) -> pathlib.Path:
    """A valid file of ``fmt`` ("zip", "legacy" or "safetensors") holding ``arrays`` (float32),
    one storage per tensor; ``wrap`` may put the state_dict pickle inside another object."""
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v, "<f4") for k, v in arrays.items()}, str(path))
        return path
    pid = zip_pid if fmt == "zip" else legacy_pid
    entries = [(s(k), tensor(pid(str(n), a.size), a.shape)) for n, (k, a) in enumerate(arrays.items())]
    data = pkl(wrap(odict(*entries)))
    raw = {str(n): np.ascontiguousarray(a, "<f4").tobytes() for n, a in enumerate(arrays.values())}
    if fmt == "zip":
        return write_zip(path, data, raw)
    return write_legacy(path, data, [(k, len(b) // 4, b) for k, b in raw.items()])


SMALL = {"conv1.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7,
         "bn1.running_var": np.array([1.5, 2.5], np.float32), "fc.bias": np.array([-3.0], np.float32)}
FORMATS = ["zip", "legacy"]


def raises_file_error(path, match: str) -> WeightsFileError:
    """Reads ``path`` expecting a WeightsFileError that names it and matches ``match``."""
    with pytest.raises(WeightsFileError, match=match) as err:
        read_state_dict(path)
    assert err.value.path == str(path) and str(err.value).startswith(f"{path}: ")
    assert "\n" not in str(err.value)
    return err.value


def one_tensor_file(tmp_path, fmt, body: bytes, raw=FLOAT4, numel=4, name="t.pth") -> pathlib.Path:
    """A file whose data pickle is ``body`` (a state_dict built with the given pid function) over one
    storage '0' of ``raw`` bytes declaring ``numel`` elements."""
    if fmt == "zip":
        return write_zip(tmp_path / name, pkl(body), {"0": np.asarray(raw).tobytes()})
    return write_legacy(tmp_path / name, pkl(body), [("0", numel, np.asarray(raw).tobytes())])


# ---------------------------------------------------------------------------------------------------
# The writers above make files the reader takes as torch's own


@pytest.mark.parametrize("fmt", FORMATS + ["safetensors"])
def test_hand_written_files_load_exactly(tmp_path, fmt):
    state = read_state_dict(state_file(tmp_path / f"small.{fmt}", fmt, SMALL))
    assert list(state) == (sorted(SMALL) if fmt == "safetensors" else list(SMALL))  # save_file sorts
    for key, value in SMALL.items():
        np.testing.assert_array_equal(state[key], value)
        assert state[key].dtype == np.float32 and state[key].flags.writeable


def test_fixture_formats_agree():
    """The real torch.save files (both formats) give exactly the safetensors fixture's arrays."""
    reference = read_state_dict(TIMM_TINY / "state_dict.safetensors")
    official, legacy = read_state_dict(TIMM_TINY / "official.pth"), read_state_dict(TIMM_TINY / "legacy.pth")
    assert list(official) == list(legacy) and sorted(legacy) == sorted(reference)
    for state in (official, legacy):
        assert all(np.array_equal(state[k], reference[k]) and state[k].dtype == reference[k].dtype for k in reference)


# ---------------------------------------------------------------------------------------------------
# Code execution: no pickle of either format may call anything but the tensor rebuild functions


@pytest.fixture()
def sentinel(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a payload ran"


@pytest.fixture()
def os_system_extension():
    """Registers os.system as copyreg extension code 241, as a malicious environment could."""
    copyreg.add_extension("os", "system", 241)
    yield 241
    copyreg.remove_extension("os", "system", 241)


def payloads(sentinel) -> dict[str, bytes]:
    cmd = f"touch {sentinel}"
    code = f"open({str(sentinel)!r}, 'w').close()"
    return {
        "GLOBAL os.system": call(g("os", "system"), s(cmd)),
        "GLOBAL posix.system": call(g("posix", "system"), s(cmd)),
        "builtins.eval": call(g("builtins", "eval"), s(code)),
        "builtins.exec": call(g("builtins", "exec"), s(code)),
        "__builtin__.eval": call(g("__builtin__", "eval"), s(code)),
        "subprocess.check_call": call(g("subprocess", "check_call"), lst(s("touch"), s(str(sentinel)))),
        "STACK_GLOBAL os.system": s("os") + s("system") + b"\x93" + t(s(cmd)) + b"R",
        "INST os.system": b"(" + s(cmd) + b"ios\nsystem\n",
        "OBJ os.system": b"(" + g("os", "system") + s(cmd) + b"o",
        "NEWOBJ subprocess.Popen": g("subprocess", "Popen") + t(lst(s("touch"), s(str(sentinel)))) + b"\x81",
        "NEWOBJ_EX subprocess.Popen": g("subprocess", "Popen") + t(lst(s("touch"), s(str(sentinel)))) + dct() + b"\x92",
        "EXT1 os.system": b"\x82\xf1" + t(s(cmd)) + b"R",
        "EXT2 os.system": b"\x83\xf1\x00" + t(s(cmd)) + b"R",
        "EXT4 os.system": b"\x84\xf1\x00\x00\x00" + t(s(cmd)) + b"R",
        "getattr on an allowed global": call(g("builtins", "getattr"), g("collections", "OrderedDict"), s("fromkeys")),
        "REDUCE on a storage type": call(g("torch", "FloatStorage"), i(4)),
        "REDUCE on a non-callable": s("os.system") + t(s(cmd)) + b"R",
        "BUILD patching a rebuild function":
            g("torch._utils", "_rebuild_tensor") + t(NONE, dct((s("pwned"), TRUE))) + b"b",
        "BUILD setting function defaults": g("torch._utils", "_rebuild_tensor_v2")
        + t(NONE, dct((s("__defaults__"), t(TRUE)))) + b"b",
        "BUILD on a list": lst() + dct((s("pwned"), TRUE)) + b"b",
        "APPENDS on an allowed global": g("collections", "OrderedDict") + b"(" + s("x") + b"e",
        "SETITEM on a list": lst(s("a")) + i(0) + s("b") + b"s",
        "persistent id built by os.system": call(g("os", "system"), s(cmd)) + b"Q",
        "BYTEARRAY8": b"\x96" + struct.pack("<Q", 3) + b"abc",
        "NEXT_BUFFER": b"\x97",
    }


PAYLOAD_NAMES = list(payloads(pathlib.Path("x")))


def _id(name: str) -> str:
    return name.replace(" ", "_")


@pytest.mark.parametrize("name", PAYLOAD_NAMES, ids=_id)
@pytest.mark.parametrize("fmt", FORMATS)
def test_code_in_the_data_pickle_never_runs(tmp_path, sentinel, os_system_extension, fmt, name):
    body = odict((s("conv1.weight"), payloads(sentinel)[name]))
    path = one_tensor_file(tmp_path, fmt, body)
    raises_file_error(path, "refusing|not allowed|malformed pickle")
    assert not any(getattr(f, "pwned", False) for f in vars(torch_pickle).values())
    assert torch_pickle._rebuild_tensor_v2.__defaults__ == (None,)


@pytest.mark.parametrize("slot", ["magic", "protocol", "sys_info", "data", "keys"])
@pytest.mark.parametrize("name", ["GLOBAL os.system", "builtins.eval", "INST os.system", "EXT1 os.system"], ids=_id)
def test_code_in_any_legacy_pickle_never_runs(tmp_path, sentinel, os_system_extension, slot, name):
    """The legacy format is five pickles; each one goes through the allow-list, not only the data."""
    payload = pkl(payloads(sentinel)[name])
    parts = {"magic": MAGIC, "protocol": PROTOCOL, "sys_info": SYS_INFO,
             "data": pkl(odict((s("a"), tensor(legacy_pid(), (4,))))), "keys": pkl(lst(s("0")))}
    parts[slot] = payload
    path = tmp_path / "evil.pth"
    path.write_bytes(b"".join(parts.values()) + struct.pack("<q", 4) + FLOAT4.tobytes())
    raises_file_error(path, "refusing|not allowed")


@pytest.mark.parametrize(
    "pid",
    [
        i(3) + b"Q",
        s("storage") + b"Q",
        t(s("storage")) + b"Q",
        t(s("module"), g("torch", "FloatStorage"), s("0"), s("cpu"), i(4)) + b"Q",
        t(s("storage"), s("FloatStorage"), s("0"), s("cpu"), i(4)) + b"Q",
        t(s("storage"), g("torch", "FloatStorage"), i(0), s("cpu"), i(4)) + b"Q",
        t(s("storage"), g("torch", "FloatStorage"), s(""), s("cpu"), i(4)) + b"Q",
        t(s("storage"), g("torch", "FloatStorage"), s("0"), i(0), i(4)) + b"Q",
        t(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"), i(-4)) + b"Q",
        t(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"), s("4")) + b"Q",
        t(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"), i(2**63)) + b"Q",
        t(s("storage"), g("torch", "ComplexFloatStorage"), s("0"), s("cpu"), i(4)) + b"Q",
        t(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"), i(4), i(0), i(0)) + b"Q",
        b"P0\n",
        lst() + b"Q",
    ],
    ids=lambda b: repr(b[:40]),
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_persistent_ids_of_the_wrong_shape(tmp_path, fmt, pid):
    path = one_tensor_file(tmp_path, fmt, odict((s("a"), tensor(pid, (4,)))))
    raises_file_error(path, "persistent id|storage|refusing")


@pytest.mark.parametrize("view", [t(s("v")), t(s("v"), i(-1), i(2)), t(s("v"), i(0), s("2")), t(i(1), i(0), i(2)),
                                  t(s("v"), i(3), i(2)), t(s("0"), i(0), i(2)), s("v")])
def test_legacy_views_of_the_wrong_shape_or_out_of_bounds(tmp_path, view):
    pid = t(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"), i(4), view) + b"Q"
    path = one_tensor_file(tmp_path, "legacy", odict((s("a"), tensor(pid, (2,)))))
    raises_file_error(path, "view")


# ---------------------------------------------------------------------------------------------------
# Tensor views against their storage (torch's set_ rule)


BAD_VIEWS = {
    "4 floats read as 65536": dict(size=(65536,)),
    "offset past the end": dict(size=(1,), offset=4),
    "stride past the end": dict(size=(2, 2), stride=(3, 1)),
    "huge stride": dict(size=(2,), stride=(2**62,)),
    "huge stride, 2d": dict(size=(2, 2), stride=(1, 2**40)),
    "offset plus size": dict(size=(3,), offset=2),
    "negative size": dict(size=(-1,)),
    "negative stride": dict(size=(2,), stride=(-1,), offset=3),
    "negative offset": dict(size=(1,), offset=-1),
    "size over int64": dict(size=(2**63,), stride=(0,)),
    "stride over int64": dict(size=(2,), stride=(2**64,)),
    "offset over int64": dict(size=(1,), offset=2**63),
    "size times itemsize over int64": dict(size=(0, 2**62)),
}


@pytest.mark.parametrize("case", list(BAD_VIEWS), ids=_id)
@pytest.mark.parametrize("fmt", FORMATS)
def test_views_outside_their_storage(tmp_path, fmt, case):
    kw = BAD_VIEWS[case]
    pid = zip_pid() if fmt == "zip" else legacy_pid()
    size = kw["size"]
    body = odict((s("conv1.weight"), tensor(pid, size, kw.get("stride", (1,) * len(size)), kw.get("offset", 0))))
    path = one_tensor_file(tmp_path, fmt, body)
    err = raises_file_error(path, "out of bounds|not an integer|too large")
    assert "conv1.weight" in str(err)


@pytest.mark.parametrize(
    "size, stride",
    [((2,), (1, 1)), ("x", (1,)), ((2.0,), (1,)), ((True,), (1,)), ((1,) * 33, (1,) * 33)],
    ids=["lengths_differ", "size_not_a_tuple", "float_size", "bool_size", "33_dims"],
)
def test_malformed_sizes(tmp_path, size, stride):
    size_bytes = s(size) if isinstance(size, str) else t(*(
        (b"G" + struct.pack(">d", n)) if type(n) is float else (TRUE if n is True else i(n)) for n in size))
    body = odict((s("a"), call(g("torch._utils", "_rebuild_tensor_v2"), zip_pid(), i(0), size_bytes,
                               t(*map(i, stride)), FALSE, call(g("collections", "OrderedDict")))))
    raises_file_error(one_tensor_file(tmp_path, "zip", body), "size|stride")


@pytest.mark.parametrize("fmt", FORMATS)
def test_odd_but_valid_views_load_like_torch(tmp_path, fmt):
    """Views torch accepts: unused huge strides of size-1 dims, empty tensors anywhere, scalars,
    transposes, small zero strides, and legacy views into a larger storage."""
    pid = zip_pid() if fmt == "zip" else legacy_pid()
    body = odict(
        (s("unused_stride"), tensor(pid, (1, 2), (2**62, 1), 1)),
        (s("empty"), tensor(pid, (0, 5), (5, 1), 100)),
        (s("scalar"), tensor(pid, (), (), 3)),
        (s("transposed"), tensor(pid, (2, 2), (1, 2))),
        (s("expanded"), tensor(pid, (2,), (0,), 2)),
    )
    state = read_state_dict(one_tensor_file(tmp_path, fmt, body))
    np.testing.assert_array_equal(state["unused_stride"], [[1, 2]])
    assert state["empty"].shape == (0, 5)
    assert state["scalar"].shape == () and state["scalar"] == 3
    np.testing.assert_array_equal(state["transposed"], [[0, 2], [1, 3]])
    np.testing.assert_array_equal(state["expanded"], [2, 2])
    if fmt == "legacy":
        view = odict((s("v"), tensor(legacy_pid(view=("v1", 1, 2)), (2,))))
        np.testing.assert_array_equal(read_state_dict(one_tensor_file(tmp_path, fmt, view, name="v.pth"))["v"], [1, 2])


def test_bfloat16_half_int_and_bool_storages(tmp_path):
    values = np.array([1.5, -2.0, 0.25], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    body = odict((s("bf16"), tensor(zip_pid("0", 3, "BFloat16Storage"), (3,))),
                 (s("half"), tensor(zip_pid("1", 3, "HalfStorage"), (3,))),
                 (s("long"), tensor(zip_pid("2", 2, "LongStorage"), (2,))),
                 (s("bool"), tensor(zip_pid("3", 3, "BoolStorage"), (3,))))
    path = write_zip(tmp_path / "types.pth", pkl(body), {"0": bf16, "1": values.astype("<f2").tobytes(),
                                                         "2": np.array([7, -1], "<i8").tobytes(), "3": b"\x00\x01\x07"})
    state = read_state_dict(path)
    np.testing.assert_array_equal(state["bf16"], values)
    np.testing.assert_array_equal(state["half"], values.astype(np.float16))
    np.testing.assert_array_equal(state["long"], [7, -1])
    np.testing.assert_array_equal(state["bool"], [False, True, True])


# ---------------------------------------------------------------------------------------------------
# Storages against the bytes present


def test_one_storage_declared_with_two_dtypes_or_sizes(tmp_path):
    for other in (zip_pid("0", 4, "LongStorage"), zip_pid("0", 2)):
        body = odict((s("a"), tensor(zip_pid(), (4,))), (s("b"), tensor(other, (2,))))
        raises_file_error(one_tensor_file(tmp_path, "zip", body), "declared twice differently")
    view = legacy_pid("0", 4, "IntStorage", view=("v", 0, 2))
    body = odict((s("a"), tensor(legacy_pid(), (4,))), (s("b"), tensor(view, (2,))))
    raises_file_error(one_tensor_file(tmp_path, "legacy", body), "declared twice differently")


def test_zip_members_must_match_their_declared_storage(tmp_path):
    body = odict((s("a"), tensor(zip_pid("0", 8), (4,))))
    raises_file_error(write_zip(tmp_path / "short.pth", pkl(body), {"0": FLOAT4.tobytes()}), r"needs 32 bytes.* has 16")
    body = odict((s("a"), tensor(zip_pid("1", 4), (4,))))
    raises_file_error(write_zip(tmp_path / "missing.pth", pkl(body), {"0": FLOAT4.tobytes()}), "no zip member")
    with zipfile.ZipFile(tmp_path / "twice.pth", "w") as zf:
        zf.writestr("archive/data.pkl", pkl(odict((s("a"), tensor(zip_pid(), (4,))))))
        zf.writestr("archive/data/0", FLOAT4.tobytes())
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("archive/data/0", FLOAT4.tobytes())
    raises_file_error(tmp_path / "twice.pth", "repeats member")
    write_zip(tmp_path / "two.pth", pkl(odict()), {})
    with zipfile.ZipFile(tmp_path / "two.pth", "a") as zf:
        zf.writestr("other/data.pkl", pkl(odict()))
    raises_file_error(tmp_path / "two.pth", "2 data.pkl")
    with zipfile.ZipFile(tmp_path / "big.pth", "w") as zf:
        zf.writestr("archive/data.pkl", pkl(odict()))
        zf.writestr("archive/byteorder", "big")
    raises_file_error(tmp_path / "big.pth", "little-endian")


def test_legacy_storage_sizes_must_match_the_bytes_present(tmp_path):
    body = pkl(odict((s("a"), tensor(legacy_pid(), (4,)))))
    raw = FLOAT4.tobytes()
    raises_file_error(write_legacy(tmp_path / "a.pth", body, [("0", 5, raw)]), "says 5 elements")
    raises_file_error(write_legacy(tmp_path / "b.pth", body, [("0", 4, raw[:12])]), "truncated")
    raises_file_error(write_legacy(tmp_path / "c.pth", body, [("0", 4, raw + b"junk")]), "4 unexpected bytes")
    raises_file_error(write_legacy(tmp_path / "d.pth", body, [("0", 2**60, raw)]), "says 1152921504606846976")
    for keys, match in [(pkl(lst()), "missing"), (pkl(lst(s("0"), s("1"))), "unknown"),
                        (pkl(lst(s("0"), s("0"))), "distinct"), (pkl(lst(i(0))), "distinct"), (pkl(dct()), "list")]:
        raises_file_error(write_legacy(tmp_path / "k.pth", body, [("0", 4, raw)], keys=keys), match)
    huge = pkl(odict((s("a"), tensor(legacy_pid("0", 2**60), (4,)))))
    raises_file_error(write_legacy(tmp_path / "e.pth", huge, [("0", 4, raw)]), "truncated")
    for kw, match in [(dict(magic=pkl(i(1234))), "magic"), (dict(protocol=pkl(i(1000))), "protocol"),
                      (dict(sys_info=pkl(dct((s("little_endian"), FALSE)))), "little-endian")]:
        raises_file_error(write_legacy(tmp_path / "h.pth", body, [("0", 4, raw)], **kw), match)


# ---------------------------------------------------------------------------------------------------
# Structure: keys, nesting, cycles, wrappers


def test_duplicate_keys_are_refused(tmp_path):
    a = tensor(zip_pid(), (4,))
    for body in (odict((s("a"), a), (s("a"), a)), dct((s("a"), a), (s("a"), a)),
                 b"(" + s("a") + a + s("a") + a + b"d",
                 call(g("collections", "OrderedDict"), lst(t(s("a"), a), t(s("a"), a)))):
        raises_file_error(one_tensor_file(tmp_path, "zip", body), "duplicate key 'a'")
    entry = b'{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    header = b'{"a": ' + entry + b', "a": ' + entry + b"}"
    (tmp_path / "dup.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    raises_file_error(tmp_path / "dup.safetensors", "duplicate key")


def test_keys_and_values_must_make_a_state_dict(tmp_path):
    a = tensor(zip_pid(), (4,))
    cases = [
        (dct((i(1), a)), "keys must be strings"),
        (dct((s("a"), a), (i(-5), a)), "keys must be strings"),
        (dct((lst(), a)), "dict key .* of type list"),
        (dct((t(i(1)), a)), "dict key .* of type tuple"),
        (dct((b"G" + struct.pack(">d", 0.5), a)), "dict key .* of type float"),
        (dct((i(2**61 - 1), a)), "dict key .* of type int"),  # hash-collision keys
        (dct((s("a\nb"), s("x"))), r"not arrays: \['a\\nb'\]"),
        (dct((s("a"), s("os\nsystem") + s("x") + b"\x93")), r"refusing to load 'os\\nsystem'\.x"),
        (lst(a), "holds a list, not a state_dict"),
        (a, "holds a ndarray, not a state_dict"),
        (dct((s("a"), zip_pid())), r"a is storage '0'.*not a tensor"),
        (dct((s("a"), g("torch", "FloatStorage"))), "not a tensor"),
        (dct((s("a"), g("torch._utils", "_rebuild_tensor"))), "not a tensor"),
        (dct((s("a"), s("text"))), r"not arrays: \['a'\]"),
    ]
    for body, match in cases:
        raises_file_error(one_tensor_file(tmp_path, "zip", body), match)


DEPTH = 20_000  # far past Python's recursion limit
DEEP = {
    "lists": b"]" * DEPTH + b"a" * (DEPTH - 1),
    "dicts": (b"}" + s("k")) * DEPTH + b"}" + b"s" * DEPTH,
    "tuples": b"(" * DEPTH + b")" + b"t" * DEPTH,
    "1-tuples": b")" + b"\x85" * DEPTH,
}


@pytest.mark.parametrize("kind", list(DEEP))
def test_deep_nesting_is_a_clean_error(tmp_path, kind):
    err = raises_file_error(one_tensor_file(tmp_path, "zip", dct((s("a"), DEEP[kind]))), "nest deeper than 32")
    assert len(str(err)) < 600


def test_cycles_are_refused(tmp_path):
    looped = lst() + b"q\x01" + b"h\x01" + b"a"  # a list appended to itself
    raises_file_error(one_tensor_file(tmp_path, "zip", dct((s("a"), looped))), "contains itself")
    looped = dct() + b"q\x01" + s("self") + b"h\x01" + b"s"
    raises_file_error(one_tensor_file(tmp_path, "zip", looped), "contains itself")


def test_shared_containers_are_read_once(tmp_path):
    """Lists holding the previous list twice, 20 levels: 2**20 paths but 21 lists, read (and shared)
    once each."""
    body = lst(tensor(zip_pid(), (4,)))
    for _ in range(20):  # depth stays under the limit, paths explode
        body = body + b"q\x01" + b"0" + lst(b"h\x01", b"h\x01")
    state = torch_pickle.load_torch_file(str(one_tensor_file(tmp_path, "zip", dct((s("deep"), body)))))
    leaf = state["deep"]
    while isinstance(leaf, list) and len(leaf) == 2:
        assert leaf[0] is leaf[1]
        leaf = leaf[0]
    np.testing.assert_array_equal(leaf[0], FLOAT4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_wrappers_metadata_and_module_prefix(tmp_path, fmt):
    """An official training checkpoint: {"epoch", "state_dict": OrderedDict with _metadata and
    DataParallel's "module." keys, "optimizer" with int keys}; only the state_dict is returned."""

    def wrap(state_body):
        metadata = odict((s(""), dct((s("version"), i(1)))), (s("conv1"), dct((s("version"), i(1)))))
        with_metadata = state_body + dct((s("_metadata"), metadata)) + b"b"  # BUILD sets the attribute
        buffers = dct((i(0), dct((s("momentum_buffer"), tensor(pid(str(len(SMALL)), 1), (1,))))))
        groups = lst(dct((s("lr"), b"G" + struct.pack(">d", 0.05)), (s("params"), lst(i(0), i(1)))))
        optimizer = dct((s("state"), buffers), (s("param_groups"), groups))
        return dct((s("epoch"), i(3)), (s("state_dict"), with_metadata), (s("optimizer"), optimizer), (s("best"), NONE))

    pid = zip_pid if fmt == "zip" else legacy_pid
    prefixed = {f"module.{k}": v for k, v in SMALL.items()}
    path = state_file(tmp_path / "ckpt.pth", fmt, prefixed, wrap)
    if fmt == "zip":
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr(f"archive/data/{len(SMALL)}", np.float32(9).tobytes())
    else:
        data = path.read_bytes()
        keys = pkl(lst(*(s(str(n)) for n in range(len(SMALL) + 1))))
        old_keys = pkl(lst(*(s(str(n)) for n in range(len(SMALL)))))
        path.write_bytes(data.replace(old_keys, keys) + struct.pack("<q", 1) + np.float32(9).tobytes())
    state = read_state_dict(path)
    assert list(state) == list(SMALL)
    assert all(np.array_equal(state[k], SMALL[k]) for k in SMALL)
    full = torch_pickle.load_torch_file(str(path))
    assert full["epoch"] == 3 and full["best"] is None
    np.testing.assert_array_equal(full["optimizer"]["state"][0]["momentum_buffer"], [9])


def test_mappings_are_checked_too():
    with pytest.raises(WeightImportError, match="keys must be strings") as err:
        read_state_dict({1: np.zeros(2)})
    assert not isinstance(err.value, WeightsFileError)


# ---------------------------------------------------------------------------------------------------
# Memory: tiny files that ask for gigabytes, refused before allocating (run under RLIMIT_AS)


_ATTACK_RUNNER = r"""
import json, resource, sys
import tensorflow  # weights files are opened through tf.io.gfile: part of the baseline
from hrnet_tfx.models import weights

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith(field + ":"))

limit = status("VmSize") + (3 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for name, path in json.loads(sys.argv[1]):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident size
    base = status("VmRSS")
    try:
        state = weights.read_state_dict(path)
        distinct = {id(a): a.nbytes for a in state.values()}
        outcome = "ok %d tensors %d distinct bytes" % (len(state), sum(distinct.values()))
    except weights.WeightsFileError as e:
        outcome = "WeightsFileError: " + str(e)
    except BaseException as e:
        outcome = "%s: %s" % (type(e).__name__, str(e)[:300])
    state = None
    print(json.dumps({"name": name, "outcome": outcome, "peak_mib": (status("VmHWM") - base) / 2**20}), flush=True)
"""


def raw_zip(members) -> bytes:
    """A zip archive written field by field so that sizes and CRCs can lie. ``members``: (name, data,
    method, crc, compressed size, uncompressed size); sizes >= 4 GiB get zip64 extra fields."""
    body, central, offset = [], [], 0
    for name, data, method, crc, csize, usize in members:
        raw_name = name.encode()
        zip64 = max(csize, usize) >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, usize, csize) if zip64 else b""
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (csize, usize)
        version = 45 if zip64 else 20
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, version, 0, method, 0, 0x21, crc, *sizes,
                            len(raw_name), len(extra)) + raw_name + extra + data
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, version, version, 0, method, 0, 0x21, crc,
                                   *sizes, len(raw_name), len(extra), 0, 0, 0, 0, offset) + raw_name + extra)
        body.append(local)
        offset += len(local)
    directory = b"".join(central)
    count = min(len(members), 0xFFFF)
    return b"".join(body) + directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory),
                                                    offset, 0)


def deflated_zeros(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros, ~1 KB per MiB (independent flushed blocks)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * mib + compressor.flush()


def memory_attacks(tmp_path) -> dict[str, tuple[pathlib.Path, str]]:
    """name -> (file, what the outcome must contain)."""
    attacks = {}

    def add(name, path, expect):
        attacks[name] = (path, expect)

    # a big legitimate file: hrnet_w64's 128,059,944 float32 parameters (~512 MB), sparse on disk
    sizes = [1 << 19] * 244 + [128_059_944 - 244 * (1 << 19)]
    data = pkl(odict(*((s(f"p{n}"), tensor(legacy_pid(str(n), k), (k,))) for n, k in enumerate(sizes))))
    path = tmp_path / "hrnet_w64_sized.pth"
    with open(path, "wb") as f:
        f.write(legacy_bytes(data, [], keys=pkl(lst(*(s(str(n)) for n in range(len(sizes)))))))
        for k in sizes:
            f.write(struct.pack("<q", k))
            f.seek(4 * k, os.SEEK_CUR)
        f.truncate()
    add("hrnet_w64-sized legitimate file", path, f"ok {len(sizes)} tensors {4 * 128_059_944} distinct bytes")

    for fmt in FORMATS:  # 1 float read as 2**32 floats through a zero stride: 16 GiB from ~700 bytes
        pid = zip_pid("0", 1) if fmt == "zip" else legacy_pid("0", 1)
        body = odict((s("a"), tensor(pid, (2**32,), (0,))))
        add(f"stride0 {fmt}", one_tensor_file(tmp_path, fmt, body, raw=np.float32([1]), numel=1, name=f"s0.{fmt}.pth"),
            "WeightsFileError: .*tensors would take 17179869184 bytes")

    # zip bombs: 2 GiB of zeros from 2 MB, with its size declared honestly, understated, or huge
    numel = 1 << 29
    data_pkl = pkl(odict((s("a"), tensor(zip_pid("0", numel), (numel,)))))
    bomb = deflated_zeros(2048)
    for name, declared, expect in [
        ("zip bomb, size declared", 4 * numel, "storages declare 2147483648 bytes, more than the whole file"),
        ("zip bomb, size understated", 4 * numel - 4, "needs 2147483648 bytes, its zip member has 2147483644"),
        ("zip bomb, huge zip64 size", 1 << 40, "needs 2147483648 bytes, its zip member has 1099511627776"),
    ]:
        path = tmp_path / f"{name}.pth"
        path.write_bytes(raw_zip([("archive/data.pkl", data_pkl, 0, zlib.crc32(data_pkl), len(data_pkl), len(data_pkl)),
                                  ("archive/data/0", bomb, 8, 0, len(bomb), declared)]))
        add(name, path, "WeightsFileError: .*" + expect)
    small = pkl(odict((s("a"), tensor(zip_pid("0", 4), (4,)))))
    path = tmp_path / "lying bomb.pth"  # declares 16 bytes, inflates to 2 GiB: only 16 are inflated
    path.write_bytes(raw_zip([("archive/data.pkl", small, 0, zlib.crc32(small), len(small), len(small)),
                              ("archive/data/0", bomb, 8, zlib.crc32(bytes(16)), len(bomb), 16)]))
    add("zip bomb, declared 16 bytes", path, "ok 1 tensors 16 distinct bytes")

    # one 64 KiB storage read by 65536 keys (4 GiB if copied per key), from a 1 MB file
    keys = 65536
    head = odict() + b"("
    first = s("k0") + tensor(zip_pid("0", 16384), (16384,)) + b"q\x05"
    same_object = pkl(head + first + b"".join(s(f"k{k}") + b"h\x05" for k in range(1, keys)) + b"u")
    add("one tensor under 65536 keys", write_zip(tmp_path / "shared.pth", same_object, {"0": bytes(65536)}),
        f"ok {keys} tensors 65536 distinct bytes")
    args = t(zip_pid("0", 16384) + b"q\x06", i(0), t(i(16384)), t(i(1)), FALSE, call(g("collections", "OrderedDict")))
    func = g("torch._utils", "_rebuild_tensor_v2") + b"q\x07"
    rest = b"".join(s(f"k{k}") + b"h\x07h\x08R" for k in range(1, keys))
    same_view = pkl(head + s("k0") + func + args + b"q\x08R" + rest + b"u")
    add("65536 tensors, one view", write_zip(tmp_path / "views.pth", same_view, {"0": bytes(65536)}),
        f"ok {keys} tensors 65536 distinct bytes")
    rest = b"".join(s(f"k{k}") + b"h\x07" + t(b"h\x06", i(k % 1024), t(i(15360)), t(i(1)), FALSE, NONE) + b"R"
                    for k in range(1, keys))
    shifted = pkl(head + s("k0") + func + args + b"R" + rest + b"u")
    add("65536 tensors, shifted views", write_zip(tmp_path / "shifted.pth", shifted, {"0": bytes(65536)}),
        "WeightsFileError: .*tensors would take")
    legacy_shared = pkl(odict(*((s(f"k{k}"), tensor(legacy_pid("0", 16384), (16384,))) for k in range(4096))))
    path = write_legacy(tmp_path / "lshared.pth", legacy_shared, [("0", 16384, bytes(65536))])
    add("legacy: 4096 tensors, one storage", path, "ok 4096 tensors 65536 distinct bytes")

    # lengths read from the file before anything else
    body = pkl(odict((s("a"), tensor(legacy_pid(), (4,)))))
    path = write_legacy(tmp_path / "numel.pth", body, [("0", 2**60, FLOAT4.tobytes())])
    add("legacy storage of 2**60 elements", path, "WeightsFileError: .*says 1152921504606846976 elements")
    big_pid = pkl(odict((s("a"), tensor(legacy_pid("0", 2**40), (4,)))))
    add("legacy pid of 2**40 elements", write_legacy(tmp_path / "pid.pth", big_pid, [("0", 2**40, FLOAT4.tobytes())]),
        "WeightsFileError: .*truncated")
    for name, op in [("BINBYTES8", b"\x8e"), ("BINUNICODE8", b"\x8d")]:
        body = b"\x80\x04" + op + struct.pack("<Q", 1 << 40) + b"x" * 64
        path = write_legacy(tmp_path / f"{name}.pth", body, [])
        add(f"legacy {name} of 1 TiB", path, "WeightsFileError: .*truncated")
        add(f"zip {name} of 1 TiB", write_zip(tmp_path / f"{name}.zip.pth", body, {}), "WeightsFileError: .*truncated")
    path = tmp_path / "dicts.pth"  # 2M empty dicts in 4 MB of pickle
    path.write_bytes(legacy_bytes(b"\x80\x02" + b"}" * (2 << 20) + b".", []))
    add("2M objects", path, "WeightsFileError: .*more than 1048576 opcodes")
    entries = [("archive/data.pkl", small, 0, zlib.crc32(small), len(small), len(small))]
    entries += [(f"{k}", b"", 0, 0, 0, 0) for k in range(100_000)]  # 100k empty members: 5 MB of directory
    path = tmp_path / "members.pth"
    path.write_bytes(raw_zip(entries))
    add("100k zip members", path, "WeightsFileError: .*zip directory of 5\\d{6} bytes is over the 4 MiB limit")
    for name, length in [("safetensors header of 2**60", 2**60), ("safetensors header of 99 MB", 99 << 20),
                         ("safetensors header over the limit", 17 << 20)]:
        path = tmp_path / f"{name}.safetensors"
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", length) + b"{")
            if length < (1 << 30):
                f.truncate(8 + length)
        add(name, path, "WeightsFileError: .*header of \\d+ bytes is over")

    # over the 4 GiB budget for weights (weights.MAX_TENSOR_BYTES), sparse on disk: 2**30 + 1 float32s
    k = (1 << 30) + 1
    path = tmp_path / "over_budget.pth"
    with open(path, "wb") as f:
        f.write(legacy_bytes(pkl(odict((s("a"), tensor(legacy_pid("0", k), (k,))))), [], keys=pkl(lst(s("0")))))
        f.write(struct.pack("<q", k))
        f.seek(4 * k, os.SEEK_CUR)
        f.truncate()
    add("legacy storage of 4 GiB + 4 bytes", path,
        f"WeightsFileError: .*its tensors take {4 * k} bytes, over the 4096 MiB limit for weights")
    header = json.dumps({"a": {"dtype": "F32", "shape": [k], "data_offsets": [0, 4 * k]}}).encode()
    path = tmp_path / "over_budget.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 4 * k)
    add("safetensors of 4 GiB + 4 bytes", path, "WeightsFileError: .*over the 4096 MiB limit for weights")
    # a pickle longer than weights.MAX_METADATA_BYTES (16 MiB): one 17 MiB string
    long_pickle = b"\x80\x02X" + struct.pack("<I", 17 << 20) + b"a" * (17 << 20) + b"."
    add("legacy: first pickle of 17 MiB", write_legacy(tmp_path / "long_magic.pth", b"", [], magic=long_pickle),
        "WeightsFileError: .*a pickle is longer than the 16 MiB limit")
    add("legacy: data pickle of 17 MiB", write_legacy(tmp_path / "long_data.pth", long_pickle, []),
        "WeightsFileError: .*a pickle is longer than the 16 MiB limit")
    add("zip: data.pkl of 17 MiB", write_zip(tmp_path / "long.zip.pth", long_pickle, {}),
        "WeightsFileError: .*zip member archive/data.pkl declares 17825800 bytes, over 16777216")

    return attacks


def test_memory_attacks_are_refused_within_a_memory_limit(tmp_path):
    """Every attack runs in one subprocess limited to 3 GiB of address space over its baseline (the
    reader and TensorFlow imported): a regression fails or crashes it instead of swapping. Peaks are
    the resident-size high-water mark of each read."""
    attacks = memory_attacks(tmp_path)
    cases = json.dumps([(name, str(path)) for name, (path, _) in attacks.items()])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", _ATTACK_RUNNER, cases], capture_output=True, text=True, env=env,
                            timeout=600)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    report = "\n".join(f"{r['name']}: {r['peak_mib']:.0f} MiB, {r['outcome'][:200]}" for r in lines)
    assert result.returncode == 0 and len(lines) == len(attacks), f"{report}\n{result.stderr[-3000:]}"
    for row in lines:
        path, expect = attacks[row["name"]]
        assert re.search(expect, row["outcome"]), f"{row['name']}: {row['outcome']}\n{report}"
        if row["outcome"].startswith("WeightsFileError"):
            assert f"{path}: " in row["outcome"]
        legit = row["name"].startswith("hrnet_w64")
        assert row["peak_mib"] < (600 if legit else 100), report
    print(report)


# ---------------------------------------------------------------------------------------------------
# safetensors: the library's checks, and ours before it


def safetensors_file(path, header, data=b"", length=None) -> pathlib.Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize(
    "header, data, match",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "incomplete metadata"),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 8]}}, b"\0" * 8, "too large"),
        ({"a": {"dtype": "F32", "shape": [2**30, 2**30], "data_offsets": [0, 8]}}, b"\0" * 8,
         "overflow computing buffer size"),
        ({"a": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}}, b"", "too large"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid offset"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 16, "incomplete metadata"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, r"shape \[-1\] is not"),
        ({"a": {"dtype": "F32", "shape": [1] * 33, "data_offsets": [0, 4]}}, b"\0" * 4, "at most 32 sizes"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 2**64]}}, b"\0" * 4, "invalid JSON"),
        ({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "dtype 'F8_E4M3' is not one of"),
        ({"a": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "dtype 'Q99'"),
        ({"a": [1, 2]}, b"", "dtype None"),
        ([1, 2], b"", "not a JSON object"),
        (b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", "not valid JSON|invalid JSON"),
        (b'{"\xff": 1}', b"", "not valid JSON|invalid UTF-8"),
        ({"__metadata__": {"x": {"y": 1}}}, b"", "invalid JSON"),
    ],
    ids=["data_short", "shape_mismatch", "shape_over_numpy", "shape_huge", "empty_huge", "overlap", "data_long",
         "negative", "33_dims", "offset_overflow", "float8", "unknown_dtype", "entry_not_object", "header_not_object",
         "deep", "not_utf8", "nested_metadata"],
)
def test_malformed_safetensors(tmp_path, header, data, match):
    raises_file_error(safetensors_file(tmp_path / "bad.safetensors", header, data), match)


def test_safetensors_lengths_are_bounded_before_reading(tmp_path):
    for length in (2**64 - 1, 1 << 40, 100):
        raises_file_error(safetensors_file(tmp_path / "h.safetensors", b"{}", length=length), "header of")
    raises_file_error(safetensors_file(tmp_path / "s.safetensors", b"", length=0), "not valid JSON")
    (tmp_path / "t.safetensors").write_bytes(b"\x05\x00")
    raises_file_error(tmp_path / "t.safetensors", "truncated")


def test_safetensors_bfloat16_and_metadata(tmp_path):
    values = np.array([1.5, -2.0], np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = {"__metadata__": {"format": "pt"}, "a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}
    path = safetensors_file(tmp_path / "bf16.safetensors", header, raw)
    np.testing.assert_array_equal(read_state_dict(path)["a"], values)


# ---------------------------------------------------------------------------------------------------
# Truncation and random damage: success or WeightsFileError, never anything else


def _read_outcome(path) -> str:
    try:
        read_state_dict(path)
        return "ok"
    except WeightsFileError as e:
        assert e.path == str(path)
        return "error"


@pytest.mark.parametrize("fmt", FORMATS + ["safetensors"])
def test_every_truncation_of_a_small_file(tmp_path, fmt):
    data = state_file(tmp_path / f"full.{fmt}", fmt, SMALL).read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    for end in range(len(data)):
        cut.write_bytes(data[:end])
        assert _read_outcome(cut) == "error", f"{fmt} cut at {end} of {len(data)} loaded"


@pytest.mark.parametrize("name", ["legacy.pth", "official.pth", "state_dict.safetensors"])
def test_truncations_of_the_fixture(tmp_path, name):
    data = (TIMM_TINY / name).read_bytes()
    cut = tmp_path / name
    rng = random.Random(0)
    for end in sorted({0, 1, 4, 8, 15, 16, 100, len(data) - 1, *rng.sample(range(len(data)), 25)}):
        cut.write_bytes(data[:end])
        assert _read_outcome(cut) == "error", f"cut at {end} of {len(data)} loaded"


def test_random_byte_flips(tmp_path):
    """A seeded fuzz loop: containers (zip/legacy/safetensors bytes) and data pickles (re-zipped with a
    correct CRC, so the damage reaches the unpickler)."""
    rng = random.Random(1234)
    samples = {fmt: state_file(tmp_path / f"s.{fmt}", fmt, SMALL).read_bytes() for fmt in FORMATS + ["safetensors"]}
    with zipfile.ZipFile(tmp_path / "s.zip") as zf:
        data_pkl = zf.read("archive/data.pkl")
    outcomes = {"ok": 0, "error": 0}
    target = tmp_path / "fuzz"
    for n in range(1200):
        fmt = ("zip", "legacy", "safetensors", "pickle")[n % 4]
        raw = bytearray(data_pkl if fmt == "pickle" else samples[fmt])
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        path = target.with_suffix(".safetensors" if fmt == "safetensors" else ".pth")
        if fmt == "pickle":
            write_zip(path, bytes(raw), {str(k): v.astype("<f4").tobytes() for k, v in enumerate(SMALL.values())})
        else:
            path.write_bytes(bytes(raw))
        try:
            outcomes[_read_outcome(path)] += 1
        except Exception as e:  # noqa: BLE001 - the point: report which input escaped
            pytest.fail(f"iteration {n} ({fmt}): {type(e).__name__}: {e}")
    assert outcomes["error"] >= 500 and outcomes["ok"] >= 50, outcomes  # both kinds of damage happen


# ---------------------------------------------------------------------------------------------------
# Buckets, the error type, and the command line


def test_weights_on_a_bucket_file_system(tmp_path):
    """Weights paths go through tf.io.gfile: TF's in-memory file system stands in for gs://."""
    import tensorflow as tf

    for name in ("legacy.pth", "official.pth", "state_dict.safetensors"):
        uri = f"ram://weights_test/{name}"
        with tf.io.gfile.GFile(uri, "wb") as f:
            f.write((TIMM_TINY / name).read_bytes())
        local, remote = read_state_dict(TIMM_TINY / name), read_state_dict(uri)
        assert list(remote) == list(local) and all(np.array_equal(remote[k], local[k]) for k in local)
    with pytest.raises(WeightsFileError, match="ram://weights_test/missing.pth: weights file not found"):
        read_state_dict("ram://weights_test/missing.pth")
    evil = "ram://weights_test/evil.pth"
    with tf.io.gfile.GFile(evil, "wb") as f:
        f.write(write_zip(tmp_path / "e.pth", pkl(call(g("os", "system"), s("true"))), {}).read_bytes())
    with pytest.raises(WeightsFileError, match=f"{evil}: refusing to load os.system"):
        read_state_dict(evil)


def test_error_type_is_exported_and_a_value_error(tmp_path):
    from hrnet_tfx import models

    assert models.WeightsFileError is WeightsFileError
    assert issubclass(WeightsFileError, WeightImportError) and issubclass(WeightsFileError, ValueError)
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint")
    err = raises_file_error(tmp_path / "junk.pth", "not a PyTorch checkpoint")
    assert err.reason.startswith("not a PyTorch checkpoint")
    raises_file_error(tmp_path, "is a directory")
    named = "name from the file: a\nb\udcff"
    crafted = WeightsFileError(named + "x" * 5000, "w.pth")  # one printable line of at most 2000 characters
    assert str(crafted) == "w.pth: name from the file: a\\nb\\udcff" + "x" * (2000 - len(named))


def test_import_weights_command_prints_one_line(tmp_path, sentinel):
    from click.testing import CliRunner

    from hrnet_tfx.cli import main

    evil = tmp_path / "evil.pth"  # the payload is in the legacy format's first pickle (the magic number)
    evil.write_bytes(legacy_bytes(pkl(odict()), [], magic=pkl(call(g("os", "system"), s(f"touch {sentinel}")))))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["models", "import-weights", "tiny.yaml", str(evil), "-o", str(out),
                                       "--num-classes", "10", "--image-size", "64"])
    assert result.exit_code == 1 and not out.exists() and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if "Error" in line] == [
        f"Error: {evil}: not a PyTorch checkpoint (neither a zip archive nor torch's legacy format: refusing to "
        "load os.system: only tensor state_dicts are read, and no code runs)"]


def test_train_init_from_prints_one_line(tmp_path, color_records):
    from click.testing import CliRunner

    from hrnet_tfx.cli import main

    bad = one_tensor_file(tmp_path, "zip", dct((s("a"), DEEP["lists"])), name="deep.pth")
    result = CliRunner().invoke(main, [
        "train", "--model", "tiny.yaml", "--model-dir", str(tmp_path / "m"), "--eval-only", "--init-from", str(bad),
        "-s", f"eval_files={color_records / 'eval' / '*'}", "-s", "num_classes=3", "-s", "image_size=64",
        "--workers", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if "Error" in line] == [
        f"Error: {bad}: objects nest deeper than 32 levels (at a{'/0' * 31})"]
