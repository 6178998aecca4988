"""Tiny recipes for tests (synthetic 32 px data, generators a few channels wide) and the TensorRT stand-in."""

from __future__ import annotations

import copy
import ctypes
import types
from pathlib import Path

import numpy as np

from crdtool.recipe import Recipe, parse_recipe

TINY = {
    "name": "tiny",
    "task": "cyclegan",
    "seed": 0,
    "data": {"layout": "unaligned", "load_size": 36, "crop_size": 32, "batch_size": 1, "eval_images": 4,
             "synth": {"kind": "unpaired", "size": 32, "count": 16, "seed": 0}},
    "teacher": {"arch": "resnet", "ngf": 4, "n_blocks": 2},
    "student": {"arch": "mobile_resnet", "ngf": 2, "n_blocks": 2},
    "discriminator": {"ndf": 4},
    "loss": {"patch_size": 8},
    "train": {"teacher_epochs": 1, "teacher_epochs_decay": 1, "round_epochs": 1, "student_epochs_per_round": 1,
              "eval_every": 1000, "checkpoint_every": 1000, "device": "cpu", "pool_size": 4},
}


def tiny_recipe(tmp_path: Path, data_root: Path | None = None, **sections) -> Recipe:
    """A valid tiny recipe writing into ``tmp_path``; ``sections`` deep-update TINY (e.g. train={...})."""
    d = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key].update(value)
        else:
            d[key] = value
    d["data"]["root"] = str(data_root or tmp_path / "data")
    d["output_dir"] = str(tmp_path / "run")
    return parse_recipe(d, "tiny.toml", tmp_path)


def fake_tensorrt(calls: list, *, strongly_typed: bool = True, fail_parse: bool = False, fail_build: bool = False):
    """The one stand-in ``tensorrt`` module of the tests: records API calls; an "engine" is an ONNX file that
    onnxruntime runs, reading and writing the buffers bound by address, as TensorRT does."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0-stub"

    class Enum:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def __int__(self):
            return self.value

        def __repr__(self):
            return self.name

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=Enum("INTERNAL_ERROR", 0), ERROR=Enum("ERROR", 1),
                                         WARNING=Enum("WARNING", 2))

        def __init__(self):
            pass

    class Logger(ILogger):
        WARNING = ILogger.Severity.WARNING

        def __init__(self, severity=None):
            pass

    trt.ILogger, trt.Logger = ILogger, Logger
    trt.nptype = lambda dtype: {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8}[dtype]
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(
        **({"STRONGLY_TYPED": Enum("STRONGLY_TYPED", 5)} if strongly_typed else {}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", INT8="INT8")

    class Network:
        onnx_path = None

    class Parser:
        def __init__(self, network, logger):
            calls.append(("OnnxParser",))
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            calls.append(("parse_from_file", Path(path).name))
            if fail_parse:
                self.num_errors = 1
                return False
            self.network.onnx_path = path
            return True

        def get_error(self, i):
            return "In node 3 (Pad): unsupported mode"

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+entry"

    class Profile:
        def set_shape(self, *args):
            calls.append(("set_shape",) + args)

    class Config:
        def __init__(self):
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def __setattr__(self, key, value):
            if key == "builder_optimization_level":
                calls.append(("builder_optimization_level", value))
            object.__setattr__(self, key, value)

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag))

        def add_optimization_profile(self, p):
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, blob):
            calls.append(("create_timing_cache", bytes(blob)))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            calls.append(("create_builder_config",))
            return Config()

        def create_optimization_profile(self):
            calls.append(("create_optimization_profile",))
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return None if fail_build else memoryview(Path(network.onnx_path).read_bytes())

    class Context:
        def __init__(self, sess, declared):
            self.sess, self.addr = sess, {}
            self.shape = None if any(d < 0 for d in declared) else tuple(declared)  # static: fixed at build

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, tuple(shape)))
            self.shape = tuple(shape)

        def get_tensor_shape(self, name):  # the output's shape follows from the input's, as TensorRT derives it
            if name == "input" or self.shape is None:
                return self.shape
            return tuple(self.sess.run(None, {"input": np.zeros(self.shape, np.float32)})[0].shape)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            calls.append(("execute_async_v3", stream))
            n = int(np.prod(self.shape))
            x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr["input"])).reshape(self.shape)
            y = self.sess.run(None, {"input": x.copy()})[0]
            ctypes.memmove(self.addr["output"], y.ctypes.data, y.nbytes)
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, data):
            import onnxruntime as ort

            self.sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

        def get_tensor_name(self, i):
            return ["input", "output"][i]

        def get_tensor_mode(self, name):
            return "INPUT" if name == "input" else "OUTPUT"

        def get_tensor_dtype(self, name):
            return "FLOAT"

        def get_tensor_shape(self, name):
            io = self.sess.get_inputs() if name == "input" else self.sess.get_outputs()
            return tuple(d if isinstance(d, int) else -1 for d in io[0].shape)

        def create_execution_context(self):
            return Context(self.sess, self.get_tensor_shape("input"))

    class Runtime:
        def __init__(self, logger):
            calls.append(("Runtime",))

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize_cuda_engine",))
            return Engine(bytes(data))

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt
