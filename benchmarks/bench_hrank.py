"""HRank whole-model rank collection: pyprune vs the reference procedure, the strongest
pure-torch alternative, and a plain forward pass (the floor).

For each model (random-init ``pyprune.models``, CIFAR shapes 3x32x32, ``--images`` images
in batches of ``--batch``):

* ``pyprune``: ``pyprune.scores(model, x, method="hrank", data=...)`` -- graph trace,
  one pass with hooks, batched native ``pyprune.ops.matrix_rank`` per hooked tensor;
* (a) ``reference``: the lmbxmu/HRank procedure with ``torch.linalg.matrix_rank``
  substituted for the removed ``torch.matrix_rank``: one hooked layer at a time, the
  network re-run over the images for every layer, a scalar rank per (image, channel)
  map with ``.item()``, the running mean of rank_generation.py.  It is timed on
  ``--ref-images`` images (one run) and scaled linearly to ``--images`` (reported);
* (b) ``torch batched``: one pass, the same hook points, one batched
  ``torch.linalg.matrix_rank`` per hooked tensor and batch;
* (c) ``forward``: a plain ``torch.no_grad`` forward over the same batches.

The hook points of (a) and (b) are the tensors pyprune scores (the ReLU after each
conv -> BN, after the residual add in a ResNet block), one per distinct tensor.
Correctness first: on the first batch, map by map, pyprune's rank equals the count of
a float64 SVD under the float32 tolerance rule wherever no singular value lies within
1% of the tolerance (asserted); how often torch.linalg.matrix_rank (a float32 SVD)
disagrees with pyprune is reported, as is the difference of the whole-model rank sums
of pyprune and (b) over all images and of pyprune and (a) on (a)'s images.  Then timing: pyprune, (b) and (c) interleaved, median of ``--runs`` runs
after a warm-up.

Memory (``--memory``): each of pyprune and (c) runs in a fresh subprocess; after the
model, the data and a one-image warm-up exist, the peak-RSS counter is reset
(``/proc/self/clear_refs``) and the peak resident set (VmHWM) reached during the pass,
minus the resident set before it, is that method's peak memory.  glibc's heap makes
that figure vary from process to process (ResNet-56's plain forward: 36-77 MiB across
processes), so each method runs in ``--memory-repeats`` processes (default 6, the two
methods alternating) and the medians are compared; the JSON keeps every process's figure.

    python benchmarks/bench_hrank.py [--models vgg16_bn resnet56] [--images 500]
        [--batch 100] [--runs 3] [--ref-images 20] [--memory] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median_times, print_table, write_json  # noqa: E402

import pyprune  # noqa: E402
from pyprune.graph_hooks import activation_points  # noqa: E402


def make(model_name: str, images: int, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    model = pyprune.models.get_model(model_name).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(images, 3, 32, 32, generator=g)
    data = [(x[i:i + batch], torch.zeros(min(batch, images - i), dtype=torch.long))
            for i in range(0, images, batch)]
    return model, data


def distinct_points(model, x) -> Dict[Tuple, Tuple[str, List[str]]]:
    """{hook key: (module name, convs scored on it)}; all are module outputs here."""
    pts = activation_points(model, x)
    out: Dict[Tuple, Tuple[str, List[str]]] = {}
    for conv, p in pts.items():
        assert p.where == "output", p
        out.setdefault(p.key, (p.module, []))[1].append(conv)
    return out


def check_maps(model, inputs, points) -> Dict[str, int]:
    """Map-by-map ranks of one batch at every hook point: pyprune vs float64 SVD vs torch."""
    modules = dict(model.named_modules())
    res = {"maps": 0, "ambiguous": 0, "torch_differs": 0}
    eps = torch.finfo(torch.float32).eps

    def hook(mod, inp, outp):
        a = outp.detach()
        n, c, h, w = a.shape
        ours = pyprune.ops.matrix_rank(a)
        theirs = torch.linalg.matrix_rank(a)
        sv = torch.linalg.svdvals(a.double().reshape(n * c, h, w))
        tol = eps * max(h, w) * sv[:, :1]
        exact = (sv > tol).sum(1).reshape(n, c)
        amb = ((sv > tol * 1.01).sum(1) != (sv > tol * 0.99).sum(1)).reshape(n, c)
        assert torch.equal(ours[~amb], exact[~amb]), mod
        res["maps"] += n * c
        res["ambiguous"] += int(amb.sum())
        res["torch_differs"] += int((ours != theirs).sum())

    handles = [modules[name].register_forward_hook(hook) for name, _ in points.values()]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return res


def run_pyprune(model, data, x):
    return pyprune.scores(model, x, method="hrank", data=data, num_images=None, progress=False)


def run_forward(model, data):
    with torch.no_grad():
        for inputs, _ in data:
            model(inputs)


def run_torch_batched(model, data, points):
    modules = dict(model.named_modules())
    sums: Dict[str, torch.Tensor] = {}
    count = [0]
    handles = []
    for key, (name, convs) in points.items():
        def hook(mod, inp, out, _n=name):
            r = torch.linalg.matrix_rank(out).sum(0)
            sums[_n] = sums[_n] + r if _n in sums else r
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            for inputs, _ in data:
                model(inputs)
                count[0] += inputs.shape[0]
    finally:
        for h in handles:
            h.remove()
    out = {}
    for key, (name, convs) in points.items():
        for c in convs:
            out[c] = sums[name].double() / count[0]
    return out


def run_reference(model, data, points):
    """lmbxmu/HRank rank_generation.py, torch.linalg.matrix_rank for torch.matrix_rank."""
    modules = dict(model.named_modules())
    out = {}
    state = {}

    def get_feature_hook(self, input, output):
        a, b = output.shape[0], output.shape[1]
        c = torch.tensor([torch.linalg.matrix_rank(output[i, j, :, :]).item()
                          for i in range(a) for j in range(b)])
        c = c.view(a, -1).float().sum(0)
        state["feature_result"] = state["feature_result"] * state["total"] + c
        state["total"] = state["total"] + a
        state["feature_result"] = state["feature_result"] / state["total"]

    for key, (name, convs) in points.items():
        state["feature_result"], state["total"] = torch.tensor(0.), torch.tensor(0.)
        h = modules[name].register_forward_hook(get_feature_hook)
        try:
            with torch.no_grad():
                for inputs, _ in data:            # the network re-run for every layer
                    model(inputs)
        finally:
            h.remove()
        for c in convs:
            out[c] = state["feature_result"].double()
    return out


def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def memory_child(model_name: str, method: str, images: int, batch: int) -> Dict[str, int]:
    model, data = make(model_name, images, batch)
    x = data[0][0][:1]
    with torch.no_grad():
        model(x)                                   # one-image warm-up (kernels, threads)
    pyprune.scores(model, x, method="hrank", data=[x], progress=False)
    import gc

    gc.collect()
    base = _vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                               # reset the peak-RSS counter
    if method == "pyprune":
        run_pyprune(model, data, x)
    else:
        run_forward(model, data)
    return {"base": base, "peak": _vm("VmHWM"), "delta": _vm("VmHWM") - base}


def measure_memory(model_name: str, images: int, batch: int, repeats: int = 6) -> Dict[str, List[int]]:
    """Every process's peak (bytes) per method, the methods alternating."""
    res: Dict[str, List[int]] = {"pyprune": [], "forward": []}
    for _ in range(repeats):
        for method in res:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_memory-child",
                                  model_name, method, str(images), str(batch)],
                                 capture_output=True, text=True, check=True)
            res[method].append(json.loads(out.stdout.strip().splitlines()[-1])["delta"])
    return res


