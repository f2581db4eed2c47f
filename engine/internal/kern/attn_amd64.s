//go:build amd64

#include "textflag.h"

// Vector kernels of attention and the MLP (AVX2 + FMA): see attn.go for their contracts.
// The exponential is Expf's algorithm step by step (separate multiplies and adds, no FMA), so
// every lane equals Expf of its input bit for bit.

// expc: 32-byte rows of broadcast constants, at the offsets named below.
#define LOG2E 0
#define HALF 32
#define C1 64
#define C2 96
#define P0 128
#define P1 160
#define P2 192
#define P3 224
#define P4 256
#define P5 288
#define ONE 320
#define LO 352
#define HI 384
#define INF 416
#define B127 448
#define SIGN 480
DATA expc<>+0(SB)/4, $0x3fb8aa3b
DATA expc<>+4(SB)/4, $0x3fb8aa3b
DATA expc<>+8(SB)/4, $0x3fb8aa3b
DATA expc<>+12(SB)/4, $0x3fb8aa3b
DATA expc<>+16(SB)/4, $0x3fb8aa3b
DATA expc<>+20(SB)/4, $0x3fb8aa3b
DATA expc<>+24(SB)/4, $0x3fb8aa3b
DATA expc<>+28(SB)/4, $0x3fb8aa3b
DATA expc<>+32(SB)/4, $0x3f000000
DATA expc<>+36(SB)/4, $0x3f000000
DATA expc<>+40(SB)/4, $0x3f000000
DATA expc<>+44(SB)/4, $0x3f000000
DATA expc<>+48(SB)/4, $0x3f000000
DATA expc<>+52(SB)/4, $0x3f000000
DATA expc<>+56(SB)/4, $0x3f000000
DATA expc<>+60(SB)/4, $0x3f000000
DATA expc<>+64(SB)/4, $0x3f318000
DATA expc<>+68(SB)/4, $0x3f318000
DATA expc<>+72(SB)/4, $0x3f318000
DATA expc<>+76(SB)/4, $0x3f318000
DATA expc<>+80(SB)/4, $0x3f318000
DATA expc<>+84(SB)/4, $0x3f318000
DATA expc<>+88(SB)/4, $0x3f318000
DATA expc<>+92(SB)/4, $0x3f318000
DATA expc<>+96(SB)/4, $0xb95e8083
DATA expc<>+100(SB)/4, $0xb95e8083
DATA expc<>+104(SB)/4, $0xb95e8083
DATA expc<>+108(SB)/4, $0xb95e8083
DATA expc<>+112(SB)/4, $0xb95e8083
DATA expc<>+116(SB)/4, $0xb95e8083
DATA expc<>+120(SB)/4, $0xb95e8083
DATA expc<>+124(SB)/4, $0xb95e8083
DATA expc<>+128(SB)/4, $0x39506967
DATA expc<>+132(SB)/4, $0x39506967
DATA expc<>+136(SB)/4, $0x39506967
DATA expc<>+140(SB)/4, $0x39506967
DATA expc<>+144(SB)/4, $0x39506967
DATA expc<>+148(SB)/4, $0x39506967
DATA expc<>+152(SB)/4, $0x39506967
DATA expc<>+156(SB)/4, $0x39506967
DATA expc<>+160(SB)/4, $0x3ab743ce
DATA expc<>+164(SB)/4, $0x3ab743ce
DATA expc<>+168(SB)/4, $0x3ab743ce
DATA expc<>+172(SB)/4, $0x3ab743ce
DATA expc<>+176(SB)/4, $0x3ab743ce
DATA expc<>+180(SB)/4, $0x3ab743ce
DATA expc<>+184(SB)/4, $0x3ab743ce
DATA expc<>+188(SB)/4, $0x3ab743ce
DATA expc<>+192(SB)/4, $0x3c088908
DATA expc<>+196(SB)/4, $0x3c088908
DATA expc<>+200(SB)/4, $0x3c088908
DATA expc<>+204(SB)/4, $0x3c088908
DATA expc<>+208(SB)/4, $0x3c088908
DATA expc<>+212(SB)/4, $0x3c088908
DATA expc<>+216(SB)/4, $0x3c088908
DATA expc<>+220(SB)/4, $0x3c088908
DATA expc<>+224(SB)/4, $0x3d2aa9c1
DATA expc<>+228(SB)/4, $0x3d2aa9c1
DATA expc<>+232(SB)/4, $0x3d2aa9c1
DATA expc<>+236(SB)/4, $0x3d2aa9c1
DATA expc<>+240(SB)/4, $0x3d2aa9c1
DATA expc<>+244(SB)/4, $0x3d2aa9c1
DATA expc<>+248(SB)/4, $0x3d2aa9c1
DATA expc<>+252(SB)/4, $0x3d2aa9c1
DATA expc<>+256(SB)/4, $0x3e2aaaaa
DATA expc<>+260(SB)/4, $0x3e2aaaaa
DATA expc<>+264(SB)/4, $0x3e2aaaaa
DATA expc<>+268(SB)/4, $0x3e2aaaaa
DATA expc<>+272(SB)/4, $0x3e2aaaaa
DATA expc<>+276(SB)/4, $0x3e2aaaaa
DATA expc<>+280(SB)/4, $0x3e2aaaaa
DATA expc<>+284(SB)/4, $0x3e2aaaaa
DATA expc<>+288(SB)/4, $0x3f000000
DATA expc<>+292(SB)/4, $0x3f000000
DATA expc<>+296(SB)/4, $0x3f000000
DATA expc<>+300(SB)/4, $0x3f000000
DATA expc<>+304(SB)/4, $0x3f000000
DATA expc<>+308(SB)/4, $0x3f000000
DATA expc<>+312(SB)/4, $0x3f000000
DATA expc<>+316(SB)/4, $0x3f000000
DATA expc<>+320(SB)/4, $0x3f800000
DATA expc<>+324(SB)/4, $0x3f800000
DATA expc<>+328(SB)/4, $0x3f800000
DATA expc<>+332(SB)/4, $0x3f800000
DATA expc<>+336(SB)/4, $0x3f800000
DATA expc<>+340(SB)/4, $0x3f800000
DATA expc<>+344(SB)/4, $0x3f800000
DATA expc<>+348(SB)/4, $0x3f800000
DATA expc<>+352(SB)/4, $0xc2aeac4f
DATA expc<>+356(SB)/4, $0xc2aeac4f
DATA expc<>+360(SB)/4, $0xc2aeac4f
DATA expc<>+364(SB)/4, $0xc2aeac4f
DATA expc<>+368(SB)/4, $0xc2aeac4f
DATA expc<>+372(SB)/4, $0xc2aeac4f
DATA expc<>+376(SB)/4, $0xc2aeac4f
DATA expc<>+380(SB)/4, $0xc2aeac4f
DATA expc<>+384(SB)/4, $0x42b17217
DATA expc<>+388(SB)/4, $0x42b17217
DATA expc<>+392(SB)/4, $0x42b17217
DATA expc<>+396(SB)/4, $0x42b17217
DATA expc<>+400(SB)/4, $0x42b17217
DATA expc<>+404(SB)/4, $0x42b17217
DATA expc<>+408(SB)/4, $0x42b17217
DATA expc<>+412(SB)/4, $0x42b17217
DATA expc<>+416(SB)/4, $0x7f800000
DATA expc<>+420(SB)/4, $0x7f800000
DATA expc<>+424(SB)/4, $0x7f800000
DATA expc<>+428(SB)/4, $0x7f800000
DATA expc<>+432(SB)/4, $0x7f800000
DATA expc<>+436(SB)/4, $0x7f800000
DATA expc<>+440(SB)/4, $0x7f800000
DATA expc<>+444(SB)/4, $0x7f800000
DATA expc<>+448(SB)/4, $0x0000007f
DATA expc<>+452(SB)/4, $0x0000007f
DATA expc<>+456(SB)/4, $0x0000007f
DATA expc<>+460(SB)/4, $0x0000007f
DATA expc<>+464(SB)/4, $0x0000007f
DATA expc<>+468(SB)/4, $0x0000007f
DATA expc<>+472(SB)/4, $0x0000007f
DATA expc<>+476(SB)/4, $0x0000007f
DATA expc<>+480(SB)/4, $0x80000000
DATA expc<>+484(SB)/4, $0x80000000
DATA expc<>+488(SB)/4, $0x80000000
DATA expc<>+492(SB)/4, $0x80000000
DATA expc<>+496(SB)/4, $0x80000000
DATA expc<>+500(SB)/4, $0x80000000
DATA expc<>+504(SB)/4, $0x80000000
DATA expc<>+508(SB)/4, $0x80000000
GLOBL expc<>(SB), RODATA|NOPTR, $512

