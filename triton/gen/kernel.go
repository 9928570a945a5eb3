package gen

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strconv"

	"cargohold/gpu"
)

// kernelFiles makes the files of kernel i in the order Triton 3.2–3.7's
// compile() puts them: one per stage, then the metadata JSON, then the group.
func (o *Options) kernelFiles(r *rand.Rand, i int, hash string) []file {
	t := o.Targets[i%len(o.Targets)]
	name := kernelName(r, i)
	// One complexity per kernel, skewed small: most kernels a model compiles
	// are pointwise, a few are matmuls and attention.
	u := r.Float64()
	c := u * u
	k := &kernelText{r: r, name: name, t: t, c: c}
	ir, bin := "ptx", "cubin"
	if t.Backend == "hip" {
		ir, bin = "amdgcn", "hsaco"
	}
	files := []file{
		{name: name + ".ttir", data: k.ttir(o.size(r, c, 2<<10, 30<<10))},
		{name: name + ".ttgir", data: k.ttgir(o.size(r, c, 3<<10, 40<<10))},
		{name: name + ".llir", data: k.llir(o.size(r, c, 4<<10, 60<<10))},
		{name: name + "." + ir, data: k.asm(o.size(r, c, 5<<10, 60<<10))},
		{name: name + "." + bin, data: elfBytes(r, elfFor(t), name, o.size(r, c, 5<<10, 200<<10))},
		{name: name + ".json", data: metadata(r, hash, name, t, c)},
	}
	for i := range files {
		files[i].mode = 0o644
	}
	return append(files, file{name: "__grp__" + name + ".json", mode: 0o644, group: true})
}

// size draws a file size between lo and hi (log scale, by complexity c),
// jittered, times the scale.
func (o *Options) size(r *rand.Rand, c float64, lo, hi int) int {
	s := float64(lo) * math.Pow(float64(hi)/float64(lo), c) * (0.85 + 0.3*r.Float64())
	return max(int(s*o.Scale), 256)
}

var (
	inductorKinds = []string{"poi", "poi", "poi", "red", "per", "tem"}
	inductorOps   = []string{"add", "mul", "relu", "sigmoid", "cat", "mean", "native_layer_norm", "_softmax",
		"convolution", "view", "clone", "addmm", "gelu", "embedding", "sum", "pow", "rsqrt", "div", "sub",
		"exp", "tanh", "where", "index", "permute", "bmm", "silu", "_to_copy", "mm", "var_mean", "split"}
	handwritten = []string{"_attn_fwd", "_attn_bwd", "_attn_bwd_preprocess", "matmul_kernel", "add_kernel",
		"softmax_kernel", "_layer_norm_fwd_fused", "_layer_norm_bwd_dx_fused", "_fwd_kernel",
		"_rms_norm_fwd", "rotary_embedding_kernel", "fused_moe_kernel", "_swiglu_fwd", "_paged_attention",
		"_grouped_gemm", "_cross_entropy_fwd"}
)

// kernelName gives kernels the names real caches hold: mostly Inductor's
// triton_<kind>_fused_<ops>_<n>, some hand-written kernels. Names repeat
// across KEYs, as the same kernel specialised differently does.
func kernelName(r *rand.Rand, i int) string {
	if r.IntN(5) == 0 {
		return handwritten[r.IntN(len(handwritten))]
	}
	name := "triton_" + inductorKinds[r.IntN(len(inductorKinds))] + "_fused"
	for n := 1 + r.IntN(3); n > 0; n-- {
		name += "_" + inductorOps[r.IntN(len(inductorOps))]
	}
	return name + "_" + strconv.Itoa(i%97)
}

// field is one metadata member; the JSON keeps Triton's member order.
type field struct {
	k string
	v any
}

