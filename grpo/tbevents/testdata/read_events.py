#!/usr/bin/python3
"""Independent reader of TensorBoard event files, for the tests of package tbevents.

Usage: /usr/bin/python3 read_events.py EVENT_FILE

Shares no code with the Go package: the TFRecord framing is read here from its description
(uint64 length LE, masked CRC32C of the length, data, masked CRC32C of the data), the CRC32C
is the crc32c library's (Debian python3-crc32c), and each record's data is parsed as a
tensorboard.Event by Google's protobuf runtime (python3-protobuf) from TensorBoard's own
.proto files (proto/, compiled here with protoc from protobuf-compiler).

Prints one JSON object per event: wall_time, step, and file_version, session_start, or
scalars ([tag, simple_value] pairs). Exits non-zero naming the record's offset on a bad
checksum, a truncated record, an Event that does not parse, or a summary value that is not a
simple_value.
"""
import importlib
import json
import os
import struct
import subprocess
import sys
import tempfile

import crc32c

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "proto")


def load_event_class():
    """Compiles TensorBoard's protos into a temporary folder and returns tensorboard.Event."""
    src = os.path.join(PROTO, "tensorboard", "compat", "proto")
    files = [os.path.join(src, f) for f in sorted(os.listdir(src)) if f.endswith(".proto")]
    with tempfile.TemporaryDirectory(prefix="tbproto-") as out:
        subprocess.run(["protoc", "-I", PROTO, "--python_out", out] + files, check=True)
        sys.path.insert(0, out)
        return importlib.import_module("tensorboard.compat.proto.event_pb2").Event


def masked_crc(data):
    c = crc32c.crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(buf):
    """Yields (offset, data) for each record of buf; raises ValueError on a bad one."""
    off = 0
    while off < len(buf):
        if len(buf) - off < 12:
            raise ValueError(f"record at offset {off}: truncated header")
        header, (length_crc,) = buf[off : off + 8], struct.unpack_from("<I", buf, off + 8)
        if masked_crc(header) != length_crc:
            raise ValueError(f"record at offset {off}: length checksum mismatch")
        (n,) = struct.unpack("<Q", header)
        if len(buf) - off < 16 + n:
            raise ValueError(f"record at offset {off}: truncated data")
        data = buf[off + 12 : off + 12 + n]
        (data_crc,) = struct.unpack_from("<I", buf, off + 12 + n)
        if masked_crc(data) != data_crc:
            raise ValueError(f"record at offset {off}: data checksum mismatch")
        yield off, data
        off += 16 + n


def describe(off, ev):
    out = {"wall_time": ev.wall_time, "step": ev.step}
    what = ev.WhichOneof("what")
    if what == "file_version":
        out["file_version"] = ev.file_version
    elif what == "session_log":
        out["session_start"] = ev.session_log.status == ev.session_log.START
    elif what == "summary":
        pairs = []
        for v in ev.summary.value:
            if v.WhichOneof("value") != "simple_value":
                raise ValueError(f"record at offset {off}: value {v.tag!r} is not a simple_value")
            pairs.append([v.tag, v.simple_value])
        out["scalars"] = pairs
    else:
        raise ValueError(f"record at offset {off}: unexpected event kind {what}")
    return out


def main():
    event_class = load_event_class()
    with open(sys.argv[1], "rb") as f:
        buf = f.read()
    try:
        for off, data in records(buf):
            ev = event_class()
            try:
                ev.ParseFromString(data)
            except Exception as e:
                raise ValueError(f"record at offset {off}: not an Event: {e}") from e
            print(json.dumps(describe(off, ev)))
    except Exception as e:  # the message names the record's offset
        sys.exit(f"{sys.argv[1]}: {e}")


if __name__ == "__main__":
    main()