// EXP8 sets Y0 = e^Y0 in every lane (Expf's range reduction and polynomial, its overflow to
// +Inf above HI and flush to 0 below LO); clobbers Y1-Y3, Y5, Y6.
#define EXP8 \
	VCMPPS $0x11, expc<>+LO(SB), Y0, Y5; \
	VCMPPS $0x1e, expc<>+HI(SB), Y0, Y6; \
	VMULPS expc<>+LOG2E(SB), Y0, Y1; \
	VADDPS expc<>+HALF(SB), Y1, Y1; \
	VROUNDPS $1, Y1, Y1; \
	VMULPS expc<>+C1(SB), Y1, Y2; \
	VSUBPS Y2, Y0, Y2; \
	VMULPS expc<>+C2(SB), Y1, Y3; \
	VSUBPS Y3, Y2, Y2; \
	VMOVUPS expc<>+P0(SB), Y3; \
	VMULPS Y2, Y3, Y3; \
	VADDPS expc<>+P1(SB), Y3, Y3; \
	VMULPS Y2, Y3, Y3; \
	VADDPS expc<>+P2(SB), Y3, Y3; \
	VMULPS Y2, Y3, Y3; \
	VADDPS expc<>+P3(SB), Y3, Y3; \
	VMULPS Y2, Y3, Y3; \
	VADDPS expc<>+P4(SB), Y3, Y3; \
	VMULPS Y2, Y3, Y3; \
	VADDPS expc<>+P5(SB), Y3, Y3; \
	VMULPS Y2, Y3, Y3; \
	VMULPS Y2, Y3, Y3; \
	VADDPS Y2, Y3, Y3; \
	VADDPS expc<>+ONE(SB), Y3, Y3; \
	VCVTTPS2DQ Y1, Y1; \
	VPADDD expc<>+B127(SB), Y1, Y1; \
	VPSLLD $23, Y1, Y1; \
	VMULPS Y1, Y3, Y0; \
	VBLENDVPS Y6, expc<>+INF(SB), Y0, Y0; \
	VANDNPS Y0, Y5, Y0

