"""build_info() and the rule that the native module does not link libtorch."""
import torch

import pyprune
from pyprune import _C


def test_build_info_fields():
    info = pyprune.build_info()
    assert info["version"] == pyprune.__version__
    assert isinstance(info["cuda"], bool)
    assert info["cpu_isa"] in ("avx2", "generic")
    assert info["threads"] == torch.get_num_threads()
    assert info["hardware_threads"] >= 1
    if info["cuda"]:
        assert info["cuda_archs"] and all(a.split("-")[0].isdigit() for a in info["cuda_archs"])
        assert info["cuda_runtime_version"] > 0
        # the statically linked runtime sees the same devices as torch (none on a CPU-only machine)
        assert info["cuda_devices"] == torch.cuda.device_count()
    else:
        assert info["cuda_archs"] == [] and info["cuda_devices"] == 0


def test_thread_override_is_reported():
    pyprune.ops.set_num_threads(1)
    try:
        assert pyprune.build_info()["threads"] == 1
    finally:
        pyprune.ops.set_num_threads(None)


def test_native_module_does_not_link_libtorch():
    with open(_C.__file__, "rb") as f:
        blob = f.read()
    for lib in (b"libtorch", b"libc10", b"libcusolver", b"libcublas"):
        assert lib not in blob, f"{_C.__file__} references {lib.decode()}"


def test_public_names():
    for name in ("matrix_rank", "select_channels_", "select_channels", "set_num_threads", "get_num_threads"):
        assert name in pyprune.ops.__all__ and callable(getattr(pyprune.ops, name))
    assert "build_info" in pyprune.__all__
