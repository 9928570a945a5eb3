# What Triton 3.2-3.7 does on a cache hit and miss (runtime/cache.py
# FileCacheManager, compiler.py compile/CompiledKernel), reduced to its
# file-system calls, for comparing the replay's syscalls with CPython's
# under strace. Sources are read before the begin marker so that only the
# cache traffic lies between the markers.
#
#   python3 triton_like.py hit  ROOT KEY NAME
#   python3 triton_like.py miss ROOT KEY NAME SRCDIR
import json
import os
import sys
import uuid


def put(kd, filename, data):
    tmp = os.path.join(kd, f"tmp.pid_{os.getpid()}_{uuid.uuid4()}")
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, filename), "wb") as f:
        f.write(data)
    os.replace(os.path.join(tmp, filename), os.path.join(kd, filename))
    os.removedirs(tmp)


def hit(root, key, name):
    kd = os.path.join(root, key)
    os.makedirs(kd, exist_ok=True)
    grp = os.path.join(kd, f"__grp__{name}.json")
    if not os.path.exists(grp):
        sys.exit(3)
    with open(grp) as f:
        children = json.load(f)["child_paths"]
    for p in children.values():
        if not os.path.exists(p):
            sys.exit(4)
    meta = name + ".json"
    with open(children[meta]) as f:
        f.read()
    for c, p in children.items():
        if c != meta:
            with open(p, "rb") as f:
                f.read()


def main():
    mode, root, key, name = sys.argv[1:5]
    files = []
    if mode == "miss":
        src = os.path.join(sys.argv[5], key)
        grp = f"__grp__{name}.json"
        with open(os.path.join(src, grp)) as f:
            raw = f.read()
        children = json.loads(raw)["child_paths"]
        tail = raw[len(raw.rstrip()):]  # the shared test data ends in a newline
        for c in children:
            with open(os.path.join(src, c), "rb") as f:
                files.append((c, f.read()))
        group = {c: os.path.join(root, key, c) for c in children}
        files.append((grp, (json.dumps({"child_paths": group}) + tail).encode()))
    try:
        os.stat("/__replay_begin__")
    except OSError:
        pass
    if mode == "miss":
        kd = os.path.join(root, key)
        os.makedirs(kd, exist_ok=True)
        for c, data in files:
            put(kd, c, data)
    hit(root, key, name)
    try:
        os.stat("/__replay_end__")
    except OSError:
        pass


main()
