//go:build amd64

#include "textflag.h"

// Four float64 exponentials at a time with the steps of Go's math.Exp on a CPU with FMA (the
// avxfma path of src/math/exp_amd64.s, after Shibata's SIMD method): x·log2e rounded to k,
// r = (x - k·ln2 in two parts)/16, a degree-8 Taylor polynomial, four doublings, times 2^k.
// Packed IEEE operations give each lane the bits of the scalar ones. Inputs outside
// [-708, 709] (and NaN), where math.Exp takes its overflow, denormal or special paths, are not
// handled here: the function counts them, and its Go caller recomputes them with math.Exp.
// Constants, four copies each (exp_amd64.s's values):
DATA exp64c<>+0(SB)/8, $0x3ff71547652b82fe // log2e
DATA exp64c<>+8(SB)/8, $0x3ff71547652b82fe // log2e
DATA exp64c<>+16(SB)/8, $0x3ff71547652b82fe // log2e
DATA exp64c<>+24(SB)/8, $0x3ff71547652b82fe // log2e
DATA exp64c<>+32(SB)/8, $0x3fe62e42fefa3000 // ln2u
DATA exp64c<>+40(SB)/8, $0x3fe62e42fefa3000 // ln2u
DATA exp64c<>+48(SB)/8, $0x3fe62e42fefa3000 // ln2u
DATA exp64c<>+56(SB)/8, $0x3fe62e42fefa3000 // ln2u
DATA exp64c<>+64(SB)/8, $0x3d53de6af278ece6 // ln2l
DATA exp64c<>+72(SB)/8, $0x3d53de6af278ece6 // ln2l
DATA exp64c<>+80(SB)/8, $0x3d53de6af278ece6 // ln2l
DATA exp64c<>+88(SB)/8, $0x3d53de6af278ece6 // ln2l
DATA exp64c<>+96(SB)/8, $0x3fb0000000000000 // sixteenth
DATA exp64c<>+104(SB)/8, $0x3fb0000000000000 // sixteenth
DATA exp64c<>+112(SB)/8, $0x3fb0000000000000 // sixteenth
DATA exp64c<>+120(SB)/8, $0x3fb0000000000000 // sixteenth
DATA exp64c<>+128(SB)/8, $0x3efa01a01a01a01a // c64
DATA exp64c<>+136(SB)/8, $0x3efa01a01a01a01a // c64
DATA exp64c<>+144(SB)/8, $0x3efa01a01a01a01a // c64
DATA exp64c<>+152(SB)/8, $0x3efa01a01a01a01a // c64
DATA exp64c<>+160(SB)/8, $0x3f2a01a01a01a01a // c56
DATA exp64c<>+168(SB)/8, $0x3f2a01a01a01a01a // c56
DATA exp64c<>+176(SB)/8, $0x3f2a01a01a01a01a // c56
DATA exp64c<>+184(SB)/8, $0x3f2a01a01a01a01a // c56
DATA exp64c<>+192(SB)/8, $0x3f56c16c16c16c17 // c48
DATA exp64c<>+200(SB)/8, $0x3f56c16c16c16c17 // c48
DATA exp64c<>+208(SB)/8, $0x3f56c16c16c16c17 // c48
DATA exp64c<>+216(SB)/8, $0x3f56c16c16c16c17 // c48
DATA exp64c<>+224(SB)/8, $0x3f81111111111111 // c40
DATA exp64c<>+232(SB)/8, $0x3f81111111111111 // c40
DATA exp64c<>+240(SB)/8, $0x3f81111111111111 // c40
DATA exp64c<>+248(SB)/8, $0x3f81111111111111 // c40
DATA exp64c<>+256(SB)/8, $0x3fa5555555555555 // c32
DATA exp64c<>+264(SB)/8, $0x3fa5555555555555 // c32
DATA exp64c<>+272(SB)/8, $0x3fa5555555555555 // c32
DATA exp64c<>+280(SB)/8, $0x3fa5555555555555 // c32
DATA exp64c<>+288(SB)/8, $0x3fc5555555555555 // c24
DATA exp64c<>+296(SB)/8, $0x3fc5555555555555 // c24
DATA exp64c<>+304(SB)/8, $0x3fc5555555555555 // c24
DATA exp64c<>+312(SB)/8, $0x3fc5555555555555 // c24
DATA exp64c<>+320(SB)/8, $0x3fe0000000000000 // half
DATA exp64c<>+328(SB)/8, $0x3fe0000000000000 // half
DATA exp64c<>+336(SB)/8, $0x3fe0000000000000 // half
DATA exp64c<>+344(SB)/8, $0x3fe0000000000000 // half
DATA exp64c<>+352(SB)/8, $0x3ff0000000000000 // one
DATA exp64c<>+360(SB)/8, $0x3ff0000000000000 // one
DATA exp64c<>+368(SB)/8, $0x3ff0000000000000 // one
DATA exp64c<>+376(SB)/8, $0x3ff0000000000000 // one
DATA exp64c<>+384(SB)/8, $0x4000000000000000 // two
DATA exp64c<>+392(SB)/8, $0x4000000000000000 // two
DATA exp64c<>+400(SB)/8, $0x4000000000000000 // two
DATA exp64c<>+408(SB)/8, $0x4000000000000000 // two
DATA exp64c<>+416(SB)/8, $0xc086200000000000 // lo
DATA exp64c<>+424(SB)/8, $0xc086200000000000 // lo
DATA exp64c<>+432(SB)/8, $0xc086200000000000 // lo
DATA exp64c<>+440(SB)/8, $0xc086200000000000 // lo
DATA exp64c<>+448(SB)/8, $0x4086280000000000 // hi
DATA exp64c<>+456(SB)/8, $0x4086280000000000 // hi
DATA exp64c<>+464(SB)/8, $0x4086280000000000 // hi
DATA exp64c<>+472(SB)/8, $0x4086280000000000 // hi
DATA exp64c<>+480(SB)/8, $0x00000000000003ff // bias
DATA exp64c<>+488(SB)/8, $0x00000000000003ff // bias
DATA exp64c<>+496(SB)/8, $0x00000000000003ff // bias
DATA exp64c<>+504(SB)/8, $0x00000000000003ff // bias
GLOBL exp64c<>(SB), RODATA|NOPTR, $512

