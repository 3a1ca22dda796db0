"""A CPU stand-in for the worker's `Cuda` helper (QDQ_BRIDGE_TRT_CUDA=fake_cuda:Cuda): device memory is a dict
of bytearrays the fake tensorrt's execution context reads and writes; every timed run takes TICK_MS."""
import ctypes
import itertools

import numpy as np

TICK_MS = 0.25
MEMORY: dict = {}
_pointers = itertools.count(0x1000)


def read(pointer: int, dtype, shape) -> np.ndarray:
    count = int(np.prod(shape))
    return np.frombuffer(MEMORY[pointer], dtype, count=count).reshape(shape).copy()


def write(pointer: int, array: np.ndarray) -> None:
    data = np.ascontiguousarray(array).tobytes()
    MEMORY[pointer][:len(data)] = data


class Event:
    def __init__(self):
        self.tick = 0


class Cuda:
    def __init__(self):
        self.stream = ctypes.c_void_p()  # the default stream, as the worker passes it on
        self.ticks = itertools.count()

    def device_name(self) -> str:
        return "Fake GPU sm_00"

    def alloc(self, nbytes: int) -> int:
        pointer = next(_pointers)
        MEMORY[pointer] = bytearray(max(nbytes, 1))
        return pointer

    def free(self, pointer: int) -> None:
        del MEMORY[pointer]

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        write(pointer, array)

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        array[...] = read(pointer, array.dtype, array.shape)

    def pin(self, array: np.ndarray) -> bool:
        return True

    def unpin(self, array: np.ndarray) -> None:
        pass

    to_device_async = to_device
    to_host_async = to_host

    def synchronize(self) -> None:
        pass

    def event(self) -> Event:
        return Event()

    def record(self, event: Event) -> None:
        event.tick = next(self.ticks)

    def elapsed_ms(self, start: Event, end: Event) -> float:
        return (end.tick - start.tick) * TICK_MS

    def capture(self, enqueue):
        return enqueue  # the "graph" replays what was enqueued

    def launch(self, instance) -> None:
        instance()

    def destroy(self, instance) -> None:
        pass
