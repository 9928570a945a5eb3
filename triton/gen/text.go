package gen

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"

	"cargohold/gpu"
)

// kernelText writes IR and assembly that look like Triton's: the same
// headers, op vocabulary, SSA numbering and debug locations, with random
// operands so the text compresses like the real thing (about 4:1), not
// like a repeated template.
type kernelText struct {
	r    *rand.Rand
	name string
	t    gpu.Target
	c    float64
	src  string // the Python file the kernel came from
}

func (k *kernelText) source() string {
	if k.src == "" {
		const letters = "abcdefghijklmnopqrstuvwxyz234567"
		var b strings.Builder
		for i := 0; i < 52; i++ {
			b.WriteByte(letters[k.r.IntN(len(letters))])
		}
		if strings.HasPrefix(k.name, "triton_") {
			k.src = "/tmp/torchinductor_root/" + b.String()[:2] + "/c" + b.String() + ".py"
		} else {
			k.src = "/workspace/model/kernels/" + strings.TrimLeft(k.name, "_") + ".py"
		}
	}
	return k.src
}

func (k *kernelText) elem() string {
	return []string{"f32", "f16", "bf16", "f32", "i32", "i64"}[k.r.IntN(6)]
}

func (k *kernelText) block() int { return []int{64, 128, 256, 512, 1024, 2048}[k.r.IntN(6)] }

var ttOps = []string{
	"arith.addf %s, %s : tensor<%dx%s%s>",
	"arith.mulf %s, %s : tensor<%dx%s%s>",
	"arith.subf %s, %s : tensor<%dx%s%s>",
	"arith.divf %s, %s : tensor<%dx%s%s>",
	"arith.maxnumf %s, %s : tensor<%dx%s%s>",
	"arith.cmpi slt, %s, %s : tensor<%dx%s%s>",
	"arith.select %s, %s : tensor<%dx%s%s>",
	"tt.addptr %s, %s : tensor<%dx!tt.ptr<%s>%s>",
	"tt.load %s, %s : tensor<%dx!tt.ptr<%s>%s>",
	"arith.extf %s, %s : tensor<%dx%s%s>",
	"math.exp2 %s, %s : tensor<%dx%s%s>",
	"tt.splat %s, %s : tensor<%dx%s%s>",
}

// mlir writes a tt.func with body ops until the text reaches size; gpu
// adds the ttgir layout attributes.
func (k *kernelText) mlir(size int, gpuLevel bool) []byte {
	var b bytes.Buffer
	src := k.source()
	line0 := 20 + k.r.IntN(400)
	layout := ""
	if gpuLevel {
		warps := []int{1, 2, 4, 8}[k.r.IntN(4)]
		fmt.Fprintf(&b, "#blocked = #ttg.blocked<{sizePerThread = [%d], threadsPerWarp = [%d], warpsPerCTA = [%d], order = [0]}>\n",
			[]int{1, 2, 4, 8}[k.r.IntN(4)], k.t.WarpSize, warps)
		fmt.Fprintf(&b, "#blocked1 = #ttg.blocked<{sizePerThread = [1, %d], threadsPerWarp = [%d, %d], warpsPerCTA = [%d, 1], order = [1, 0]}>\n",
			[]int{1, 4, 8}[k.r.IntN(3)], k.t.WarpSize/8, 8, warps)
		layout = ", #blocked"
	}
	fmt.Fprintf(&b, "#loc = loc(%q:%d:0)\n", src, line0)
	if gpuLevel {
		target := k.t.Backend + ":" + k.t.Arch
		fmt.Fprintf(&b, "module attributes {\"ttg.num-ctas\" = 1 : i32, \"ttg.num-warps\" = 4 : i32, ttg.target = %q, \"ttg.threads-per-warp\" = %d : i32} {\n", target, k.t.WarpSize)
	} else {
		b.WriteString("module {\n")
	}
	nargs := 3 + k.r.IntN(6)
	fmt.Fprintf(&b, "  tt.func public @%s(", k.name)
	for i := 0; i < nargs; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%%arg%d: !tt.ptr<%s> {tt.divisibility = 16 : i32} loc(%q:%d:0)", i, k.elem(), src, line0)
	}
	b.WriteString(") attributes {noinline = false} {\n")
	nloc := 1
	var locs bytes.Buffer
	for v := 0; b.Len()+locs.Len() < size; v++ {
		op := ttOps[k.r.IntN(len(ttOps))]
		a, c := k.r.IntN(max(v, 1)), k.r.IntN(v+nargs+1)
		fmt.Fprintf(&b, "    %%%d = "+op+" loc(#loc%d)\n", v, fmt.Sprintf("%%%d", a), fmt.Sprintf("%%arg%d", c%nargs), k.block(), k.elem(), layout, nloc)
		if k.r.IntN(3) == 0 {
			nloc++
			fmt.Fprintf(&locs, "#loc%d = loc(%q:%d:%d)\n", nloc, src, line0+k.r.IntN(200), k.r.IntN(80))
		}
	}
	fmt.Fprintf(&b, "    tt.return loc(#loc%d)\n  } loc(#loc)\n} loc(#loc)\n#loc1 = loc(unknown)\n", nloc)
	b.Write(locs.Bytes())
	return b.Bytes()
}

