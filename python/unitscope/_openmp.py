"""One OpenMP runtime per process. On Linux unitscope._C is built without linking an OpenMP runtime
(CMakeLists.txt): its OpenMP symbols bind, when it is imported, to the runtime torch has loaded
(torch's wheel brings its own libgomp), made global here first. No runtime loaded: the system's."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re

_RUNTIME = re.compile(r"^lib(gomp|iomp5|omp)([-.].*)?\.so(\.\d+)*$")


def mapped_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (/proc/self/maps; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/") and _RUNTIME.match(os.path.basename(p)))


def make_global() -> str | None:
    """Promote the OpenMP runtime already loaded (torch's) to the global symbol scope, or load the
    system's libgomp there when none is; returns its path or name, None when there is nothing to do."""
    if not os.path.exists("/proc/self/maps"):
        return None  # not Linux: the module links its runtime itself
    loaded = mapped_runtimes()
    name = loaded[0] if loaded else ctypes.util.find_library("gomp")
    if name is None:
        return None
    try:
        ctypes.CDLL(name, mode=os.RTLD_GLOBAL | (os.RTLD_NOLOAD if loaded else 0))
    except OSError:
        return None
    return name
