"""build_info() and the rule that the native module does not link libtorch."""
import multiprocessing
import os
import sys

import pytest
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


def test_cpu_kernels_run_on_torchs_openmp_threads():
    """With torch's OpenMP runtime loaded, the CPU kernels run their blocks on
    its threads (not on a second pool competing with them for the cores)."""
    backend = pyprune.build_info()["thread_backend"]
    if sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info():
        assert backend in ("libgomp.so.1", "libomp.so", "libomp.so.5", "libiomp5.so")
    else:
        assert isinstance(backend, str) and backend


def _rank_in_child(x, q):
    q.put(pyprune.ops.matrix_rank(x, threads=2).tolist())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_parallel_kernels_work_in_a_forked_child():
    """OpenMP's team threads do not survive a fork (a parallel region in the
    child would hang): a forked child runs the kernels on pyprune's own pool."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, 16, generator=g) @ torch.randn(64, 16, 16, generator=g)  # 64 maps
    x[::3, :, 5:] = 0
    expect = pyprune.ops.matrix_rank(x, threads=2).tolist()  # the parent has run parallel regions
    torch.randn(1000, 1000).exp().sum()
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_rank_in_child, args=(x, q))
    p.start()
    p.join(60)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive, "matrix_rank hung in a forked child"
    assert p.exitcode == 0 and q.get(timeout=5) == expect


def test_concurrent_calls_from_python_threads():
    """Calls from several Python threads at once (each its own OpenMP team,
    or queued on the pool) give the same results as one at a time."""
    import threading

    g = torch.Generator().manual_seed(2)
    x = torch.randn(128, 24, 24, generator=g)
    x[::5, :, 7:] = 0
    ref = pyprune.ops.matrix_rank(x, threads=2)
    w0 = torch.randn(256, 200, 3, 3, generator=g)
    k0, k1 = torch.arange(0, 256, 3), torch.arange(1, 200, 2)
    wref = w0[k0][:, k1].clone()
    bad = []

    def work():
        for _ in range(10):
            if not torch.equal(pyprune.ops.matrix_rank(x, threads=2), ref):
                bad.append("matrix_rank")
            w = w0.clone()
            pyprune.ops.select_channels_([(w, 0), (w, 1)], [k0, k1], threads=2)
            if not torch.equal(w, wref):
                bad.append("select_channels_")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, bad


def test_thread_backend_can_be_forced_to_the_own_pool(tmp_path):
    """PYPRUNE_THREAD_BACKEND=pool keeps the kernels off the OpenMP runtime;
    the results are the same."""
    import json
    import subprocess

    code = (
        "import json, torch, pyprune\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(64, 20, 20, generator=g); x[::4, :, 3:] = 0\n"
        "w = torch.randn(300, 200, 3, 3, generator=g)\n"
        "k0, k1 = torch.arange(0, 300, 2), torch.arange(0, 200, 3)\n"
        "ref = w[k0][:, k1].clone()\n"
        "pyprune.ops.select_channels_([(w, 0), (w, 1)], [k0, k1], threads=2)\n"
        "print(json.dumps([pyprune.build_info()['thread_backend'], torch.equal(w, ref),\n"
        "                  pyprune.ops.matrix_rank(x, threads=2).tolist()]))\n"
    )
    env = dict(os.environ, PYPRUNE_THREAD_BACKEND="pool")
    # (run outside the checkout, so that the child imports the installed package)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    backend, same, ranks = json.loads(out.stdout.strip().splitlines()[-1])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, 20, generator=g)
    x[::4, :, 3:] = 0
    assert backend == "pyprune pool" and same
    assert ranks == pyprune.ops.matrix_rank(x, threads=2).tolist()