func (k *kernelText) ttir(size int) []byte  { return k.mlir(size, false) }
func (k *kernelText) ttgir(size int) []byte { return k.mlir(size, true) }

var llOps = []string{
	"fadd float %%%d, %%%d",
	"fmul float %%%d, %%%d",
	"fsub float %%%d, %%%d",
	"add i32 %%%d, %%%d",
	"shl i32 %%%d, %d",
	"and i32 %%%d, %d",
	"or disjoint i32 %%%d, %%%d",
	"icmp slt i32 %%%d, %%%d",
	"getelementptr float, ptr addrspace(1) %%%d, i32 %%%d",
	"load <4 x i32>, ptr addrspace(1) %%%d, align %d",
	"tail call i32 @llvm.nvvm.read.ptx.sreg.tid.x(), !range !%d, !noundef !%d",
	"select i1 %%%d, float %%%d, float 0.000000e+00",
}

func (k *kernelText) llir(size int) []byte {
	var b, meta bytes.Buffer
	b.WriteString("; ModuleID = 'LLVMDialectModule'\nsource_filename = \"LLVMDialectModule\"\n")
	if k.t.Backend == "hip" {
		b.WriteString("target datalayout = \"e-p:64:64-p1:64:64-p2:32:32-p3:32:32-p4:64:64-p5:32:32-p6:32:32-p7:160:256:256:32-p8:128:128-p9:192:256:256:32-i64:64-v16:16-v24:32-v32:32-v48:64-v96:128-v192:256-v256:256-v512:512-v1024:1024-v2048:2048-n32:64-S32-A5-G1-ni:7:8:9\"\ntarget triple = \"amdgcn-amd-amdhsa\"\n\n")
		fmt.Fprintf(&b, "define amdgpu_kernel void @%s(", k.name)
	} else {
		b.WriteString("target datalayout = \"e-i64:64-i128:128-v16:16-v32:32-n16:32:64\"\n\n")
		fmt.Fprintf(&b, "define void @%s(", k.name)
	}
	nargs := 3 + k.r.IntN(6)
	for i := 0; i < nargs; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "ptr addrspace(1) %%%d", i)
	}
	b.WriteString(") local_unnamed_addr !dbg !7 {\n")
	dbg := 10
	for v := nargs + 1; b.Len()+meta.Len() < size; v++ {
		fmt.Fprintf(&b, "  %%%d = "+llOps[k.r.IntN(len(llOps))]+", !dbg !%d\n", v, k.r.IntN(v), k.r.IntN(v)+k.r.IntN(2048), dbg)
		if k.r.IntN(3) == 0 {
			fmt.Fprintf(&meta, "!%d = !DILocation(line: %d, column: %d, scope: !7)\n", dbg, 20+k.r.IntN(500), k.r.IntN(80))
			dbg++
		}
	}
	b.WriteString("  ret void, !dbg !" + fmt.Sprint(dbg) + "\n}\n\n")
	b.WriteString("attributes #0 = { mustprogress nofree norecurse nosync nounwind willreturn }\n\n!llvm.module.flags = !{!0, !1}\n!llvm.dbg.cu = !{!2}\n")
	fmt.Fprintf(&b, "!3 = !DIFile(filename: %q, directory: \"\")\n", k.source())
	b.Write(meta.Bytes())
	return b.Bytes()
}

