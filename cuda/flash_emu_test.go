package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// A Go emulation of kernels/flash.cu, thread by thread: every warp's 32 lanes with their
// registers (the mma fragments, the online-softmax state), the shared-memory tiles as bf16
// arrays, the quad shuffles, and mma.sync.m16n8k16 computed from its fragments as the PTX ISA
// lays them out (mmaEmu: the mapping written in flash.cu's header). The emulated kernels
// follow the CUDA code line for line (same tiles, same masking, same rescaling order, the same
// bf16 roundings), and are checked against the CPU backend's attention (the row paths, fp32).
// This catches errors of the algorithm and of the fragment bookkeeping (which lane holds
// which row and column, which C registers make which A register); not errors the CUDA compiler
// or the PTX would add, which only a GPU run of the conformance suite can show.

type warpA [32][4]uint32  // A fragments of one warp: a0..a3 per lane
type warpB [32][2]uint32  // B fragments: b0, b1 per lane
type warpC [32][4]float32 // C/D fragments: c0..c3 per lane

const emuLog2e, emuLn2 = float32(1.4426950408889634), float32(0.6931471805599453)

// bf16Bits rounds x to bf16 (nearest even; NaN stays a quiet NaN), as f32_to_bf16 does.
func bf16Bits(x float32) uint16 {
	u := math.Float32bits(x)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16 | 0x40)
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

