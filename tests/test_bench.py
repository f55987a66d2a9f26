from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_models import N_HL, hl_model
from wtag import schema

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "inference.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_inference_bench_reports_agreement_and_throughput(tmp_path: Path) -> None:
    model = tmp_path / "hl.onnx"
    onnx.save(hl_model(), str(model))
    x = np.random.default_rng(4).normal(size=(50, N_HL)).astype(np.float32)
    native = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run([schema.OUTPUT_SCORE], {schema.INPUT_HL: x})[0]
    np.savez(tmp_path / "inputs.npz", hl=x, native_dnn=native.reshape(-1) + 1e-3)
    out = tmp_path / "table.md"
    done = _bench(str(model), "--inputs", str(tmp_path / "inputs.npz"), "--sizes", "1", "120", "--duration", "0.05",
                  "--output", str(out))
    assert done.returncode == 0, done.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| dnn |")]
    assert rows[0] == "| dnn | cpu | CPUExecutionProvider | 50 | 0.00e+00 | 1.00e-03 |"
    assert [r.split(" | ")[2] for r in rows[1:]] == ["1", "120"]  # 120 jets: the 50 test jets repeated


def test_inference_bench_rejects_a_missing_model(tmp_path: Path) -> None:
    done = _bench(str(tmp_path / "nope.onnx"), "--inputs", str(tmp_path / "x.npz"))
    assert done.returncode == 2 and "nope.onnx: no such model file" in done.stderr