def steady_heap() -> None:
    """Put glibc's allocator in the state a long-running process reaches, before timing.

    glibc serves blocks above its mmap threshold (128 KiB at start) with fresh pages, and
    raises the threshold to the size of the largest such block freed (at most 32 MiB).
    ResNet-56's activations of a batch of 100 are 6.5 MB: in a fresh process its plain
    forward over 500 images took 2.3-2.6 s, after some larger block had been freed
    (in the full run, by the SVDs of (b)) 1.4 s, and pyprune's collection moves the same
    way; the ratio of the two then depends on which state the process happens to be in.
    Freeing one 24 MiB block first gives every timed method the fast state.
    """
    block = torch.empty(24 << 20, dtype=torch.uint8)
    del block


def floor_only(args, meta) -> int:
    rows, records = [], []
    for name in args.models:
        model, data = make(name, args.images, args.batch)
        x = data[0][0][:1]
        times = median_times({"pyprune": lambda: run_pyprune(model, data, x),
                              "forward": lambda: run_forward(model, data)},
                             runs=args.runs, warmup=1)
        rec = {"model": name, "images": args.images, "batch": args.batch, "runs": args.runs,
               "threads": torch.get_num_threads(), "pyprune_s": times["pyprune"],
               "forward_s": times["forward"], "of_forward": times["pyprune"] / times["forward"]}
        records.append(rec)
        print(json.dumps(rec), flush=True)
        rows.append([name, rec["threads"], f"{rec['forward_s']:.2f}", f"{rec['pyprune_s']:.2f}",
                     f"{rec['of_forward']:.3f}x"])
    print_table(["model", "threads", "(c) fwd s", "pyprune s", "of (c)"], rows)
    write_json(args.json, records, meta)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vgg16_bn", "resnet56"])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ref-images", type=int, default=20)
    p.add_argument("--memory", action="store_true")
    p.add_argument("--memory-repeats", type=int, default=6,
                   help="fresh processes per method for --memory (medians compared)")
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first")
    p.add_argument("--floor-only", action="store_true",
                   help="time pyprune against the plain forward only (no (a), (b), no checks)")
    p.add_argument("--_memory-child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._memory_child:
        name, method, images, batch = args._memory_child
        print(json.dumps(memory_child(name, method, int(images), int(batch))))
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    steady_heap()
    meta = machine("cpu")
    if args.floor_only:
        return floor_only(args, meta)
    print(f"machine: {meta}")
    records = []
    rows = []
    for name in args.models:
        model, data = make(name, args.images, args.batch)
        x = data[0][0][:1]
        points = distinct_points(model, x)
        # correctness first, map by map on the first batch: pyprune's rank of every map
        # equals a float64 SVD's count under the float32 rule (where no singular value
        # lies within 1% of tol); torch.linalg.matrix_rank (a float32 SVD) may differ there
        chk = check_maps(model, data[0][0], points)
        print(f"{name}: first batch, {chk['maps']} maps: pyprune == float64 SVD on every "
              f"unambiguous map ({chk['ambiguous']} ambiguous); torch.linalg.matrix_rank differs "
              f"from pyprune on {chk['torch_differs']} maps")
        ref_data = [(data[0][0][:args.ref_images], None)]
        t0 = time.perf_counter()
        ref = run_reference(model, ref_data, points)
        t_ref = (time.perf_counter() - t0) * args.images / args.ref_images
        ours_small = run_pyprune(model, ref_data, x)
        ref_diff = max(float((ours_small[k] - ref[k]).abs().max()) for k in ref) * args.ref_images
        print(f"{name}: reference on {args.ref_images} images: {t_ref * args.ref_images / args.images:.1f} s; "
              f"max |rank sum difference| vs pyprune {ref_diff:.3g} maps")
        out = {}

        def ours_fn():
            out["pyprune"] = run_pyprune(model, data, x)

        def theirs_fn():
            out["torch"] = run_torch_batched(model, data, points)

        times = median_times({
            "pyprune": ours_fn,
            "torch_batched": theirs_fn,
            "forward": lambda: run_forward(model, data),
        }, runs=args.runs, warmup=1)
        assert set(out["pyprune"]) == set(out["torch"])
        firsts = [convs[0] for _, convs in points.values()]   # one conv per hooked tensor
        total_maps = args.images * sum(model.get_submodule(c).out_channels for c in firsts)
        n_diff = sum(float((out["pyprune"][c] - out["torch"][c]).abs().sum()) * args.images
                     for c in firsts)
        print(f"{name}: all {args.images} images: pyprune and torch batched rank sums differ by "
              f"{n_diff:.0f} (of {total_maps} maps)")
        rec = {"model": name, "images": args.images, "batch": args.batch, "runs": args.runs,
               "maps_checked": chk["maps"], "ambiguous_maps": chk["ambiguous"],
               "torch_differs_first_batch": chk["torch_differs"], "rank_sum_diff_vs_torch": n_diff,
               "total_maps": total_maps, "reference_rank_sum_diff": ref_diff,
               "pyprune_s": times["pyprune"], "torch_batched_s": times["torch_batched"],
               "forward_s": times["forward"], "reference_s_scaled": t_ref,
               "reference_images_timed": args.ref_images,
               "vs_reference": t_ref / times["pyprune"],
               "vs_torch_batched": times["torch_batched"] / times["pyprune"],
               "of_forward": times["pyprune"] / times["forward"]}
        if args.memory:
            mem = measure_memory(name, args.images, args.batch, args.memory_repeats)
            med = {k: statistics.median(v) for k, v in mem.items()}
            rec.update(peak_pyprune_bytes=med["pyprune"], peak_forward_bytes=med["forward"],
                       peak_ratio=med["pyprune"] / max(med["forward"], 1),
                       peak_pyprune_all=mem["pyprune"], peak_forward_all=mem["forward"])
        records.append(rec)
        print(json.dumps(rec), flush=True)
        row = [name, f"{rec['reference_s_scaled']:.1f}", f"{rec['torch_batched_s']:.2f}",
               f"{rec['forward_s']:.2f}", f"{rec['pyprune_s']:.2f}", f"{rec['vs_reference']:.1f}x",
               f"{rec['vs_torch_batched']:.2f}x", f"{rec['of_forward']:.3f}x"]
        if args.memory:
            row += [f"{rec['peak_forward_bytes'] / 2**20:.1f}", f"{rec['peak_pyprune_bytes'] / 2**20:.1f}",
                    f"{rec['peak_ratio']:.3f}"]
        rows.append(row)
    headers = ["model", "(a) ref s*", "(b) torch s", "(c) fwd s", "pyprune s", "vs (a)", "vs (b)",
               "of (c)"]
    if args.memory:
        headers += ["fwd peak MiB (med)", "pyprune peak MiB (med)", "peak ratio"]
    print_table(headers, rows)
    print(f"* (a) timed on {args.ref_images} images, scaled linearly to {args.images}")
    write_json(args.json, records, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