func bf16Val(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

func packBF16(lo, hi float32) uint32 { return uint32(bf16Bits(lo)) | uint32(bf16Bits(hi))<<16 }

func packHalves(lo, hi uint16) uint32 { return uint32(lo) | uint32(hi)<<16 }

func lo16(u uint32) float32 { return bf16Val(uint16(u)) }
func hi16(u uint32) float32 { return bf16Val(uint16(u >> 16)) }

// fragA, fragB and fragC give, for lane and register index, the (row, col) of the matrix
// element in the low half (A, B) or of the value (C) and, for A and B, of the high half: the
// PTX ISA's m16n8k16 .bf16 layout, g = lane>>2, tq = lane&3.
func fragA(lane, reg int) (r, c int) {
	g, tq := lane>>2, lane&3
	return g + 8*(reg&1), 2*tq + 8*(reg>>1) // a0 (g, 2tq), a1 (g+8, 2tq), a2 (g, 2tq+8), a3 (g+8, 2tq+8); high half col+1
}

func fragB(lane, reg int) (k, n int) {
	g, tq := lane>>2, lane&3
	return 2*tq + 8*reg, g // b0 (2tq, g), b1 (2tq+8, g); high half k+1
}

func fragC(lane, reg int) (r, c int) {
	g, tq := lane>>2, lane&3
	return g + 8*(reg>>1), 2*tq + reg&1 // c0 (g, 2tq), c1 (g, 2tq+1), c2 (g+8, 2tq), c3 (g+8, 2tq+1)
}

// mmaEmu is d = A·B + c of mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 on one warp,
// products summed in float64 and rounded once.
func mmaEmu(c *warpC, a *warpA, b *warpB) {
	var A [16][16]float32
	var B [16][8]float32
	var C [16][8]float32
	for lane := 0; lane < 32; lane++ {
		for reg := 0; reg < 4; reg++ {
			r, col := fragA(lane, reg)
			A[r][col], A[r][col+1] = lo16(a[lane][reg]), hi16(a[lane][reg])
			r, col = fragC(lane, reg)
			C[r][col] = c[lane][reg]
		}
		for reg := 0; reg < 2; reg++ {
			k, n := fragB(lane, reg)
			B[k][n], B[k+1][n] = lo16(b[lane][reg]), hi16(b[lane][reg])
		}
	}
	for lane := 0; lane < 32; lane++ {
		for reg := 0; reg < 4; reg++ {
			r, col := fragC(lane, reg)
			s := float64(C[r][col])
			for k := 0; k < 16; k++ {
				s += float64(A[r][k]) * float64(B[k][col])
			}
			c[lane][reg] = float32(s)
		}
	}
}

// cToAEmu is A(kk) of flash.cu's header: the C fragments of the 8-column tiles 2kk and 2kk+1
// of s, rounded to bf16, as the A fragment of the next product over those 16 columns.
func cToAEmu(s []warpC, kk int) warpA {
	var a warpA
	for l := range a {
		a[l] = [4]uint32{packBF16(s[2*kk][l][0], s[2*kk][l][1]), packBF16(s[2*kk][l][2], s[2*kk][l][3]),
			packBF16(s[2*kk+1][l][0], s[2*kk+1][l][1]), packBF16(s[2*kk+1][l][2], s[2*kk+1][l][3])}
	}
	return a
}

// mmaAccEmu is mmaEmu into an accumulator that each lane l keeps at acc(l) (mma16816(acc[j], ...)).
func mmaAccEmu(acc func(l int) *[4]float32, a *warpA, b *warpB) {
	var c warpC
	for l := range c {
		c[l] = *acc(l)
	}
	mmaEmu(&c, a, b)
	for l := range c {
		*acc(l) = c[l]
	}
}

// TestMMAFragmentsCover: the fragment mappings hand every element of A (16x16), B (16x8) and
// C (16x8) to exactly one (lane, register, half).
func TestMMAFragmentsCover(t *testing.T) {
	var a [16][16]int
	var b [16][8]int
	var c [16][8]int
	for lane := 0; lane < 32; lane++ {
		for reg := 0; reg < 4; reg++ {
			r, col := fragA(lane, reg)
			a[r][col]++
			a[r][col+1]++
			r, col = fragC(lane, reg)
			c[r][col]++
		}
		for reg := 0; reg < 2; reg++ {
			k, n := fragB(lane, reg)
			b[k][n]++
			b[k+1][n]++
		}
	}
	for i := range a {
		for j := range a[i] {
			if a[i][j] != 1 {
				t.Errorf("A[%d][%d] held %d times", i, j, a[i][j])
			}
		}
		for j := range b[i] {
			if b[i][j] != 1 || c[i][j] != 1 {
				t.Errorf("B[%d][%d] held %d times, C %d times", i, j, b[i][j], c[i][j])
			}
		}
	}
}

// quadMaxEmu and quadSumEmu are quad_max and quad_sum: two xor shuffles (1, then 2).
func quadMaxEmu(v *[32]float32) {
	for _, o := range []int{1, 2} {
		var n [32]float32
		for l := range v {
			n[l] = fmaxf(v[l], v[l^o])
		}
		*v = n
	}
}

func quadSumEmu(v *[32]float32) {
	for _, o := range []int{1, 2} {
		var n [32]float32
		for l := range v {
			n[l] = v[l] + v[l^o]
		}
		*v = n
	}
}

func fmaxf(a, b float32) float32 {
	if a != a {
		return b
	}
	if b != b {
		return a
	}
	return max(a, b)
}

func exp2f(x float32) float32 { return float32(math.Exp2(float64(x))) }

func ldPairEmu(x []float32, i int, ok bool) uint32 {
	if !ok {
		return 0
	}
	return packBF16(x[i], x[i+1])
}

func ld32Emu(s []uint16, i int) uint32 { return packHalves(s[i], s[i+1]) }

// loadAEmu is load_a for one lane: the A fragments of rows ra, ra+8.
func loadAEmu(D int, x []float32, ra, t1, ld, c0, tq int) [][4]uint32 {
	a := make([][4]uint32, D/16)
	rb := ra + 8
	for kk := range a {
		c := c0 + 16*kk + 2*tq
		a[kk] = [4]uint32{ldPairEmu(x, ra*ld+c, ra < t1), ldPairEmu(x, rb*ld+c, rb < t1),
			ldPairEmu(x, ra*ld+c+8, ra < t1), ldPairEmu(x, rb*ld+c+8, rb < t1)}
	}
	return a
}

// loadRowsEmu is load_rows.
func loadRowsEmu(D int, s []uint16, x []float32, r0, n, t1, ld, c0 int) {
	for r := 0; r < n; r++ {
		for c := 0; c < D; c += 2 {
			p := ldPairEmu(x, (r0+r)*ld+c0+c, r0+r < t1)
			s[r*(D+8)+c], s[r*(D+8)+c+1] = uint16(p), uint16(p>>16)
		}
	}
}

// emuFlashFwd is flash_fwd<D> over every block of the grid (tiles, nh).
func emuFlashFwd(D int, out, lse, q, k, v []float32, meta []int32, nh, nkv int, scale float32) {
	const tile = 64
	qw, kw := nh*D, nkv*D
	sl2 := scale * emuLog2e
	for bx := 0; bx < len(meta)/3; bx++ {
		for h := 0; h < nh; h++ {
			t0, t1, r0 := int(meta[3*bx]), int(meta[3*bx+1]), int(meta[3*bx+2])
			kvh := h / (nh / nkv)
			sK := make([]uint16, tile*(D+8))
			sVt := make([]uint16, D*(tile+8))
			type lane struct {
				qa             [][4]uint32
				o              [][4]float32
				ma, mb, la, lb float32
			}
			var warps [4][32]lane
			for w := range warps {
				for l := range warps[w] {
					ra := r0 + 16*w + l>>2
					warps[w][l] = lane{qa: loadAEmu(D, q, ra, t1, qw, h*D, l&3), o: make([][4]float32, D/8),
						ma: float32(math.Inf(-1)), mb: float32(math.Inf(-1))}
				}
			}
			last := min(r0+tile, t1) - 1
			for k0 := t0; k0 <= last; k0 += tile {
				for r := 0; r < tile; r++ {
					for c := 0; c < D; c += 2 {
						ok := k0+r < t1
						base := (k0+r)*kw + kvh*D + c
						p := ldPairEmu(k, base, ok)
						sK[r*(D+8)+c], sK[r*(D+8)+c+1] = uint16(p), uint16(p>>16)
						var v0, v1 uint16
						if ok {
							v0, v1 = bf16Bits(v[base]), bf16Bits(v[base+1])
						}
						sVt[c*(tile+8)+r], sVt[(c+1)*(tile+8)+r] = v0, v1
					}
				}
				for w := range warps {
					L := &warps[w]
					var s [tile / 8]warpC
					for n := 0; n < tile/8; n++ {
						for kk := 0; kk < D/16; kk++ {
							var a warpA
							var b warpB
							for l := 0; l < 32; l++ {
								a[l] = L[l].qa[kk]
								kr := (8*n+l>>2)*(D+8) + 2*(l&3) + 16*kk
								b[l] = [2]uint32{ld32Emu(sK, kr), ld32Emu(sK, kr+8)}
							}
							mmaEmu(&s[n], &a, &b)
						}
					}
					var mxa, mxb [32]float32
					for l := 0; l < 32; l++ {
						ra := r0 + 16*w + l>>2
						rb := ra + 8
						mxa[l], mxb[l] = L[l].ma, L[l].mb
						for n := 0; n < tile/8; n++ {
							for j := 0; j < 4; j++ {
								key, row := k0+8*n+2*(l&3)+j&1, ra
								if j >= 2 {
									row = rb
								}
								if key < t1 && key <= row {
									s[n][l][j] *= sl2
								} else {
									s[n][l][j] = float32(math.Inf(-1))
								}
							}
							mxa[l] = fmaxf(mxa[l], fmaxf(s[n][l][0], s[n][l][1]))
							mxb[l] = fmaxf(mxb[l], fmaxf(s[n][l][2], s[n][l][3]))
						}
					}
					quadMaxEmu(&mxa)
					quadMaxEmu(&mxb)
					for l := 0; l < 32; l++ {
						x := &L[l]
						ca, cb := exp2f(x.ma-mxa[l]), exp2f(x.mb-mxb[l])
						x.ma, x.mb = mxa[l], mxb[l]
						var sa, sb float32
						for n := 0; n < tile/8; n++ {
							s[n][l][0] = exp2f(s[n][l][0] - x.ma)
							s[n][l][1] = exp2f(s[n][l][1] - x.ma)
							s[n][l][2] = exp2f(s[n][l][2] - x.mb)
							s[n][l][3] = exp2f(s[n][l][3] - x.mb)
							sa += s[n][l][0] + s[n][l][1]
							sb += s[n][l][2] + s[n][l][3]
						}
						x.la = x.la*ca + sa
						x.lb = x.lb*cb + sb
						for j := range x.o {
							x.o[j][0] *= ca
							x.o[j][1] *= ca
							x.o[j][2] *= cb
							x.o[j][3] *= cb
						}
					}
					for kk := 0; kk < tile/16; kk++ {
						a := cToAEmu(s[:], kk)
						for j := 0; j < D/8; j++ {
							var b warpB
							for l := 0; l < 32; l++ {
								vr := (8*j+l>>2)*(tile+8) + 16*kk + 2*(l&3)
								b[l] = [2]uint32{ld32Emu(sVt, vr), ld32Emu(sVt, vr+8)}
							}
							mmaAccEmu(func(l int) *[4]float32 { return &L[l].o[j] }, &a, &b)
						}
					}
				}
			}
			for w := range warps {
				var la, lb [32]float32
				for l := 0; l < 32; l++ {
					la[l], lb[l] = warps[w][l].la, warps[w][l].lb
				}
				quadSumEmu(&la)
				quadSumEmu(&lb)
				for l := 0; l < 32; l++ {
					x := &warps[w][l]
					ra := r0 + 16*w + l>>2
					rb := ra + 8
					ia, ib := 1/la[l], 1/lb[l]
					for j := 0; j < D/8; j++ {
						c := h*D + 8*j + 2*(l&3)
						if ra < t1 {
							out[ra*qw+c], out[ra*qw+c+1] = x.o[j][0]*ia, x.o[j][1]*ia
						}
						if rb < t1 {
							out[rb*qw+c], out[rb*qw+c+1] = x.o[j][2]*ib, x.o[j][3]*ib
						}
					}
					if l&3 == 0 {
						if ra < t1 {
							lse[ra*nh+h] = x.ma*emuLn2 + float32(math.Log(float64(la[l])))
						}
						if rb < t1 {
							lse[rb*nh+h] = x.mb*emuLn2 + float32(math.Log(float64(lb[l])))
						}
					}
				}
			}
		}
	}
}

// emuFlashDkv is flash_bwd_dkv<D, BQ> over every block of the grid (tiles, nkv).
func emuFlashDkv(D, BQ int, dk, dv, dout, q, k, v, lse, dd []float32, meta []int32, nh, nkv int, scale float32) {
	const tile = 64
	qw, kw := nh*D, nkv*D
	group := nh / nkv
	sl2 := scale * emuLog2e
	for bx := 0; bx < len(meta)/3; bx++ {
		for kvh := 0; kvh < nkv; kvh++ {
			t1, k0 := int(meta[3*bx+1]), int(meta[3*bx+2])
			sK, sV := make([]uint16, tile*(D+8)), make([]uint16, tile*(D+8))
			sQ, sdO := make([]uint16, BQ*(D+8)), make([]uint16, BQ*(D+8))
			sL, sD := make([]float32, BQ), make([]float32, BQ)
			loadRowsEmu(D, sK, k, k0, tile, t1, kw, kvh*D)
			loadRowsEmu(D, sV, v, k0, tile, t1, kw, kvh*D)
			var dka, dva [4][32][][4]float32
			for w := range dka {
				for l := range dka[w] {
					dka[w][l], dva[w][l] = make([][4]float32, D/8), make([][4]float32, D/8)
				}
			}
			for h := kvh * group; h < (kvh+1)*group; h++ {
				for r0 := k0; r0 < t1; r0 += BQ {
					loadRowsEmu(D, sQ, q, r0, BQ, t1, qw, h*D)
					loadRowsEmu(D, sdO, dout, r0, BQ, t1, qw, h*D)
					for i := 0; i < BQ; i++ {
						sL[i], sD[i] = 0, 0
						if r0+i < t1 {
							sL[i], sD[i] = lse[(r0+i)*nh+h]*emuLog2e, dd[(r0+i)*nh+h]
						}
					}
					for w := 0; w < 4; w++ {
						st, dpt := make([]warpC, BQ/8), make([]warpC, BQ/8)
						for n := 0; n < BQ/8; n++ {
							for kk := 0; kk < D/16; kk++ {
								var ak, av warpA
								var bq, bd warpB
								for l := 0; l < 32; l++ {
									g, tq := l>>2, l&3
									kr := (16*w+g)*(D+8) + 2*tq + 16*kk
									ak[l] = [4]uint32{ld32Emu(sK, kr), ld32Emu(sK, kr+8*(D+8)), ld32Emu(sK, kr+8), ld32Emu(sK, kr+8*(D+8)+8)}
									av[l] = [4]uint32{ld32Emu(sV, kr), ld32Emu(sV, kr+8*(D+8)), ld32Emu(sV, kr+8), ld32Emu(sV, kr+8*(D+8)+8)}
									qr := (8*n+g)*(D+8) + 2*tq + 16*kk
									bq[l] = [2]uint32{ld32Emu(sQ, qr), ld32Emu(sQ, qr+8)}
									bd[l] = [2]uint32{ld32Emu(sdO, qr), ld32Emu(sdO, qr+8)}
								}
								mmaEmu(&st[n], &ak, &bq)
								mmaEmu(&dpt[n], &av, &bd)
							}
							for l := 0; l < 32; l++ {
								ka := k0 + 16*w + l>>2
								for j := 0; j < 4; j++ {
									qi, key := 8*n+2*(l&3)+j&1, ka
									if j >= 2 {
										key = ka + 8
									}
									var p float32
									if r0+qi < t1 && key <= r0+qi && key < t1 {
										p = exp2f(st[n][l][j]*sl2 - sL[qi])
									}
									st[n][l][j] = p
									dpt[n][l][j] = p * (dpt[n][l][j] - sD[qi]) * scale
								}
							}
						}
						for kk := 0; kk < BQ/16; kk++ {
							pa, da := cToAEmu(st, kk), cToAEmu(dpt, kk)
							for j := 0; j < D/8; j++ {
								var bo, bq warpB
								for l := 0; l < 32; l++ {
									qrow, c := 16*kk+2*(l&3), 8*j+l>>2
									o0 := qrow*(D+8) + c
									bo[l] = [2]uint32{packHalves(sdO[o0], sdO[o0+D+8]), packHalves(sdO[o0+8*(D+8)], sdO[o0+9*(D+8)])}
									bq[l] = [2]uint32{packHalves(sQ[o0], sQ[o0+D+8]), packHalves(sQ[o0+8*(D+8)], sQ[o0+9*(D+8)])}
								}
								mmaAccEmu(func(l int) *[4]float32 { return &dva[w][l][j] }, &pa, &bo)
								mmaAccEmu(func(l int) *[4]float32 { return &dka[w][l][j] }, &da, &bq)
							}
						}
					}
				}
			}
			for w := 0; w < 4; w++ {
				for l := 0; l < 32; l++ {
					ka := k0 + 16*w + l>>2
					kb := ka + 8
					for j := 0; j < D/8; j++ {
						c := kvh*D + 8*j + 2*(l&3)
						if ka < t1 {
							dk[ka*kw+c], dk[ka*kw+c+1] = dka[w][l][j][0], dka[w][l][j][1]
							dv[ka*kw+c], dv[ka*kw+c+1] = dva[w][l][j][0], dva[w][l][j][1]
						}
						if kb < t1 {
							dk[kb*kw+c], dk[kb*kw+c+1] = dka[w][l][j][2], dka[w][l][j][3]
							dv[kb*kw+c], dv[kb*kw+c+1] = dva[w][l][j][2], dva[w][l][j][3]
						}
					}
				}
			}
		}
	}
}

// emuFlashDq is flash_bwd_dq<D, BN> over every block of the grid (tiles, nh).
func emuFlashDq(D, BN int, dq, dout, q, k, v, lse, dd []float32, meta []int32, nh, nkv int, scale float32) {
	const tile = 64
	qw, kw := nh*D, nkv*D
	sl2 := scale * emuLog2e
	for bx := 0; bx < len(meta)/3; bx++ {
		for h := 0; h < nh; h++ {
			t0, t1, r0 := int(meta[3*bx]), int(meta[3*bx+1]), int(meta[3*bx+2])
			kvh := h / (nh / nkv)
			sK, sV := make([]uint16, BN*(D+8)), make([]uint16, BN*(D+8))
			type lane struct {
				qa, da         [][4]uint32
				La, Lb, Da, Db float32
				acc            [][4]float32
			}
			var warps [4][32]lane
			for w := range warps {
				for l := range warps[w] {
					ra := r0 + 16*w + l>>2
					rb := ra + 8
					x := lane{qa: loadAEmu(D, q, ra, t1, qw, h*D, l&3), da: loadAEmu(D, dout, ra, t1, qw, h*D, l&3), acc: make([][4]float32, D/8)}
					if ra < t1 {
						x.La, x.Da = lse[ra*nh+h]*emuLog2e, dd[ra*nh+h]
					}
					if rb < t1 {
						x.Lb, x.Db = lse[rb*nh+h]*emuLog2e, dd[rb*nh+h]
					}
					warps[w][l] = x
				}
			}
			last := min(r0+tile, t1) - 1
			for k0 := t0; k0 <= last; k0 += BN {
				loadRowsEmu(D, sK, k, k0, BN, t1, kw, kvh*D)
				loadRowsEmu(D, sV, v, k0, BN, t1, kw, kvh*D)
				for w := range warps {
					L := &warps[w]
					s, dp := make([]warpC, BN/8), make([]warpC, BN/8)
					for n := 0; n < BN/8; n++ {
						for kk := 0; kk < D/16; kk++ {
							var aq, ad warpA
							var bk, bv warpB
							for l := 0; l < 32; l++ {
								aq[l], ad[l] = L[l].qa[kk], L[l].da[kk]
								kr := (8*n+l>>2)*(D+8) + 2*(l&3) + 16*kk
								bk[l] = [2]uint32{ld32Emu(sK, kr), ld32Emu(sK, kr+8)}
								bv[l] = [2]uint32{ld32Emu(sV, kr), ld32Emu(sV, kr+8)}
							}
							mmaEmu(&s[n], &aq, &bk)
							mmaEmu(&dp[n], &ad, &bv)
						}
						for l := 0; l < 32; l++ {
							ra := r0 + 16*w + l>>2
							for j := 0; j < 4; j++ {
								key, row, Lr, Dr := k0+8*n+2*(l&3)+j&1, ra, L[l].La, L[l].Da
								if j >= 2 {
									row, Lr, Dr = ra+8, L[l].Lb, L[l].Db
								}
								var p float32
								if key < t1 && key <= row && row < t1 {
									p = exp2f(s[n][l][j]*sl2 - Lr)
								}
								dp[n][l][j] = p * (dp[n][l][j] - Dr) * scale
							}
						}
					}
					for kk := 0; kk < BN/16; kk++ {
						a := cToAEmu(dp, kk)
						for j := 0; j < D/8; j++ {
							var b warpB
							for l := 0; l < 32; l++ {
								k0p := (16*kk+2*(l&3))*(D+8) + 8*j + l>>2
								b[l] = [2]uint32{packHalves(sK[k0p], sK[k0p+D+8]), packHalves(sK[k0p+8*(D+8)], sK[k0p+9*(D+8)])}
							}
							mmaAccEmu(func(l int) *[4]float32 { return &L[l].acc[j] }, &a, &b)
						}
					}
				}
			}
			for w := range warps {
				for l := 0; l < 32; l++ {
					ra := r0 + 16*w + l>>2
					rb := ra + 8
					for j := 0; j < D/8; j++ {
						c := h*D + 8*j + 2*(l&3)
						if ra < t1 {
							dq[ra*qw+c], dq[ra*qw+c+1] = warps[w][l].acc[j][0], warps[w][l].acc[j][1]
						}
						if rb < t1 {
							dq[rb*qw+c], dq[rb*qw+c+1] = warps[w][l].acc[j][2], warps[w][l].acc[j][3]
						}
					}
				}
			}
		}
	}
}

// flashEmuChunks are the query chunks of flash_bwd_dkv_* and key chunks of flash_bwd_dq_* per
// head dim (the template arguments of their entry points).
var flashEmuChunks = map[int][2]int{64: {64, 64}, 128: {16, 32}}

func emuNMSE(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	return num / den
}

// TestFlashEmulation runs the emulated kernels (forward; D = rowsum(dO∘O) as attn_rowdot;
// dK, dV; dQ) on packed sequences of odd lengths around the 64-row tiles, GQA groups 1, 2 and
// 7, head dims 64 and 128, and compares them with the CPU backend's row paths (fp32), given
// the inputs as they are (NMSE about 1e-5 for out and 2e-5 for the gradients: the rounding
// of every operand to bf16, 2⁻⁹ relative) and given the inputs rounded to bf16 (about 1e-6 and
// 4e-6: only the roundings of P and dS to bf16 remain; lse about 1e-15). An error of the
// tiling, the masking, the online softmax or the fragment bookkeeping gives errors of order 1.
// Every output row must be written: the outputs start as NaN, and a NaN left fails.
func TestFlashEmulation(t *testing.T) {
	ref := cpu.New(cpu.WithTiledAttentionFrom(math.MaxInt))
	for _, tc := range []struct {
		h, kv, dh int
		lens      []int
	}{
		{4, 2, 64, []int{1, 65, 130, 17}},
		{2, 2, 128, []int{64, 129}},
		{7, 1, 64, []int{200}},
		{4, 2, 128, []int{3, 191}},
	} {
		t.Run(fmt.Sprintf("H=%d,KV=%d,Dh=%d,lens=%v", tc.h, tc.kv, tc.dh, tc.lens), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.dh), uint64(tc.h)))
			seqStart := []int32{0}
			for _, n := range tc.lens {
				seqStart = append(seqStart, seqStart[len(seqStart)-1]+int32(n))
			}
			T := int(seqStart[len(seqStart)-1])
			qw, kw := tc.h*tc.dh, tc.kv*tc.dh
			randn := func(n int) []float32 {
				x := make([]float32, n)
				for i := range x {
					x[i] = float32(rng.NormFloat64())
				}
				return x
			}
			nan := func(n int) []float32 {
				x := make([]float32, n)
				for i := range x {
					x[i] = float32(math.NaN())
				}
				return x
			}
			q, k, v, dout := randn(T*qw), randn(T*kw), randn(T*kw), randn(T*qw)
			up := func(x []float32, cols int) *engine.Tensor {
				tt, err := ref.Upload(engine.F32, x, false, T, cols)
				if err != nil {
					t.Fatal(err)
				}
				return tt
			}
			down := func(tt *engine.Tensor) []float32 {
				x := make([]float32, tt.Len())
				if err := ref.Download(tt, x); err != nil {
					t.Fatal(err)
				}
				return x
			}
			// The reference on the inputs as given, and on the inputs rounded to bf16 (what the
			// kernels multiply); the backward from the reference's out and lse, as the
			// conformance case does.
			type refOut struct{ o, l, dq, dk, dv []float32 }
			reference := func(q, k, v, dout []float32) refOut {
				ro, rl := ref.Alloc(T, qw), ref.Alloc(T, tc.h)
				ref.AttentionTrain(ro, rl, up(q, qw), up(k, kw), up(v, kw), seqStart)
				rdq, rdk, rdv := ref.Alloc(T, qw), ref.Alloc(T, kw), ref.Alloc(T, kw)
				ref.AttentionBackward(rdq, rdk, rdv, up(dout, qw), up(q, qw), up(k, kw), up(v, kw), ro, rl, seqStart)
				return refOut{down(ro), down(rl), down(rdq), down(rdk), down(rdv)}
			}
			rnd := func(x []float32) []float32 {
				y := make([]float32, len(x))
				for i := range x {
					y[i] = bf16Val(bf16Bits(x[i]))
				}
				return y
			}
			exact, rounded := reference(q, k, v, dout), reference(rnd(q), rnd(k), rnd(v), rnd(dout))
			wantO, wantL := exact.o, exact.l
			scale := float32(1 / math.Sqrt(float64(tc.dh)))
			o, l := nan(T*qw), nan(T*tc.h)
			emuFlashFwd(tc.dh, o, l, q, k, v, flashTiles(seqStart, false), tc.h, tc.kv, scale)
			dd := make([]float32, T*tc.h) // attn_rowdot of the reference's out
			for r := range dd {
				var s float32
				for d := 0; d < tc.dh; d++ {
					s += dout[r*tc.dh+d] * wantO[r*tc.dh+d]
				}
				dd[r] = s
			}
			dq, dk, dv := nan(T*qw), nan(T*kw), nan(T*kw)
			ch := flashEmuChunks[tc.dh]
			emuFlashDkv(tc.dh, ch[0], dk, dv, dout, q, k, v, wantL, dd, flashTiles(seqStart, true), tc.h, tc.kv, scale)
			emuFlashDq(tc.dh, ch[1], dq, dout, q, k, v, wantL, dd, flashTiles(seqStart, false), tc.h, tc.kv, scale)
			for _, c := range []struct {
				name       string
				got        []float32
				want       [2][]float32 // exact, rounded inputs
				tolExact   float64
				tolRounded float64
			}{
				{"out", o, [2][]float32{exact.o, rounded.o}, 2e-5, 3e-6},
				{"lse", l, [2][]float32{exact.l, rounded.l}, 1e-6, 1e-12},
				{"dq", dq, [2][]float32{exact.dq, rounded.dq}, 6e-5, 2e-5},
				{"dk", dk, [2][]float32{exact.dk, rounded.dk}, 6e-5, 2e-5},
				{"dv", dv, [2][]float32{exact.dv, rounded.dv}, 6e-5, 1e-5},
			} {
				e, er := emuNMSE(c.got, c.want[0]), emuNMSE(c.got, c.want[1])
				t.Logf("%s: NMSE %.2e against fp32 attention, %.2e against it on bf16-rounded inputs", c.name, e, er)
				if !(e <= c.tolExact) || !(er <= c.tolRounded) {
					t.Errorf("%s: NMSE %.3g (tolerance %.0e) against the CPU's fp32 attention, %.3g (tolerance %.0e) on bf16-rounded inputs",
						c.name, e, c.tolExact, er, c.tolRounded)
				}
			}
		})
	}
}

