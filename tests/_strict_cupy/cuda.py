"""``cupy.cuda`` stubs of the strict stand-in: one fake device, streams, events; syncs are counted."""

from __future__ import annotations

import time
import types
from typing import Any

from ._core import record_sync


class CUDARuntimeError(RuntimeError):
    pass


def _get_device_count() -> int:
    return 1


runtime = types.ModuleType("cupy.cuda.runtime")
runtime.getDeviceCount = _get_device_count
runtime.CUDARuntimeError = CUDARuntimeError
runtime.is_hip = False
runtime.runtimeGetVersion = lambda: 12040
runtime.driverGetVersion = lambda: 12040
runtime.getDevice = lambda: 0
runtime.getDeviceProperties = lambda i=0: {
    "name": b"strict CuPy stand-in (CPU)", "totalGlobalMem": 1 << 34, "major": 9, "minor": 0,
    "multiProcessorCount": 1, "memoryClockRate": 0, "memoryBusWidth": 0}
runtime.deviceSynchronize = lambda: record_sync("cuda.runtime.deviceSynchronize")
runtime.memGetInfo = lambda: (1 << 33, 1 << 34)


def is_available() -> bool:
    return True


class Device:
    def __init__(self, device: Any = None) -> None:
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal (the stand-in has device 0)")

    compute_capability = "90"
    mem_info = property(lambda self: (1 << 33, 1 << 34))

    def synchronize(self) -> None:
        record_sync("cuda.Device.synchronize")

    def use(self) -> None:
        pass

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("Device", self.id))

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id} (strict stand-in)>"


class Stream:
    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False) -> None:
        self.ptr = 0 if null else id(self)

    def synchronize(self) -> None:
        record_sync("cuda.Stream.synchronize")

    def use(self) -> "Stream":
        return self

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def record(self, event: Any = None) -> "Event":
        return Event() if event is None else event


Stream.null = Stream(null=True)
ExternalStream = Stream


def get_current_stream(device_id: int = -1) -> Stream:
    return Stream.null


class Event:
    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        self._t = time.perf_counter()

    def record(self, stream: Any = None) -> None:
        self._t = time.perf_counter()

    def synchronize(self) -> None:
        record_sync("cuda.Event.synchronize")

    @property
    def done(self) -> bool:
        return True


def get_elapsed_time(start: Event, end: Event) -> float:
    return (end._t - start._t) * 1e3


class MemoryPool:
    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        pass

    def set_limit(self, size: Any = None, fraction: Any = None) -> None:
        pass


PinnedMemoryPool = MemoryPool