var (
	ptxOps = []string{
		"add.s32 \t%%r%d, %%r%d, %%r%d;", "mul.wide.s32 \t%%rd%d, %%r%d, %d;", "add.s64 \t%%rd%d, %%rd%d, %%rd%d;",
		"shl.b32 \t%%r%d, %%r%d, %d;", "and.b32  \t%%r%d, %%r%d, %d;", "setp.lt.s32 \t%%p%d, %%r%d, %%r%d;",
		"selp.f32 \t%%f%d, %%f%d, %%f%d, %%p1;", "fma.rn.f32 \t%%f%d, %%f%d, %%f%d, 0f3F800000;", "add.f32 \t%%f%d, %%f%d, %%f%d;",
		"@%%p%d ld.global.v4.b32 { %%r%d, %%r%d, %%r3, %%r4 }, [ %%rd1 + 0 ];", "ex2.approx.f32 \t%%f%d, %%f%d; // %d",
		"bar.sync \t0; // %d %d %d",
	}
	gcnOps = []string{
		"v_add_f32_e32 v%d, v%d, v%d", "v_mul_f32_e32 v%d, v%d, v%d", "v_fma_f32 v%d, v%d, v%d, 1.0",
		"global_load_dwordx4 v[%d:%d], v[%d:3], off", "s_waitcnt vmcnt(%d) ; %d %d", "v_lshlrev_b32_e32 v%d, %d, v%d",
		"v_cmp_gt_i32_e32 vcc, s%d, v%d ; %d", "s_and_saveexec_b64 s[%d:%d], vcc ; %d", "v_mov_b32_e32 v%d, s%d ; %d",
		"global_store_dwordx4 v[%d:%d], v[%d:3], off", "v_exp_f32_e32 v%d, v%d ; %d", "s_barrier ; %d %d %d",
	}
)

// asm writes the .ptx (CUDA) or .amdgcn (HIP) text.
func (k *kernelText) asm(size int) []byte {
	var b bytes.Buffer
	ops := ptxOps
	if k.t.Backend == "hip" {
		fmt.Fprintf(&b, "\t.amdgcn_target \"amdgcn-amd-amdhsa--%s\"\n\t.amdhsa_code_object_version 5\n\t.text\n\t.globl\t%s\n\t.p2align\t8\n\t.type\t%s,@function\n%s:\n.Lfunc_begin0:\n",
			k.t.Arch, k.name, k.name, k.name)
		ops = gcnOps
	} else {
		fmt.Fprintf(&b, "//\n// Generated by LLVM NVPTX Back-End\n//\n\n.version 8.4\n.target sm_%s\n.address_size 64\n\n\t// .globl\t%s\n.visible .entry %s(\n",
			k.t.Arch, k.name, k.name)
		for i := 0; i < 4; i++ {
			fmt.Fprintf(&b, "\t.param .u64 .ptr .global .align 1 %s_param_%d,\n", k.name, i)
		}
		fmt.Fprintf(&b, "\t.param .u32 %s_param_4\n)\n.reqntid %d, 1, 1\n{\n\t.reg .pred \t%%p<64>;\n\t.reg .b32 \t%%r<512>;\n\t.reg .f32 \t%%f<256>;\n\t.reg .b64 \t%%rd<64>;\n",
			k.name, 32*[]int{1, 2, 4, 8}[k.r.IntN(4)])
	}
	for b.Len() < size {
		if k.r.IntN(6) == 0 {
			l, c := 20+k.r.IntN(500), k.r.IntN(80)
			fmt.Fprintf(&b, "\t.loc\t1 %d %d                          // %s:%d:%d\n", l, c, k.source()[strings.LastIndexByte(k.source(), '/')+1:], l, c)
		}
		fmt.Fprintf(&b, "\t"+ops[k.r.IntN(len(ops))]+"\n", k.r.IntN(256), k.r.IntN(256), k.r.IntN(64))
	}
	if k.t.Backend == "hip" {
		b.WriteString("\ts_endpgm\n.Lfunc_end0:\n")
	} else {
		b.WriteString("\tret;\n$L__func_end0:\n\n}\n")
	}
	return b.Bytes()
}
