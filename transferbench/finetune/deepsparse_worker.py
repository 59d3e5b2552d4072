"""Runs a DeepSparse engine for transferbench in DeepSparse's own Python environment (numpy<2, no torch).

Started by ``transferbench.finetune.sparse_cpu`` as ``PYTHON deepsparse_worker.py MODEL.onnx BATCH CORES``; it
imports nothing from transferbench. Frames on stdin/stdout are an 8-byte little-endian length followed by a
``.npy`` payload: a float32 batch [BATCH, 3, H, W] in, the model's output out; a zero length ends the worker.
"""

from __future__ import annotations

import io
import struct
import sys


def _read_exact(stream, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("transferbench closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def main() -> None:
    import numpy as np
    from deepsparse import compile_model

    onnx_path, batch_size, cores = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    engine = compile_model(onnx_path, batch_size=batch_size, num_cores=cores)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(struct.pack("<Q", 0))  # ready: the engine is compiled
    stdout.flush()
    while True:
        (length,) = struct.unpack("<Q", _read_exact(stdin, 8))
        if length == 0:
            return
        batch = np.load(io.BytesIO(_read_exact(stdin, length)), allow_pickle=False)
        out = engine([np.ascontiguousarray(batch, dtype=np.float32)])[0]
        buf = io.BytesIO()
        np.save(buf, out, allow_pickle=False)
        stdout.write(struct.pack("<Q", buf.tell()) + buf.getvalue())
        stdout.flush()


if __name__ == "__main__":
    main()
