package gen

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"

	"cargohold/gpu"
)

// elf is the identity of an ELF file: what its 64-byte header says.
type elf struct {
	osabi   byte   // e_ident[EI_OSABI]
	abiVer  byte   // e_ident[EI_ABIVERSION]
	typ     uint16 // e_type
	machine uint16 // e_machine
	flags   uint32 // e_flags
}

// amdMach is the EF_AMDGPU_MACH value of common HIP archs (LLVM's ELF.h).
var amdMach = map[string]uint32{
	"gfx900": 0x2c, "gfx906": 0x2f, "gfx908": 0x30, "gfx90a": 0x3f,
	"gfx940": 0x40, "gfx941": 0x4b, "gfx942": 0x4c, "gfx1030": 0x36, "gfx1100": 0x41,
}

// elfFor says what header a kernel binary for t carries: a CUDA cubin
// (ELFOSABI_CUDA, EM_CUDA, sm in e_flags) or an AMD code object
// (ELFOSABI_AMDGPU_HSA v5, EM_AMDGPU, the gfx mach plus xnack/sramecc bits).
func elfFor(t gpu.Target) elf {
	if t.Backend == "hip" {
		return elf{osabi: 0x40, abiVer: 3, typ: 3, machine: 0xe0, flags: amdMach[t.Arch] | 0x500}
	}
	sm := uint32(0)
	for _, c := range t.Arch {
		sm = sm*10 + uint32(c-'0')
	}
	return elf{osabi: 0x33, abiVer: 7, typ: 2, machine: 0xbe, flags: sm<<16 | 0x500 | sm}
}

// hostELF is the header of an x86-64 shared object (a launcher module).
var hostELF = elf{typ: 3, machine: 0x3e}

// elfBytes makes size bytes that look and compress like a compiled ELF file
// (about 3:1, as real cubins and hsaco do): a header, then a mix of
// instruction words from a small opcode set with random operand fields,
// zero padding, symbol strings and constant data.
func elfBytes(r *rand.Rand, h elf, name string, size int) []byte {
	b := make([]byte, 64, size+512)
	copy(b, "\x7fELF\x02\x01\x01")
	b[7], b[8] = h.osabi, h.abiVer
	le := binary.LittleEndian
	le.PutUint16(b[16:], h.typ)
	le.PutUint16(b[18:], h.machine)
	le.PutUint32(b[20:], 1)                // e_version
	le.PutUint64(b[40:], uint64(size-768)) // e_shoff: section headers near the end
	le.PutUint32(b[48:], h.flags)
	le.PutUint16(b[52:], 64) // e_ehsize
	le.PutUint16(b[54:], 56) // e_phentsize
	le.PutUint16(b[56:], 3)  // e_phnum
	le.PutUint16(b[58:], 64) // e_shentsize
	le.PutUint16(b[60:], 12) // e_shnum
	le.PutUint16(b[62:], 1)  // e_shstrndx
	b = append(b, "\x00.shstrtab\x00.strtab\x00.symtab\x00.symtab_shndx\x00.nv.info\x00.text."...)
	b = append(b, name...)
	b = append(b, "\x00.nv.info."...)
	b = append(b, name...)
	b = append(b, "\x00.nv.shared."...)
	b = append(b, name...)
	b = append(b, "\x00.nv.constant0."...)
	b = append(b, name...)
	b = append(b, "\x00.debug_frame\x00.rel.debug_frame\x00.rela.debug_frame\x00.nv.callgraph\x00.nv.prototype\x00"...)
	var opcodes [24]uint32
	for i := range opcodes {
		opcodes[i] = r.Uint32()
	}
	var ctrl [8]uint32
	for i := range ctrl {
		ctrl[i] = r.Uint32() & 0xffe0_0000
	}
	var w [16]byte
	for len(b) < size {
		switch x := r.IntN(20); {
		case x < 15: // a run of 128-bit instruction words
			for n := 8 + r.IntN(56); n > 0; n-- {
				le.PutUint32(w[0:], opcodes[r.IntN(len(opcodes))])
				w[4], w[5], w[6], w[7] = byte(r.IntN(24)), byte(r.IntN(24)), byte(r.IntN(4)), 0
				le.PutUint32(w[8:], 0)
				if r.IntN(4) == 0 {
					le.PutUint32(w[8:], uint32(r.IntN(256)))
				}
				le.PutUint32(w[12:], ctrl[r.IntN(len(ctrl))])
				b = append(b, w[:]...)
			}
		case x < 18: // alignment padding
			b = append(b, make([]byte, 16*(1+r.IntN(24)))...)
		case x < 19: // symbol and debug strings
			b = append(b, "$"...)
			b = append(b, name...)
			b = append(b, []string{"$__internal_accurate_pow\x00", "$__cuda_sm3x_div_rn_noftz_f32\x00", "\x00", ".L_x_12\x00"}[r.IntN(4)]...)
		default: // constant data
			for n := 4 + r.IntN(28); n > 0; n-- {
				b = le.AppendUint32(b, r.Uint32())
			}
		}
	}
	return b[:size]
}

// launcherFiles makes launcher j: the first is the driver utils module,
// the rest are per-signature launchers, as Triton 3.x compiles them.
func (o *Options) launcherFiles(r *rand.Rand, j int) []file {
	var backends []string // distinct, in target order
	for _, t := range o.Targets {
		if !slices.Contains(backends, t.Backend) {
			backends = append(backends, t.Backend)
		}
	}
	name := "__triton_launcher"
	lo, hi := 16<<10, 48<<10
	if j < len(backends) {
		name, lo, hi = backends[j]+"_utils", 60<<10, 200<<10
	}
	name += ".cpython-311-x86_64-linux-gnu.so"
	data := elfBytes(r, hostELF, name, o.size(r, r.Float64(), lo, hi))
	return []file{{name: name, data: data, mode: 0o755}}
}
