# What vLLM (0.11-0.13, vllm/compilation/backends.py, compiler_interface.py)
# and PyTorch Inductor (2.8-2.10, torch/_inductor/codecache.py,
# triton_bundler.py, autotune_cache.py, torch._functorch autograd_cache.py;
# py-filelock's UnixFileLock) do with their cache dirs on a hit and a miss,
# reduced to their file-system calls, for comparing the replay's syscalls
# with CPython's under strace. What the frameworks know without looking
# (kernel names, which autotune file belongs to a kernel, which Triton KEYs
# a graph bundles) is found before the begin marker, so that only the
# cache traffic lies between the markers.
#
#   python3 torch_like.py vllm-hit      ROOT HASH NAME
#   python3 torch_like.py vllm-miss     ROOT HASH NAME SRC atomic|inplace
#   python3 torch_like.py inductor-hit  ROOT UNIT...
#   python3 torch_like.py inductor-miss ROOT SRC UNIT...
import ast
import fcntl
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path


def begin():
    try:
        os.stat("/__replay_begin__")
    except OSError:
        pass


def end():
    try:
        os.stat("/__replay_end__")
    except OSError:
        pass


# --- torch._inductor.codecache -------------------------------------------


def write_atomic(path_, content, make_dirs=False):
    path = Path(path_)
    if make_dirs:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.parent / f".{os.getpid()}.{threading.get_ident()}.tmp"
    write_mode = "w" if isinstance(content, str) else "wb"
    with tmp_path.open(write_mode) as f:
        f.write(content)
    tmp_path.rename(target=path)


# --- Triton (as in triton_like.py) ----------------------------------------


def triton_hit(root, key, name):
    kd = os.path.join(root, key)
    os.makedirs(kd, exist_ok=True)
    grp = os.path.join(kd, f"__grp__{name}.json")
    assert os.path.exists(grp)
    with open(grp) as f:
        children = json.load(f)["child_paths"]
    for p in children.values():
        assert os.path.exists(p)
    meta = name + ".json"
    with open(children[meta]) as f:
        f.read()
    for c, p in children.items():
        if c != meta:
            with open(p, "rb") as f:
                f.read()


def put(kd, filename, data):
    tmp = os.path.join(kd, f"tmp.pid_{os.getpid()}_{uuid.uuid4()}")
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, filename), "wb") as f:
        f.write(data)
    os.replace(os.path.join(tmp, filename), os.path.join(kd, filename))
    os.removedirs(tmp)


def group_name(kd):
    return [n for n in os.listdir(kd) if n.startswith("__grp__")][0][7:-5]


# --- Inductor units -------------------------------------------------------


def kernel_plan(root, wrapper_source):
    """The kernel modules a wrapper loads, each with its autotune files."""
    plan = []
    for line in wrapper_source.splitlines():
        if line.startswith("# kernel path: "):
            rel = "/".join(line.split()[-1].split("/")[-2:])
            d = os.path.dirname(rel)
            stem = os.path.basename(rel)[: -len(".py")]
            bcs = sorted(n for n in os.listdir(os.path.join(root, d)) if n.endswith(".best_config"))
            if stem + ".best_config" in bcs:
                bcs = [stem + ".best_config"]
            if rel not in [k for k, _ in plan]:
                plan.append((rel, [d + "/" + b for b in bcs]))
    return plan


def hit_plan(root, unit):
    """What the framework knows before it looks: per unit kind, the
    kernel modules a wrapper runs, the kernel name of a Triton entry."""
    path = os.path.join(root, unit)
    if unit.endswith(".py"):
        with open(path) as f:
            return kernel_plan(root, f.read())
    if unit.startswith("triton/"):
        return group_name(path)
    return None


def inductor_hit(root, unit, plan):
    path = os.path.join(root, unit)
    if unit.startswith("fxgraph/"):
        # FxGraphCache._lookup_graph / GuardedCache.iterate_over_candidates
        assert os.path.exists(path)
        for name in sorted(os.listdir(path)):
            with open(os.path.join(path, name), "rb") as f:
                f.read()
            break
    elif unit.startswith("aotautograd/"):
        # AOTAutogradCache._lookup
        assert os.path.exists(path)
        with open(os.path.join(path, "entry"), "rb") as f:
            f.read()
    elif unit.endswith(".py"):
        # write_to_disk's exists, PyCodeCache's load; then the kernels
        assert os.path.exists(path)
        with open(path) as f:
            f.read()
        for rel, bcs in plan:
            assert os.path.exists(os.path.join(root, rel))
            with open(os.path.join(root, rel)) as f:
                f.read()
            for bc in bcs:
                with open(os.path.join(root, bc), "rb") as f:
                    f.read()
    elif unit.endswith(".best_config"):
        with open(path, "rb") as f:
            f.read()
    elif unit.startswith("triton/"):
        # TritonBundler.read_and_emit finds the dir, then Triton hits it
        assert os.path.exists(path) and len(os.listdir(path)) != 0
        triton_hit(os.path.dirname(path), os.path.basename(path), plan)
    elif unit.startswith("cache/"):
        # CacheBase.get_local_cache
        assert Path(path).is_file()
        with open(path) as f:
            json.load(f)
    elif unit.startswith("locks/"):
        file_lock(path)


