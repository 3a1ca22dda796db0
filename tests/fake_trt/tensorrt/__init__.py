"""A stand-in `tensorrt` for CPU tests of the worker protocol: behaves as FAKE_TRT_MODE says."""
import os
import signal
import time

__version__ = "0.0-fake"
_MODE = os.environ.get("FAKE_TRT_MODE", "ok")


class Logger:
    WARNING = 2

    def __init__(self, level):
        pass


class NetworkDefinitionCreationFlag:
    EXPLICIT_BATCH = 0


class BuilderFlag:
    INT8 = 0
    FP16 = 1


class IExecutionContext:
    def execute_async_v3(self, stream):
        return True


class ICudaEngine:
    pass


class Builder:
    def __init__(self, logger):
        if _MODE == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if _MODE == "hang":
            time.sleep(3600)
        self.platform_has_fast_int8 = True
        self.platform_has_fast_fp16 = True
