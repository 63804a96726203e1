"""Where the run executes: the device, and this process's place among torchrun's processes.

A plain `python semisup_cam.py` is a world of one; under `torchrun --nproc_per_node=N` every
process joins a process group (NCCL on CUDA, gloo on CPU) and works on its shard of each epoch.
"""
from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as td
from torch import nn

from utils.errors import UserError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    distributed: bool = False  # launched by torchrun: the processes talk, even when there is only one
    precision: str = "fp32"  # "fp32", or "bf16": autocast and channels-last (resolve_precision chooses)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the forward pass (no loss scaling needed): weights, gradients and optimizer state
        stay fp32, and the loss, softmax and metrics take their inputs as fp32."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.distributed:
            td.barrier()

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm statistics everywhere: after the last step each rank holds those of its own
        shard, and evaluating with them would disagree with the checkpoint, which rank 0 writes."""
        if self.distributed:
            for buffer in model.buffers():
                td.broadcast(buffer, src=0)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every process (a picklable Python object)."""
        if not self.distributed:
            return value
        box = [value]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def prepare(self, model: nn.Module, sync_bn: bool = False) -> nn.Module:
        """On the device, channels-last in bf16 (the fast bf16 convolutions of cuDNN and oneDNN want NHWC),
        synchronised BatchNorm if asked."""
        if sync_bn and self.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        if self.precision == "bf16":
            model = model.to(memory_format=torch.channels_last)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around `model` when there are several processes, else `model`."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; an explicit 'cuda' without a GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"DEVICE={name} but PyTorch sees no GPU here. Use --device=cpu or --device=auto.")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise UserError(f"DEVICE={name} is not a device PyTorch knows (try auto, cpu, cuda, cuda:1).") from error


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware (x86: AVX512-BF16 or AMX; Arm: BF16). oneDNN also calls bf16
    supported on AVX-512 CPUs without these instructions, where it emulates them, slower than fp32."""
    try:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return supported
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:
        return False
    return supported and bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' is bf16 where the device computes it natively (CUDA GPUs since Ampere, CPUs with bf16
    instructions) and fp32 elsewhere; 'fp32' and 'bf16' are taken as given."""
    if name not in ("auto", "fp32", "bf16"):
        raise UserError(f"--precision={name}: expected 'auto', 'fp32' or 'bf16'.")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def setup(device_name: str, precision: str = "auto") -> Runtime:
    """Joins torchrun's process group when launched by torchrun; sets fast CUDA and CPU defaults; resolves
    the precision (`resolve_precision`)."""
    device = resolve_device(device_name)
    precision = resolve_precision(precision, device)
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        print("note: this CPU has no bf16 instructions: --precision=bf16 emulates them, several times slower than "
              "fp32 (--precision=auto chooses fp32 here).", file=sys.stderr)
    if device.type == "cpu":
        # Weights that stop getting gradients decay into subnormal floats, on which x86 arithmetic is many
        # times slower (late CPU epochs took three times as long); they are below 1.2e-38, so flush them to zero.
        torch.set_flush_denormal(True)
    if device.type == "cuda":
        if "LOCAL_RANK" in os.environ:
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    launched = "WORLD_SIZE" in os.environ  # torchrun sets it, also for one process
    if launched and not td.is_initialized():
        td.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), launched,
                   precision)


def teardown() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
