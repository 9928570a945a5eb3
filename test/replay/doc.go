// Package replay performs Triton's file-system calls for a kernel cache hit
// and miss, so the cache layouts cargohold serves (a plain dir, an extracted
// image, a FUSE mount) can be checked on machines without a GPU or Triton.
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
package replay