// TestFlashEmulationMatchesSource: the emulation's constants are the kernels' (FL_TILE, the
// chunk sizes of the backward's template arguments, the launch's 4 warps), so that a change
// to flash.cu without the emulation fails here.
func TestFlashEmulationMatchesSource(t *testing.T) {
	src, err := kernelFS.ReadFile("kernels/flash.cu")
	if err != nil {
		t.Fatal(err)
	}
	find := func(re string) []string {
		m := regexp.MustCompile(re).FindStringSubmatch(string(src))
		if m == nil {
			t.Fatalf("flash.cu has no %s", re)
		}
		return m[1:]
	}
	if m := find(`#define FL_TILE (\d+)`); m[0] != fmt.Sprint(flashTile) {
		t.Errorf("FL_TILE %s, flashTile %d", m[0], flashTile)
	}
	if m := find(`#define FL_WARPS (\d+)`); m[0] != "4" {
		t.Errorf("FL_WARPS %s, the emulation runs 4 warps", m[0])
	}
	for d, ch := range flashEmuChunks {
		if m := find(fmt.Sprintf(`flash_bwd_dkv<%d, (\d+)>`, d)); m[0] != fmt.Sprint(ch[0]) {
			t.Errorf("flash_bwd_dkv<%d, %s>, the emulation's chunk %d", d, m[0], ch[0])
		}
		if m := find(fmt.Sprintf(`flash_bwd_dq<%d, (\d+)>`, d)); m[0] != fmt.Sprint(ch[1]) {
			t.Errorf("flash_bwd_dq<%d, %s>, the emulation's chunk %d", d, m[0], ch[1])
		}
	}
}
