"""What the runtime must know about an ONNX file before a backend opens it, read without onnx.

Two facts, both read from the protobuf wire format directly (the runtime installs no ``onnx``):

- ``external_data``: every file the model's tensors keep their data in (``location`` of each
  externally stored tensor, in initializers, Constant attributes, subgraphs and functions alike).
  onnxruntime opens these itself, so the build must vouch for each of them (sha256) before it may.
- ``metadata``: the model's ``metadata_props``, where the exporter records which graph of which
  build the file is (``IDENTITY_KEY``), so that a file swapped for another role is refused.

The file is memory-mapped and only walked: tensor payloads are skipped by length, never read, so a
graph with its weights inline costs no more than its structure. A file is untrusted: malformed or
absurdly nested input gives ``OnnxHeaderError``, never an exception from deep inside.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

from transprune.errors import TransPruneError

IDENTITY_KEY = "transprune.graph"
MAX_DEPTH = 48  # subgraphs inside attributes inside subgraphs...: real models nest a few levels

# Field numbers of onnx.proto3 that can lead to a TensorProto, per message type; every other field
# is skipped. (message, field) -> the message type the field holds.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE, _FUNCTION, _TRAINING, _ENTRY = range(9)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _FUNCTION: {7: _NODE},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _TENSOR: {},
}
_MODEL_METADATA, _TENSOR_EXTERNAL_DATA = 14, 13


class OnnxHeaderError(TransPruneError):
    """An ONNX file that is not a well-formed model."""


@dataclass
class OnnxHeader:
    external_data: set[str] = field(default_factory=set)
    metadata: dict[str, str] = field(default_factory=dict)


def read_header(path: Path) -> OnnxHeader:
    """The external data files and metadata of the ONNX model at ``path``."""
    header = OnnxHeader()
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        if size == 0:
            raise OnnxHeaderError(f"{path} is empty, not an ONNX model; re-export the build")
        # Not closed explicitly: views of it may live on in an error's traceback, and closing a map
        # with views raises; it is unmapped when the last view goes.
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    _walk(memoryview(mapped), _MODEL, header, depth=0, path=path)
    return header


def _walk(data: memoryview, message: int, header: OnnxHeader, *, depth: int, path: Path) -> None:
    if depth > MAX_DEPTH:
        raise OnnxHeaderError(f"{path}: subgraphs nested deeper than {MAX_DEPTH} levels; not a model transprune "
                              f"exported, re-export the build")
    children = _CHILDREN[message]
    for number, wire, value in _fields(data, path):
        if wire != 2:
            continue
        if message == _MODEL and number == _MODEL_METADATA:
            key, text = _entry(value, path)
            header.metadata[key] = text
        elif message == _TENSOR and number == _TENSOR_EXTERNAL_DATA:
            key, text = _entry(value, path)
            if key == "location":
                header.external_data.add(text)
        elif number in children:
            _walk(value, children[number], header, depth=depth + 1, path=path)


def _entry(data: memoryview, path: Path) -> tuple[str, str]:
    """A StringStringEntryProto: (key, value)."""
    found = {1: "", 2: ""}
    for number, wire, value in _fields(data, path):
        if wire == 2 and number in found:
            try:
                found[number] = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise OnnxHeaderError(f"{path}: a metadata or external-data entry is not UTF-8; re-export the "
                                      f"build") from None
    return found[1], found[2]


def _fields(data: memoryview, path: Path):
    """(field number, wire type, payload) of each field of one message; payloads of length-delimited
    fields are views (nothing copied), others are ints."""
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position, path)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position, path)
        elif wire == 1:
            value, position = None, position + 8
        elif wire == 5:
            value, position = None, position + 4
        elif wire == 2:
            length, position = _varint(data, position, path)
            if position + length > end:
                raise OnnxHeaderError(f"{path} is truncated (a field runs past the end of the file); re-export or "
                                      f"copy the build again")
            value, position = data[position:position + length], position + length
        else:  # groups (3, 4) are not in onnx.proto; anything else is not protobuf
            raise OnnxHeaderError(f"{path} is not an ONNX model (unknown protobuf wire type {wire}); re-export the "
                                  f"build")
        if position > end or number == 0:
            raise OnnxHeaderError(f"{path} is not an ONNX model (malformed protobuf); re-export the build")
        yield number, wire, value


def _varint(data: memoryview, position: int, path: Path) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise OnnxHeaderError(f"{path} is not an ONNX model (malformed protobuf varint); re-export the build")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