// func expShiftAVX2(x *float32, n int, m, s float32) float32
// x[i] = e^((x[i]-m)·s) for i < n (n a multiple of 8); returns their sum.
TEXT ·expShiftAVX2(SB), NOSPLIT, $0-28
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VBROADCASTSS m+16(FP), Y8
	VBROADCASTSS s+20(FP), Y9
	VXORPS Y7, Y7, Y7
	TESTQ CX, CX
	JZ expshift_done
expshift_loop:
	VMOVUPS (SI), Y0
	VSUBPS Y8, Y0, Y0
	VMULPS Y9, Y0, Y0
	EXP8
	VMOVUPS Y0, (SI)
	VADDPS Y0, Y7, Y7
	ADDQ $32, SI
	SUBQ $8, CX
	JNZ expshift_loop
expshift_done:
	VEXTRACTF128 $1, Y7, X1
	VADDPS X1, X7, X0
	VMOVHLPS X0, X0, X1
	VADDPS X1, X0, X0
	VMOVSHDUP X0, X1
	VADDSS X1, X0, X0
	MOVSS X0, ret+24(FP)
	VZEROUPPER
	RET

// func swigluAVX2(out, gate, up *float32, n int)
// out[i] = gate[i] / (1 + e^-gate[i]) · up[i] for i < n (n a multiple of 8).
TEXT ·swigluAVX2(SB), NOSPLIT, $0-32
	MOVQ out+0(FP), DI
	MOVQ gate+8(FP), SI
	MOVQ up+16(FP), DX
	MOVQ n+24(FP), CX
	TESTQ CX, CX
	JZ swiglu_done