def file_lock(path):
    # codecache.get_lock_dir, then py-filelock's UnixFileLock
    lock_dir = os.path.dirname(path)
    if not os.path.exists(lock_dir):
        os.makedirs(lock_dir, exist_ok=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_TRUNC | os.O_NOFOLLOW | os.O_CREAT, 0o644)
        try:
            os.fchmod(fd, 0o644)
        except PermissionError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            time.sleep(0.05)
            continue
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)
            continue
        break
    try:
        Path(path).unlink()
    except OSError:
        pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def read_source(src, unit):
    """The source files a miss writes, read before the begin marker."""
    path = os.path.join(src, unit)
    if os.path.isdir(path):
        out = {}
        for n in sorted(os.listdir(path)):
            with open(os.path.join(path, n), "rb") as f:
                out[n] = f.read()
        return out
    if unit.startswith("locks/"):
        return None
    with open(path, "rb") as f:
        data = f.read()
    if unit.endswith(".py") or unit.startswith("cache/"):
        data = data.decode()
    return data


def inductor_miss(root, unit, data, src_plan):
    path = os.path.join(root, unit)
    if unit.startswith("fxgraph/") or unit.startswith("aotautograd/"):
        if not os.path.exists(path):
            os.makedirs(path, exist_ok=True)
        for n, content in data.items():
            write_atomic(os.path.join(path, n), content, make_dirs=unit.startswith("fxgraph/"))
    elif unit.endswith(".py"):
        if not os.path.exists(path):
            write_atomic(path, data, make_dirs=True)
        for rel, kernel_data, bcs in src_plan:
            if not os.path.exists(os.path.join(root, rel)):
                write_atomic(os.path.join(root, rel), kernel_data, make_dirs=True)
            for bc, bc_data in bcs:
                write_atomic(os.path.join(root, bc), bc_data, make_dirs=True)
    elif unit.endswith(".best_config") or unit.startswith("cache/"):
        write_atomic(path, data, make_dirs=True)
    elif unit.startswith("triton/"):
        # TritonBundler.read_and_emit
        basedir = os.path.dirname(path)
        if os.path.exists(path) and len(os.listdir(path)) != 0:
            return
        Path(basedir).mkdir(parents=True, exist_ok=True)
        tmp_dir = os.path.join(basedir, f"tmp.{uuid.uuid4()}")
        os.makedirs(tmp_dir)
        for n, content in data.items():
            with open(os.path.join(tmp_dir, n), "wb") as f:
                f.write(content)
        os.replace(tmp_dir, path)
    elif unit.startswith("locks/"):
        file_lock(path)


def miss_plan(root, src, unit, data):
    if unit.endswith(".py"):
        plan = []
        for rel, bcs in kernel_plan(src, data):
            with open(os.path.join(src, rel)) as f:
                kernel = f.read()
            bc_data = []
            for bc in bcs:
                with open(os.path.join(src, bc), "rb") as f:
                    bc_data.append((bc, f.read()))
            plan.append((rel, kernel, bc_data))
        return plan
    if unit.startswith("triton/"):
        # The bundle's .json payloads get the kernel dir for [REPLACE]:
        # here the group file's paths.
        key = os.path.basename(unit)
        for n in data:
            if n.startswith("__grp__"):
                children = json.loads(data[n])["child_paths"]
                tail = data[n].decode()[len(data[n].decode().rstrip()):]
                group = {c: os.path.join(root, unit, c) for c in children}
                data[n] = (json.dumps({"child_paths": group}) + tail).encode()
        return key
    return None


# --- vLLM -----------------------------------------------------------------


