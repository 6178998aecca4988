"""Does dividing Caffe-preprocessed VGG-19 features by 255 put the perceptual terms on the reference's scale?

The reference feeds [0, 1] images to its VGG; crdtool feeds the Keras VGG-19 its own Caffe input
(0..255 BGR minus the mean) and divides the taps by 255 (docs/method.md). On real photos and the
vintagify teacher's outputs for them (the pair a residual student starts from: input vs teacher),
this prints the unweighted style and feature terms both ways on the same weights, and their ratio.

    python benchmarks/perceptual_scale.py --vgg weights:vgg19 --teacher weights:vintagify --data DIR -n 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from crdtool.bench.env import cpu_info, current_command, library_versions, load_avg
from crdtool.data.images import load_folder_tensor
from crdtool.fileio import write_json_atomic
from crdtool.losses.perceptual import UNIT_RGB, PerceptualLoss, VGGFeatures, load_vgg
from crdtool.models.checkpoints import load_generator
from crdtool.weights.cache import PREFIX, resolve_reference

RESULTS = Path(__file__).resolve().parent / "results" / "perceptual_scale.json"


def _path(value: str, what: str) -> Path:
    return resolve_reference(value, what) if value.startswith(PREFIX) else Path(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vgg", default="weights:vgg19")
    ap.add_argument("--teacher", default="weights:vintagify")
    ap.add_argument("--data", required=True, help="a folder of photos (e.g. a CycleGAN testA)")
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    caffe = load_vgg(_path(args.vgg, "--vgg"))
    unit = VGGFeatures(caffe.config, UNIT_RGB, 1.0)  # same weights, the reference's input and no scaling
    unit.load_state_dict(caffe.state_dict())
    teacher = load_generator(_path(args.teacher, "--teacher"))
    x = load_folder_tensor(args.data, args.size, args.n)
    t0 = time.perf_counter()
    with torch.no_grad():
        y = torch.cat([teacher(x[i:i + 2]) for i in range(0, len(x), 2)])
        rows = {}
        for name, vgg in (("caffe_bgr/255", caffe), ("unit_rgb (reference input)", unit)):
            style, feature = PerceptualLoss(vgg)(x, y)
            rows[name] = {"style": float(style), "feature": float(feature),
                          "weighted (1e4 style, 10 feature)": {"style": 1e4 * float(style),
                                                               "feature": 10 * float(feature)}}
    a, b = rows["caffe_bgr/255"], rows["unit_rgb (reference input)"]
    out = {"command": current_command(), "host": cpu_info(), "load_avg": load_avg(),
           "versions": library_versions(), "data": Path(args.data).name, "images": len(x), "size": args.size,
           "pair": "input vs teacher output",
           "vgg": caffe.describe(), "teacher": teacher.checkpoint_layout, "terms": rows,
           "ratio caffe/255 to unit_rgb": {"style": a["style"] / b["style"], "feature": a["feature"] / b["feature"]},
           "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(RESULTS, out)
    print(out["terms"], out["ratio caffe/255 to unit_rgb"])


if __name__ == "__main__":
    main()
