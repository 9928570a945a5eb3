#!/usr/bin/env python3
"""Three small Triton kernels of our own, launched once each and checked
against PyTorch. e2e.sh runs this in fresh processes against a cold cache,
a cargohold-fs mount and a cargohold -e extraction of the same cache.

Kernels (different signatures and dtypes, so the cache holds several
distinct KEY dirs plus the launcher modules):
  vector_add   fp32, pointer args + an int length + a constexpr block
  row_softmax  fp16 in/out (fp32 math), row strides + a constexpr block
  matmul_scale bf16 tl.dot (fp32 accumulate) with a float scalar, int
               sizes and strides, three constexpr tile sizes

Output: one JSON line on stdout. first_launch_s is the time from the
launch call to a synchronised result for the first launch in this process:
JIT compile or cache load included (the first kernel also pays for Triton's
driver-utility module). Exit 0 when every kernel matches PyTorch, 1 on a
mismatch or error, 2 when torch/triton/CUDA are missing.

With --check-env it only reports, as JSON, whether torch and triton import
and CUDA is usable, and exits 0: the no-GPU path of e2e.sh (and CI) uses it.
"""
import json
import os
import sys
import time

T_START = time.perf_counter()


def check_env():
    """What this host offers: versions, device, target, and why not."""
    env = {"torch": None, "triton": None, "cuda": False, "device": None,
           "capability": None, "target": None, "reason": ""}
    try:
        import torch
        env["torch"] = torch.__version__
    except Exception as e:  # ImportError, or a broken install
        env["reason"] = "torch not importable: %s" % e
        return env
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception as e:
        env["reason"] = "triton not importable: %s" % e
    try:
        if not torch.cuda.is_available():
            env["reason"] = (env["reason"] + "; " if env["reason"] else "") + \
                "torch.cuda.is_available() is False (no usable CUDA GPU or driver)"
            return env
        if torch.version.hip:
            env["reason"] = (env["reason"] + "; " if env["reason"] else "") + \
                "ROCm build of torch: this check is written for NVIDIA (cuda) targets"
            return env
        major, minor = torch.cuda.get_device_capability(0)
        env["cuda"] = True
        env["device"] = torch.cuda.get_device_name(0)
        env["capability"] = [major, minor]
        # Triton's cuda target: arch = 10*major+minor, warp size 32.
        env["target"] = "cuda:%d:32" % (major * 10 + minor)
    except Exception as e:
        env["reason"] = (env["reason"] + "; " if env["reason"] else "") + "CUDA probe failed: %s" % e
    return env


def define_kernels(triton, tl):
    """The kernels, defined only once triton imported (CPU hosts parse this file too)."""

    @triton.jit
    def vector_add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        y = tl.load(y_ptr + offs, mask=mask)
        tl.store(out_ptr + offs, x + y, mask=mask)

    @triton.jit
    def row_softmax(out_ptr, in_ptr, in_stride, out_stride, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(in_ptr + row * in_stride + cols, mask=mask, other=-float("inf")).to(tl.float32)
        x = x - tl.max(x, axis=0)
        e = tl.exp(x)
        y = e / tl.sum(e, axis=0)
        tl.store(out_ptr + row * out_stride + cols, y.to(tl.float16), mask=mask)

    @triton.jit
    def matmul_scale(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                     stride_cm, stride_cn, alpha,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + rk
            a = tl.load(a_ptr + rm[:, None] * stride_am + ks[None, :] * stride_ak,
                        mask=(rm[:, None] < M) & (ks[None, :] < K), other=0.0)
            b = tl.load(b_ptr + ks[:, None] * stride_bk + rn[None, :] * stride_bn,
                        mask=(ks[:, None] < K) & (rn[None, :] < N), other=0.0)
            acc += tl.dot(a, b)
        c = (acc * alpha).to(tl.bfloat16)
        tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, c,
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    return vector_add, row_softmax, matmul_scale


def cases(torch, triton, kernels):
    """(name, launch, reference, result tensor, tolerances) per kernel; fixed sizes and seed,
    so every process asks Triton for the same specialisations (the same KEYs)."""
    vector_add, row_softmax, matmul_scale = kernels
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(1234)

    n = 98432
    x = torch.rand(n, device=dev, generator=g, dtype=torch.float32)
    y = torch.rand(n, device=dev, generator=g, dtype=torch.float32)
    add_out = torch.empty_like(x)

    def add():
        vector_add[(triton.cdiv(n, 1024),)](x, y, add_out, n, BLOCK=1024)

    rows, cols = 256, 781
    s_in = torch.randn(rows, cols, device=dev, generator=g, dtype=torch.float16)
    s_out = torch.empty_like(s_in)

    def softmax():
        row_softmax[(rows,)](s_out, s_in, s_in.stride(0), s_out.stride(0), cols,
                             BLOCK=triton.next_power_of_2(cols))

    M, N, K, alpha = 200, 192, 256, 0.5
    a = torch.randn(M, K, device=dev, generator=g, dtype=torch.bfloat16)
    b = torch.randn(K, N, device=dev, generator=g, dtype=torch.bfloat16)
    c = torch.empty(M, N, device=dev, dtype=torch.bfloat16)

    def matmul():
        grid = (triton.cdiv(M, 64), triton.cdiv(N, 64))
        matmul_scale[grid](a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                           c.stride(0), c.stride(1), alpha, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)

    return [
        ("vector_add_fp32", add, lambda: x + y, add_out, {}),
        ("row_softmax_fp16", softmax, lambda: torch.softmax(s_in.float(), dim=1).half(), s_out,
         {"rtol": 2e-3, "atol": 1e-5}),
        ("matmul_scale_bf16", matmul, lambda: (a.float() @ b.float() * alpha).to(torch.bfloat16), c,
         {"rtol": 1.6e-2, "atol": 1e-2}),
    ]


def run():
    env = check_env()
    out = {"ok": False, "env": env, "cache_dir": os.environ.get("TRITON_CACHE_DIR"), "kernels": []}
    if not env["cuda"] or env["triton"] is None:
        out["error"] = "cannot run kernels: " + env["reason"]
        print(json.dumps(out))
        return 2
    import torch
    import triton
    import triton.language as tl
    out["import_s"] = round(time.perf_counter() - T_START, 4)

    t = time.perf_counter()
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # CUDA context before any timing of Triton
    torch.cuda.synchronize()
    kernels = define_kernels(triton, tl)
    todo = cases(torch, triton, kernels)
    torch.cuda.synchronize()
    out["setup_s"] = round(time.perf_counter() - t, 4)

    ok = True
    launch = 0.0
    for name, fn, ref, result, tol in todo:
        k = {"name": name, "ok": False}
        try:
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            k["first_launch_s"] = round(time.perf_counter() - t, 4)
            launch += k["first_launch_s"]
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            k["second_launch_s"] = round(time.perf_counter() - t, 6)
            torch.testing.assert_close(result, ref(), **tol)
            k["ok"] = True
        except Exception as e:  # a mismatch or a compile/launch error: report, go on
            k["error"] = ("%s: %s" % (type(e).__name__, e))[:2000]
            ok = False
        out["kernels"].append(k)
    out["ok"] = ok
    out["launch_s"] = round(launch, 4)
    out["wall_s"] = round(time.perf_counter() - T_START, 4)
    print(json.dumps(out))
    return 0 if ok else 1


def main(argv):
    if argv[1:] == ["--check-env"]:
        print(json.dumps(check_env()))
        return 0
    if argv[1:]:
        print("usage: kernels.py [--check-env]", file=sys.stderr)
        return 2
    return run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
