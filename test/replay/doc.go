// Package replay performs the file-system calls Triton, vLLM and PyTorch
// Inductor make on a compile cache hit and miss, so the cache layouts
// cargohold serves (a plain dir, an extracted image, a FUSE mount) can be
// checked on machines without a GPU or the frameworks. Run (and the replay
// command) replays many keys of one kind (Options.Cache, --cache) in one
// or several processes at once.
//
// # Triton (--cache triton, root TRITON_CACHE_DIR, key a KEY dir)
//
// Model (Triton 3.2–3.7, runtime/cache.py FileCacheManager and compiler.py
// compile/CompiledKernel, under CPython 3.11's io and os modules; checked
// with strace in 2026):
//
// HIT of KEY under ROOT: os.makedirs(ROOT/KEY, exist_ok=True), which is
// stat(ROOT), mkdir(ROOT/KEY) failing EEXIST, stat(ROOT/KEY); then
// os.path.exists and open+read of KEY/__grp__NAME.json; stat of every child
// path it names; then the metadata JSON and every other child read in full.
// Every read is CPython's open(): openat, fstat, ioctl(TCGETS) (ENOTTY,
// ignored), lseek twice, fstat, read(st_size+1), read until 0, close.
// Launcher modules (a KEY holding a .so and no group file) are stat'ed and
// then loaded as dlopen does: open, read the ELF header, fstat, a private
// executable mmap.
//
// MISS: os.makedirs(ROOT/KEY), then per file, group file last, put():
// makedirs(KEY/tmp.pid_<pid>_<uuid4>), create and write the file there
// (openat O_CREAT|O_TRUNC 0666, fstat, ioctl, lseek, write, close),
// os.replace onto KEY/FILE, os.removedirs(tmp): rmdir(tmp), then rmdir(KEY)
// which must fail ENOTEMPTY, where Python stops. Then the entry is read back
// with the full HIT sequence (Triton itself re-reads only the group's
// files, from the paths it holds; the HIT is a superset).
//
// Invariants and deliberate differences: the replay is stricter than
// Python where Triton would misbehave silently: mkdir of an existing KEY
// must fail EEXIST, rmdir of a non-empty KEY must fail (a success is
// ErrRemovedNonEmpty: Python would go on pruning the cache root), fstat
// sizes must equal the bytes read, every child path must be ROOT/KEY/NAME
// (OutsideRootError otherwise), and a missing child is an error, not a
// silent recompile. Triton knows the kernel name; when the caller gives
// none, the replay lists the KEY dir (one extra getdents Triton does not
// make) and takes the single __grp__*.json, or the single .so of a
// launcher.
//
// # vLLM (--cache vllm, root $VLLM_CACHE_ROOT, key a hash dir)
//
// Model (vLLM 0.11–0.13, vllm/compilation/backends.py VllmBackend and
// CompilerManager, compiler_interface.py's two Inductor adaptors; the
// "binary" format is the default since vllm#27616, 2025-10-28; read in
// 2026). A key is <hash> of ROOT/torch_compile_cache/<hash>/; Name is the
// rank dir and prefix, rank_<r>_<dp>[/<prefix>] (older vLLM has no prefix
// level), found by listing where not given. The format comes from the
// compiler names in vllm_compile_cache.py.
//
// HIT: os.makedirs of the hash dir and of the rank/prefix dir (mkdir must
// fail EEXIST; where it makes the dir vLLM compiles: ErrNotFound);
// os.path.exists and a whole read of vllm_compile_cache.py, a pprint'ed
// dict parsed as ast.literal_eval would (key (range, graph index,
// compiler), value the handle (name, path), or in newer vLLM a dict with
// "graph_handle", unverified in vLLM's main); no file or no graph is
// ErrNotFound. Then os.path.exists of cache_key_factors.json and
// computation_graph.py (vLLM writes them only where missing; older vLLM
// has no factors file). Binary format (InductorStandaloneAdaptor): for each
// graph, in file order, the handle's absolute path is stat'ed (isdir must
// be false) and read whole (CompiledArtifact.load). That path must be
// ROOT/torch_compile_cache/<hash>/<name>/<artifact>: a cache served
// elsewhere than it was built needs its paths rewritten, else
// OutsideRootError (vLLM would fail to start). Legacy format
// (InductorAdaptor, torch < 2.8 or VLLM_USE_STANDALONE_COMPILE=0): vLLM
// makes <rank>/inductor_cache and <rank>/triton_cache (its
// TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR), then per graph the
// Inductor FX hit of handle[0] and the hit of its wrapper module (the last
// two elements of handle[1], which vLLM only logs), then the Triton hit of
// every KEY dir of triton_cache once (which kernels a graph bundles is in
// its pickle, which the replay does not read). Nothing is written under
// ROOT. What loading an artifact writes into the process's own Inductor
// dir (/tmp/torchinductor_<user>) is not replayed.
//
// MISS, from a source root: makedirs of the dirs, os.path.exists of the
// cache file (a cold start: an existing one is not read), the factors and
// graph files written with open("w") where missing, each artifact saved
// with open("wb") in place (torch as read, 015f6f77) or, with Atomic
// (--atomic), by write_atomic (newer torch, unverified); the legacy format
// writes the source's Inductor units and Triton KEY dirs instead. Last the
// cache file, whole, with open("w") in place, its paths those of ROOT.
// Then the HIT reads it all back. vLLM writes the cache file without tmp
// or lock, so a process reading it while another saves the same hash sees
// it torn (vLLM would fail to parse it); the read-back re-reads files it
// wrote in place until they hold what it wrote, for up to 5 s. Not
// modelled: AOT compile (torch_aot_compile/), the standalone "unpacked"
// save format (artifacts that are dirs: an error).
//
// # Inductor (--cache inductor, root TORCHINDUCTOR_CACHE_DIR, key a unit)
//
// Model (PyTorch 2.8–2.10 torch/_inductor/codecache.py FxGraphCache,
// PyCodeCache, write_atomic and get_lock_dir, triton_bundler.py,
// runtime/autotune_cache.py, _functorch/_aot_autograd/autograd_cache.py;
// py-filelock's UnixFileLock as of 2026; read in 2026). A key is a unit's
// path under ROOT, with its kind in Result.Kind:
//
//   - fxgraph/<xx>/<key>: HIT os.path.exists, sorted(os.listdir), the first
//     entry read whole (its guards are taken to pass, as under vLLM's
//     AlwaysHitShapeEnv); absent or empty is ErrNotFound. MISS makedirs
//     where missing, write_atomic(make_dirs) of each entry.
//   - aotautograd/<key>: HIT os.path.exists, then <key>/entry read whole
//     (torch 2.6–2.8; newer torch lists the dir like fxgraph, unverified);
//     a dir without its entry is an error. MISS like fxgraph.
//   - <xx>/<name>.py: HIT os.path.exists (absent: Inductor writes it,
//     ErrNotFound) and a whole read; a wrapper module then loads the kernel
//     modules its "# kernel path:" comments name (last two elements), each
//     exists and read, and each kernel's .best_config: <kernel>.best_config
//     (older torch) or else every .best_config beside it (newer torch names
//     it by a hash of the autotune key and torch_key(), which the replay
//     lists for: a getdents Inductor does not make). MISS write_atomic
//     (make_dirs, text) where missing, for a wrapper its kernels and their
//     .best_config too.
//   - <xx>/<name>.best_config: HIT open("rb") and read (missing:
//     ErrNotFound; must be JSON). MISS write_atomic(make_dirs).
//   - triton/<device>/<KEY>: HIT TritonBundler.read_and_emit's
//     os.path.exists and non-empty os.listdir (else ErrNotFound: Inductor
//     writes the bundled kernel), then the Triton HIT under
//     triton/<device>. MISS is read_and_emit writing it: where the dir is
//     absent or empty, Path.mkdir of triton/<device>, os.makedirs of
//     tmp.<uuid4> there, each file written with open("wb") (the group file's
//     paths the KEY dir's, as "[REPLACE]" becomes), os.replace of the tmp
//     dir onto the KEY dir; where another process got there first the rename
//     fails ENOTEMPTY and, as in Inductor, the tmp dir stays; other errors
//     fail the replay.
//   - cache/<name>: the autotune timings JSON. HIT Path.is_file and
//     json.load (must be JSON). MISS write_atomic(make_dirs, text).
//   - locks/<name>.lock: FileLock, the same for HIT and MISS: get_lock_dir's
//     exists and makedirs, Path.mkdir, open O_RDWR|O_CREAT|O_TRUNC|O_NOFOLLOW
//     0644, fchmod, flock(LOCK_EX|LOCK_NB) polled every 50 ms (for up to
//     60 s), fstat (a lock on an unlinked file is dropped and retried); the
//     replay then checks that a second open cannot take the lock
//     (EWOULDBLOCK); release is unlink, flock(LOCK_UN), close. py-filelock
//     3.x of 2024 opens without O_CREAT where the file exists and keeps it:
//     which one a deployment carries varies. Lock files are local state:
//     never listed as units.
//
// write_atomic is: optionally Path.mkdir(parents=True, exist_ok=True) of
// the target's dir, open(".<pid>.<tid>.tmp" there, "w" or "wb"), write,
// rename(2) over the target. Text-mode open("w") makes one lseek more than
// "wb"; json.dump's pieces are modelled as one write.
//
// Checks: TestTorchSyscallsMatchCPython runs testdata/torch_like.py, a
// reduction of the frameworks' code above to its file calls, under strace
// with CPython 3.11 and compares the syscalls with the replay's (the lines
// a trace marks "[replay only]" left out). The frameworks themselves were
// not run: where their code was read at one version only, or not at all,
// the text above says so.
package replay
