"""Read an offline W&B run's history (its ``run-*.wandb`` file) without the W&B service.

The file is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of records, each
with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last) of ``Record``
protobuf messages; wandb 0.31 no longer ships a Python reader for it.
"""

import json
import struct
from pathlib import Path

BLOCK = 32768


def history(run_dir: Path) -> list[dict]:
    from wandb.proto import wandb_internal_pb2

    files = sorted(Path(run_dir).rglob("run-*.wandb"))
    assert files, f"no .wandb file under {run_dir}"
    raw = files[-1].read_bytes()
    assert raw[:4] == b":W&B"
    pos, chunks, rows = 7, b"", []
    while pos + 7 <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        chunks += data
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(chunks)
            chunks = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
    return rows
