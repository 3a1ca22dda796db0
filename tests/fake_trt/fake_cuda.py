"""A CPU stand-in for the worker's `Cuda` helper (QDQ_BRIDGE_TRT_CUDA=fake_cuda:Cuda): device memory is a dict
of bytearrays the fake tensorrt's execution context reads and writes; every timed run takes TICK_MS. Work is done
when it is put on a stream, so streams and events only order what is already in order; a captured "graph" replays
the executions enqueued during its capture with the shapes and addresses they had then, as a real one does."""
import ctypes
import itertools

import numpy as np

TICK_MS = 0.25
MEMORY: dict = {}
CAPTURING: list | None = None  # during a capture, the fake execution context appends its runs here
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

    def to_device_async(self, pointer: int, array: np.ndarray, stream=None) -> None:
        write(pointer, array)

    def to_host_async(self, array: np.ndarray, pointer: int, stream=None) -> None:
        array[...] = read(pointer, array.dtype, array.shape)

    def new_stream(self) -> ctypes.c_void_p:
        return ctypes.c_void_p()

    def synchronize(self) -> None:
        pass

    def event(self, timed: bool = True) -> Event:
        return Event()

    def record(self, event: Event, stream=None) -> None:
        event.tick = next(self.ticks)

    def wait(self, stream, event: Event) -> None:
        pass

    def wait_host(self, event: Event) -> None:
        pass

    def make_current(self) -> None:
        pass

    def elapsed_ms(self, start: Event, end: Event) -> float:
        return (end.tick - start.tick) * TICK_MS

    def capture(self, enqueue):
        global CAPTURING
        CAPTURING = []
        try:
            enqueue()
        finally:
            runs, CAPTURING = CAPTURING, None
        return lambda: [run() for run in runs]

    def launch(self, instance) -> None:
        if not all(instance()):  # an execution that fails inside a graph fails its launch
            raise RuntimeError("cuGraphLaunch failed with CUDA error 719")

    def destroy(self, instance) -> None:
        pass
