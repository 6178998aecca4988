"""OpenVINO int8 of a distilled student: NNCF's symmetric (performance) preset against the mixed one.

Both are calibrated on the same testA photos and keep the MatMuls in fp32, as crdtool does; each is scored
against fp32 PyTorch on the first 4 and the first 32 testA photos, and timed (2 threads, batch 1, 256 px,
the two models alternating). This is why ``crdtool.deploy.openvino.quantize_int8`` uses the mixed preset.

    python benchmarks/openvino_int8_presets.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_teacher as rt  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import nncf
    import openvino as ov

    from crdtool.bench.quality import parity_to_reference
    from crdtool.data.images import list_images, load_image
    from crdtool.data.transforms import eval_transform
    from crdtool.deploy.onnx import export_onnx
    from crdtool.deploy.openvino import IrSession
    from crdtool.models.checkpoints import load_generator

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", type=Path, default=rt.RESULTS / "real_teacher" / "crd-seed0.safetensors")
    p.add_argument("--data", type=Path, default=rt.Settings.data)
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=rt.RESULTS / "openvino_int8_presets")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    files = list_images(a.data / "testA")
    x = torch.stack([eval_transform(load_image(f), 256) for f in files[:32]])
    calib = torch.stack([eval_transform(load_image(f), 256) for f in files[:a.calib_images]])
    g = load_generator(a.student).eval()
    with torch.no_grad():
        ref = torch.cat([g(x[i:i + 1]) for i in range(len(x))])
    tmp = Path(tempfile.mkdtemp())
    onnx = export_onnx(g, tmp / "s.onnx", (1, 3, 256, 256))
    xml = tmp / "s.xml"
    ov.save_model(ov.convert_model(str(onnx)), str(xml), compress_to_fp16=False)
    sessions, rows = {"fp32": IrSession(xml, 2)}, {}
    samples = [calib[i:i + 1].numpy() for i in range(len(calib))]
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    for name, preset in presets.items():
        q = nncf.quantize(ov.Core().read_model(str(xml)), nncf.Dataset(samples), preset=preset,
                          subset_size=len(samples), ignored_scope=nncf.IgnoredScope(types=["MatMul"], validate=False))
        ov.save_model(q, str(tmp / f"{name}.xml"), compress_to_fp16=False)
        sessions[name] = IrSession(tmp / f"{name}.xml", 2)
        out = torch.from_numpy(np.concatenate([sessions[name].run_copy(x[i:i + 1].numpy()) for i in range(len(x))]))
        rows[name] = {"psnr_4": round(parity_to_reference(ref[:4], out[:4]).psnr_db, 2),
                      "psnr_32": round(parity_to_reference(ref, out).psnr_db, 2)}
    img, times = x[:1].numpy(), {k: [] for k in sessions}
    for r in range(a.rounds):
        for k in (list(sessions) if r % 2 == 0 else list(sessions)[::-1]):
            for _ in range(5):
                sessions[k].run(img)
            ts = []
            for _ in range(40):
                t0 = time.perf_counter()
                sessions[k].run(img)
                ts.append(time.perf_counter() - t0)
            times[k].append(round(1e3 * float(np.median(ts)), 2))
    for k in sessions:
        rows.setdefault(k, {})["median_ms_per_round"] = times[k]
        rows[k]["median_ms"] = float(np.median(times[k]))
    res = {"format": "crdtool.openvino-int8-presets", "version": 1, "student": rt.rel(a.student), "rows": rows,
           "what": (f"OpenVINO CPU, 2 threads, 256 px, batch 1; int8 calibrated on the first {a.calib_images} testA "
                    "photos, MatMuls fp32; PSNR vs fp32 PyTorch on the first 4 and 32 testA photos; medians of 40 "
                    f"runs per round, {a.rounds} alternating rounds"),
           **rt.provenance("openvino_int8_presets.py", argv)}
    lines = [f"# OpenVINO int8 presets: {rt.rel(a.student)}", "",
             "| model | PSNR vs fp32, 4 photos (dB) | PSNR, 32 photos (dB) | median ms (per round) |",
             "|---|---|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v.get('psnr_4', '-')} | {v.get('psnr_32', '-')} | **{v['median_ms']:.1f}** "
                     f"({', '.join(map(str, v['median_ms_per_round']))}) |")
    rt.write_report(res, a.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