// func expsAVX2(dst, src *float64, n int) (outside int)
// dst[i] = e^src[i] for i < n (n a multiple of 4); outside counts the groups of four with a
// lane outside [-708, 709] or NaN.
TEXT ·expsAVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	XORQ AX, AX
	SHRQ $2, CX
	JZ exps_done
exps_loop:
	VMOVUPD (SI), Y0
	// range: lanes with -708 <= x <= 709 (false for NaN)
	VCMPPD $0x1d, exp64c<>+416(SB), Y0, Y5
	VCMPPD $0x12, exp64c<>+448(SB), Y0, Y6
	VANDPD Y6, Y5, Y5
	VMOVMSKPD Y5, BX
	CMPQ BX, $15
	JEQ exps_inrange
	INCQ AX
exps_inrange:
	VMULPD exp64c<>+0(SB), Y0, Y1
	VCVTPD2DQY Y1, X2
	VCVTDQ2PD X2, Y1
	VFNMADD231PD exp64c<>+32(SB), Y1, Y0
	VFNMADD231PD exp64c<>+64(SB), Y1, Y0
	VMULPD exp64c<>+96(SB), Y0, Y0
	VMOVUPD exp64c<>+128(SB), Y3
	VFMADD213PD exp64c<>+160(SB), Y0, Y3
	VFMADD213PD exp64c<>+192(SB), Y0, Y3
	VFMADD213PD exp64c<>+224(SB), Y0, Y3
	VFMADD213PD exp64c<>+256(SB), Y0, Y3
	VFMADD213PD exp64c<>+288(SB), Y0, Y3
	VFMADD213PD exp64c<>+320(SB), Y0, Y3
	VFMADD213PD exp64c<>+352(SB), Y0, Y3
	VMULPD Y3, Y0, Y0
	VADDPD exp64c<>+384(SB), Y0, Y3
	VMULPD Y3, Y0, Y0
	VADDPD exp64c<>+384(SB), Y0, Y3
	VMULPD Y3, Y0, Y0
	VADDPD exp64c<>+384(SB), Y0, Y3
	VMULPD Y3, Y0, Y0
	VADDPD exp64c<>+384(SB), Y0, Y3
	VFMADD213PD exp64c<>+352(SB), Y3, Y0
	// times 2^k: (k + 1023) << 52 as a float64's bits
	VPMOVSXDQ X2, Y4
	VPADDQ exp64c<>+480(SB), Y4, Y4
	VPSLLQ $52, Y4, Y4
	VMULPD Y4, Y0, Y0
	VMOVUPD Y0, (DI)
	ADDQ $32, SI
	ADDQ $32, DI
	DECQ CX
	JNZ exps_loop
exps_done:
	VZEROUPPER
	MOVQ AX, outside+24(FP)
	RET