swiglu_loop:
	VMOVUPS (SI), Y4
	VXORPS expc<>+SIGN(SB), Y4, Y0
	EXP8
	VADDPS expc<>+ONE(SB), Y0, Y0
	VDIVPS Y0, Y4, Y0
	VMULPS (DX), Y0, Y0
	VMOVUPS Y0, (DI)
	ADDQ $32, SI
	ADDQ $32, DX
	ADDQ $32, DI
	SUBQ $8, CX
	JNZ swiglu_loop
swiglu_done:
	VZEROUPPER
	RET

// func swigluBackAVX2(dg, du, dout, gate, up *float32, n int)
// s = 1/(1+e^-g): du = (do·g)·s, dg = ((do·u)·s)·(1 + g·(1-s)) for i < n (n a multiple of 8).
TEXT ·swigluBackAVX2(SB), NOSPLIT, $0-48
	MOVQ dg+0(FP), DI
	MOVQ du+8(FP), R8
	MOVQ dout+16(FP), R9
	MOVQ gate+24(FP), SI
	MOVQ up+32(FP), DX
	MOVQ n+40(FP), CX
	TESTQ CX, CX
	JZ swigluback_done
swigluback_loop:
	VMOVUPS (SI), Y4
	VXORPS expc<>+SIGN(SB), Y4, Y0
	EXP8
	VADDPS expc<>+ONE(SB), Y0, Y0
	VMOVUPS expc<>+ONE(SB), Y7
	VDIVPS Y0, Y7, Y7
	VMOVUPS (R9), Y8
	VMULPS (DX), Y8, Y11
	VMULPS Y4, Y8, Y9
	VMULPS Y7, Y9, Y9
	VMOVUPS expc<>+ONE(SB), Y10
	VSUBPS Y7, Y10, Y10
	VMULPS Y10, Y4, Y10
	VADDPS expc<>+ONE(SB), Y10, Y10
	VMULPS Y7, Y11, Y11
	VMULPS Y10, Y11, Y11
	VMOVUPS Y9, (R8)
	VMOVUPS Y11, (DI)
	ADDQ $32, SI
	ADDQ $32, DX
	ADDQ $32, R9
	ADDQ $32, R8
	ADDQ $32, DI
	SUBQ $8, CX
	JNZ swigluback_loop
swigluback_done:
	VZEROUPPER
	RET

// func dotsAVX2(q, k, out *float32, n, dh int)
// out[p] = Σ_d q[d]·k[p*dh+d] for p < n (n a multiple of 4, dh a multiple of 8, both > 0):
// four rows of k at a time, one accumulator each, reduced together.
TEXT ·dotsAVX2(SB), NOSPLIT, $0-40
	MOVQ q+0(FP), SI
	MOVQ k+8(FP), DI
	MOVQ out+16(FP), DX
	MOVQ n+24(FP), CX
	MOVQ dh+32(FP), R8
	SHLQ $2, R8 // row stride in bytes
dots_rows:
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	MOVQ DI, R10
	LEAQ (DI)(R8*1), R11
	LEAQ (R11)(R8*1), R12
	LEAQ (R12)(R8*1), R13
	XORQ R9, R9
dots_d:
	VMOVUPS (SI)(R9*1), Y4
	VFMADD231PS (R10)(R9*1), Y4, Y0
	VFMADD231PS (R11)(R9*1), Y4, Y1
	VFMADD231PS (R12)(R9*1), Y4, Y2
	VFMADD231PS (R13)(R9*1), Y4, Y3
	ADDQ $32, R9
	CMPQ R9, R8
	JLT dots_d
	VHADDPS Y1, Y0, Y0
	VHADDPS Y3, Y2, Y2
	VHADDPS Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS X1, X0, X0
	VMOVUPS X0, (DX)
	ADDQ $16, DX
	LEAQ (R13)(R8*1), DI
	SUBQ $4, CX
	JNZ dots_rows
	VZEROUPPER
	RET

// func axpyRowsAVX2(w, v, o *float32, n, dh int)
// o[d] += Σ_p w[p]·v[p*dh+d] for d < dh (dh a multiple of 8, n > 0): columns in chunks of
// 32 (then 8) held in registers over all p.
TEXT ·axpyRowsAVX2(SB), NOSPLIT, $0-40
	MOVQ w+0(FP), SI
	MOVQ v+8(FP), DI
	MOVQ o+16(FP), DX
	MOVQ n+24(FP), CX
	MOVQ dh+32(FP), R8
	SHLQ $2, R8 // row stride in bytes
	XORQ R9, R9 // byte offset of the chunk