// metadata is the kernel JSON as Triton 3.x writes it (json.dumps with the
// default separators), with the field set of the backend's options.
func metadata(r *rand.Rand, hash, name string, t gpu.Target, c float64) []byte {
	warps := []int{1, 2, 4, 4, 8}[r.IntN(5)]
	stages := 1 + r.IntN(4)
	shared := 0
	if c > 0.3 {
		shared = 1024 * (1 + r.IntN(96))
	}
	var fs []field
	if t.Backend == "hip" {
		fs = []field{
			{"hash", hash},
			{"target", []field{{"backend", "hip"}, {"arch", t.Arch}, {"warp_size", t.WarpSize}}},
			{"num_warps", warps}, {"waves_per_eu", 1}, {"num_stages", stages}, {"num_ctas", 1},
			{"extern_libs", [][]string{
				{"ocml", "/usr/local/lib/python3.11/site-packages/triton/backends/amd/lib/ocml.bc"},
				{"ockl", "/usr/local/lib/python3.11/site-packages/triton/backends/amd/lib/ockl.bc"}}},
			{"cluster_dims", []int{1, 1, 1}}, {"debug", false}, {"sanitize_overflow", true},
			{"arch", t.Arch}, {"supported_fp8_dtypes", []string{"fp8e5"}}, {"deprecated_fp8_dtypes", []string{}},
			{"default_dot_input_precision", "ieee"}, {"allowed_dot_input_precisions", []string{"ieee"}},
			{"enable_fp_fusion", true}, {"launch_cooperative_grid", false}, {"matrix_instr_nonkdim", 0},
			{"kpack", 1}, {"allow_flush_denorm", false}, {"max_num_imprecise_acc_default", 0},
			{"backend_name", "hip"}, {"instruction_sched_variant", "none"}, {"warp_size", t.WarpSize},
			{"triton_version", TritonVersion}, {"shared", shared}, {"name", name},
		}
	} else {
		arch, _ := strconv.Atoi(t.Arch)
		fp8 := []string{"fp8e4b15", "fp8e5"}
		if arch >= 89 {
			fp8 = []string{"fp8e4b15", "fp8e4nv", "fp8e5"}
		}
		fs = []field{
			{"hash", hash},
			{"target", []field{{"backend", "cuda"}, {"arch", arch}, {"warp_size", t.WarpSize}}},
			{"num_warps", warps}, {"num_ctas", 1}, {"num_stages", stages}, {"maxnreg", nil},
			{"cluster_dims", []int{1, 1, 1}}, {"ptx_version", nil}, {"enable_fp_fusion", true},
			{"supported_fp8_dtypes", fp8}, {"deprecated_fp8_dtypes", []string{}},
			{"default_dot_input_precision", "tf32"}, {"allowed_dot_input_precisions", []string{"tf32", "tf32x3", "ieee"}},
			{"max_num_imprecise_acc_default", 0},
			{"extern_libs", [][]string{{"libdevice", "/usr/local/lib/python3.11/site-packages/triton/backends/nvidia/lib/libdevice.10.bc"}}},
			{"debug", false}, {"backend_name", "cuda"}, {"sanitize_overflow", true},
			{"triton_version", TritonVersion}, {"shared", shared}, {"global_scratch_size", 0},
			{"global_scratch_align", 1}, {"name", name},
		}
	}
	var b bytes.Buffer
	writePy(&b, fs)
	return b.Bytes()
}

// writePy writes v as Python's json.dumps does: ", " and ": " separators,
// objects in the given order. Only the value types metadata uses occur.
func writePy(b *bytes.Buffer, v any) {
	switch v := v.(type) {
	case []field:
		b.WriteByte('{')
		for i, f := range v {
			if i > 0 {
				b.WriteString(", ")
			}
			writePy(b, f.k)
			b.WriteString(": ")
			writePy(b, f.v)
		}
		b.WriteByte('}')
	case []int:
		writeList(b, len(v), func(i int) any { return v[i] })
	case []string:
		writeList(b, len(v), func(i int) any { return v[i] })
	case [][]string:
		writeList(b, len(v), func(i int) any { return v[i] })
	default:
		// Strings here are ASCII without characters Go and Python escape
		// differently, so Go's encoding matches.
		// Only ints, bools, nil and such strings reach here: Marshal
		// cannot fail on them.
		j, _ := json.Marshal(v)
		b.Write(j)
	}
}

func writeList(b *bytes.Buffer, n int, at func(int) any) {
	b.WriteByte('[')
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		writePy(b, at(i))
	}
	b.WriteByte(']')
}
