"""TensorRT backend: a prebuilt FP16 engine run through the TensorRT 10 tensor-by-name API.

Device buffers are torch CUDA tensors, so no pycuda is needed; the engine's optimization profile
bounds the batch, and Predictor.predict splits larger batches.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import BundleError
from ..bundle import Bundle
from ..predictor import Predictor
from ..tensorrt_build import engine_for_this_machine, gpu_name, tensorrt_missing


class TensorRTPredictor(Predictor):
    def __init__(self, bundle: Bundle):
        missing = tensorrt_missing()
        if missing:
            raise ValueError(f"backend tensorrt asked for, but {missing}")
        import tensorrt as trt

        artifact = engine_for_this_machine(bundle)
        if artifact is None:
            built = [f"{a.get('gpu')} / TensorRT {a.get('tensorrt_version')}" for a in bundle.find("tensorrt")]
            raise BundleError(
                f"{bundle.path} holds no TensorRT engine for {gpu_name()} / TensorRT {trt.__version__} "
                f"(engines in the bundle: {built or 'none'}); rebuild with stadapter-export --trt on this machine"
            )
        super().__init__(bundle, max_batch=artifact["batch"]["max"])
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(bundle.file(artifact).read_bytes())
        if self.engine is None:
            raise BundleError(f"TensorRT cannot deserialize {bundle.file(artifact)}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = lambda n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        self.input_name = next(n for n in names if is_input(n))
        self.output_name = next(n for n in names if not is_input(n))
        self.stream = torch.cuda.Stream()
        self.backend = "tensorrt"

    def _infer(self, clips: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(clips).cuda()  # the engine keeps float32 I/O
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        y = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, y.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return y.cpu().numpy()