axr_chunk32:
	MOVQ R8, AX
	SUBQ R9, AX
	CMPQ AX, $128
	JLT axr_chunk8
	VMOVUPS (DX)(R9*1), Y0
	VMOVUPS 32(DX)(R9*1), Y1
	VMOVUPS 64(DX)(R9*1), Y2
	VMOVUPS 96(DX)(R9*1), Y3
	LEAQ (DI)(R9*1), R10
	XORQ R11, R11
axr_p32:
	VBROADCASTSS (SI)(R11*4), Y4
	VFMADD231PS (R10), Y4, Y0
	VFMADD231PS 32(R10), Y4, Y1
	VFMADD231PS 64(R10), Y4, Y2
	VFMADD231PS 96(R10), Y4, Y3
	ADDQ R8, R10
	INCQ R11
	CMPQ R11, CX
	JLT axr_p32
	VMOVUPS Y0, (DX)(R9*1)
	VMOVUPS Y1, 32(DX)(R9*1)
	VMOVUPS Y2, 64(DX)(R9*1)
	VMOVUPS Y3, 96(DX)(R9*1)
	ADDQ $128, R9
	JMP axr_chunk32
axr_chunk8:
	CMPQ R9, R8
	JGE axr_done
	VMOVUPS (DX)(R9*1), Y0
	LEAQ (DI)(R9*1), R10
	XORQ R11, R11
axr_p8:
	VBROADCASTSS (SI)(R11*4), Y4
	VFMADD231PS (R10), Y4, Y0
	ADDQ R8, R10
	INCQ R11
	CMPQ R11, CX
	JLT axr_p8
	VMOVUPS Y0, (DX)(R9*1)
	ADDQ $32, R9
	JMP axr_chunk8
axr_done:
	VZEROUPPER
	RET

// func adamwAVX2(p, grad, m, v *float32, n int, c *AdamWConsts)
// AdamW's update (adamw.go) on n parameters, n a multiple of 8, n > 0; every operation in
// adamwGo's order, without FMA, so the bits equal it.
TEXT ·adamwAVX2(SB), NOSPLIT, $0-48
	MOVQ p+0(FP), DI
	MOVQ grad+8(FP), SI
	MOVQ m+16(FP), R8
	MOVQ v+24(FP), R9
	MOVQ n+32(FP), CX
	MOVQ c+40(FP), AX
	VBROADCASTSS 0(AX), Y8   // Decay
	VBROADCASTSS 4(AX), Y9   // B1
	VBROADCASTSS 8(AX), Y10  // B2
	VBROADCASTSS 12(AX), Y11 // C1
	VBROADCASTSS 16(AX), Y12 // C2
	VBROADCASTSS 20(AX), Y13 // Step
	VBROADCASTSS 24(AX), Y14 // InvSqrtBC2
	VBROADCASTSS 28(AX), Y15 // Eps
adamw_loop:
	VMOVUPS (SI), Y0
	VMULPS (R8), Y9, Y1
	VMULPS Y0, Y11, Y2
	VADDPS Y2, Y1, Y1
	VMOVUPS Y1, (R8)
	VMULPS (R9), Y10, Y2
	VMULPS Y0, Y12, Y3
	VMULPS Y0, Y3, Y3
	VADDPS Y3, Y2, Y2
	VMOVUPS Y2, (R9)
	VSQRTPS Y2, Y2
	VMULPS Y14, Y2, Y2
	VADDPS Y15, Y2, Y2
	VMULPS Y13, Y1, Y1
	VDIVPS Y2, Y1, Y1
	VMULPS (DI), Y8, Y3
	VSUBPS Y1, Y3, Y3
	VMOVUPS Y3, (DI)
	ADDQ $32, DI
	ADDQ $32, SI
	ADDQ $32, R8
	ADDQ $32, R9
	SUBQ $8, CX
	JNZ adamw_loop
	VZEROUPPER
	RET