def vllm_hit(root, h, name, plan):
    cache_dir = os.path.join(root, "torch_compile_cache", h)
    os.makedirs(cache_dir, exist_ok=True)
    local = os.path.join(cache_dir, name)
    os.makedirs(local, exist_ok=True)
    # CompilerManager.initialize_cache
    cache_file = os.path.join(local, "vllm_compile_cache.py")
    assert os.path.exists(cache_file)
    with open(cache_file) as f:
        cache = ast.literal_eval(f.read())
    legacy = all(k[2] == "inductor" for k in cache)
    rank_dir = os.path.join(cache_dir, name.split("/")[0])
    if legacy:
        # InductorAdaptor.initialize_cache
        os.makedirs(os.path.join(rank_dir, "inductor_cache"), exist_ok=True)
        os.makedirs(os.path.join(rank_dir, "triton_cache"), exist_ok=True)
    os.path.exists(os.path.join(local, "cache_key_factors.json"))
    os.path.exists(os.path.join(local, "computation_graph.py"))
    if not legacy:
        for handle in cache.values():
            # InductorStandaloneAdaptor.load, CompiledArtifact.load
            path = handle[1]
            assert not os.path.isdir(path)
            with open(path, "rb") as f:
                f.read()
        return
    ind = os.path.join(rank_dir, "inductor_cache")
    for handle in cache.values():
        fx = "fxgraph/" + handle[0][1:3] + "/" + handle[0]
        module = "/".join(handle[1].split("/")[-2:])
        inductor_hit(ind, fx, None)
        inductor_hit(ind, module, plan[module])
    tc = os.path.join(rank_dir, "triton_cache")
    for key, kname in plan["triton"]:
        kd = os.path.join(tc, key)
        assert os.path.exists(kd) and len(os.listdir(kd)) != 0
        triton_hit(tc, key, kname)


def vllm_plan(root, h, name):
    local = os.path.join(root, "torch_compile_cache", h, name)
    with open(os.path.join(local, "vllm_compile_cache.py")) as f:
        cache = ast.literal_eval(f.read())
    rank_dir = os.path.join(root, "torch_compile_cache", h, name.split("/")[0])
    ind = os.path.join(rank_dir, "inductor_cache")
    plan = {}
    for handle in cache.values():
        if handle[1].endswith(".py"):
            module = "/".join(handle[1].split("/")[-2:])
            plan[module] = hit_plan(ind, module)
    tc = os.path.join(rank_dir, "triton_cache")
    if os.path.isdir(tc):
        plan["triton"] = [(k, group_name(os.path.join(tc, k))) for k in sorted(os.listdir(tc))]
    return plan


def vllm_miss(root, h, name, src, atomic):
    src_local = os.path.join(src, "torch_compile_cache", h, name)
    with open(os.path.join(src_local, "vllm_compile_cache.py")) as f:
        text = f.read()
    cache = ast.literal_eval(text)
    old = list(cache.values())[0][1].split("/torch_compile_cache/")[0]
    text = text.replace("'" + old + "/torch_compile_cache/", "'" + root + "/torch_compile_cache/")
    meta = {}
    for n in ["cache_key_factors.json", "computation_graph.py"]:
        with open(os.path.join(src_local, n)) as f:
            meta[n] = f.read()
    artifacts = []
    for handle in cache.values():
        with open(os.path.join(src_local, handle[0]), "rb") as f:
            artifacts.append((handle[0], f.read()))
    begin()
    cache_dir = os.path.join(root, "torch_compile_cache", h)
    os.makedirs(cache_dir, exist_ok=True)
    local = os.path.join(cache_dir, name)
    os.makedirs(local, exist_ok=True)
    cache_file = os.path.join(local, "vllm_compile_cache.py")
    os.path.exists(cache_file)
    for n, content in meta.items():
        if not os.path.exists(os.path.join(local, n)):
            with open(os.path.join(local, n), "w") as f:
                f.write(content)
    for n, content in artifacts:
        # CompiledArtifact.save(path, "binary")
        if atomic:
            write_atomic(os.path.join(local, n), content)
        else:
            with open(os.path.join(local, n), "wb") as f:
                f.write(content)
    # CompilerManager.save_to_file
    with open(cache_file, "w") as f:
        f.write(text)
    vllm_hit(root, h, name, {})
    end()


def main():
    mode, root = sys.argv[1:3]
    if mode == "vllm-hit":
        h, name = sys.argv[3:5]
        plan = vllm_plan(root, h, name)
        begin()
        vllm_hit(root, h, name, plan)
        end()
    elif mode == "vllm-miss":
        h, name, src, how = sys.argv[3:7]
        vllm_miss(root, h, name, src, how == "atomic")
    elif mode == "inductor-hit":
        units = sys.argv[3:]
        plans = [hit_plan(root, u) for u in units]
        begin()
        for unit, plan in zip(units, plans):
            inductor_hit(root, unit, plan)
        end()
    elif mode == "inductor-miss":
        src, units = sys.argv[3], sys.argv[4:]
        data = [read_source(src, u) for u in units]
        plans = [miss_plan(root, src, u, d) for u, d in zip(units, data)]
        os.makedirs(root, exist_ok=True)
        begin()
        for unit, d, plan in zip(units, data, plans):
            inductor_miss(root, unit, d, plan)
        end()


main()
