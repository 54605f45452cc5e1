"""The reference side of the checkpoint tests: Python's safetensors package (huggingface, from
PyPI) writes the files our loader reads and reads the files our writer wrote.

Tensors travel between the C++ test and this script as text, one per line:
    name|DTYPE|d0,d1,...|v0 v1 ...
(values as Python's repr, exact for every dtype; an empty shape field is a 0-dim tensor). The
reader's output gives the name as the hex of its UTF-8 bytes: a corrupted file's names may hold
any character, '|' and newlines included.

    python safetensors_reference.py write <tensors.txt> <out.safetensors>
    python safetensors_reference.py read  <in.safetensors> <tensors.txt>
    python safetensors_reference.py check <file>...   prints "ok" or "error" per file
"""
import sys

import numpy as np
import safetensors
from safetensors import TensorSpec

# Every dtype the loader converts (runtime/src/checkpoint.cpp) that numpy has: a corrupt file
# whose flipped byte turns "F32" into "U32" (or "F64" into "U64") is still a valid file.
NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
         "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32,
         "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}
SPEC_NAME = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
             "I64": "int64", "I32": "int32", "U8": "uint8"}


def bf16_bits(values):
    """float -> bfloat16 bits, round to nearest even (NaN -> 0x7fc0), as c10::BFloat16."""
    f = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((f + 0x7FFF + ((f >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (f & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, np.uint16(0x7FC0), rounded)


def encode(dtype, values):
    if dtype == "BF16":
        return bf16_bits(values)
    if dtype.startswith("I") or dtype.startswith("U"):
        return np.asarray([int(v) for v in values], dtype=NUMPY[dtype])
    return np.asarray([float(v) for v in values], dtype=NUMPY[dtype])


def decode(dtype, data):
    if dtype == "BF16":
        bits = np.frombuffer(bytes(data), dtype=np.uint16).astype(np.uint32) << 16
        return [float(v) for v in bits.view(np.float32)]
    arr = np.frombuffer(bytes(data), dtype=NUMPY[dtype])
    return [int(v) for v in arr] if dtype[0] in "IU" else [float(v) for v in arr]


def write(spec_path, out_path):
    arrays, specs, metadata = [], {}, {"format": "pt"}
    with open(spec_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            name, dtype, shape, values = line.split("|")
            shape = tuple(int(s) for s in shape.split(",") if s)
            arr = np.ascontiguousarray(encode(dtype, values.split()))
            arrays.append(arr)  # kept alive until serialize_file has copied it
            specs[name] = TensorSpec(dtype=SPEC_NAME[dtype], shape=shape,
                                     data_ptr=arr.ctypes.data, data_len=arr.nbytes)
    safetensors.serialize_file(specs, out_path, metadata=metadata)


def read(in_path, out_path):
    with open(in_path, "rb") as f:
        entries = safetensors.deserialize(f.read())
    with open(out_path, "w") as out:
        for name, t in entries:
            values = decode(t["dtype"], t["data"])
            out.write("%s|%s|%s|%s\n" % (name.encode("utf-8").hex(), t["dtype"], ",".join(map(str, t["shape"])),
                                         " ".join(repr(v) for v in values)))


def check(paths):
    for p in paths:
        try:
            with open(p, "rb") as f:
                safetensors.deserialize(f.read())
            print("ok")
        except Exception:  # the package raises SafetensorError and others on bad files
            print("error")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "write":
        write(sys.argv[2], sys.argv[3])
    elif cmd == "read":
        read(sys.argv[2], sys.argv[3])
    elif cmd == "check":
        check(sys.argv[2:])
    else:
        sys.exit("unknown command " + cmd)
