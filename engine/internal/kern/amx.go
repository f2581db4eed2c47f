package kern

import (
	"encoding/binary"
	"unsafe"
)

// AMX (Intel Advanced Matrix Extensions: AMX-TILE, AMX-BF16) multiplies bf16 dot-product weights
// on CPUs that have it (Sapphire Rapids and later), in place of VDPBF16PS. Eight tile registers
// TMM0-TMM7 hold up to 16 rows of 64 bytes each; TDPBF16PS multiplies a tile of 16 rows x 16
// pairs of bf16 (x) by a tile of 16 pairs x 16 columns in VNNI layout (W: each 64-byte row holds,
// for 16 columns, the pair of bf16 at k = 2kk, 2kk+1) into a 16 x 16 fp32 tile.
//
// The dot Weight's panels ([np][k2p][32] pairs, see dot.go) are that layout already: rows kk of
// a panel are 128 bytes, the first 64 the pairs of columns 0-15, the next 64 those of columns
// 16-31, so a W tile is 16 panel rows loaded 128 bytes apart, and k2p (the pairs rounded up to
// 16) makes the last tile of k whole (zero pairs). The x rows are packed row-major as pairs,
// [m][k2p] (zero pairs past k), so an x tile is 16 rows k2p·4 bytes apart.
//
// What one output computes (Intel's pseudo-code of TDPBF16PS, Intel Architecture Instruction Set
// Extensions Programming Reference, and amxDotElem): for each block of 16 k pairs, an even and an
// odd fp32 sum start from +0 and take, in k order, a fused multiply-add of the block's even
// (resp. odd) bf16 products; then the block's value even + odd (rounded) is added to the output
// (rounded). The output starts at +0 (TILEZERO) and takes the blocks in k order. Every rounding
// is to nearest even; bf16 inputs that are denormal count as zero (DAZ) and every fp32 result
// that is tiny after rounding is a zero of its sign (FTZ). So the bits differ from VDPBF16PS's
// (one sum per output, odd then even product each step): a CPU's dot weights give its engine's
// bits, the same for any m, row blocking and thread count.

// tileConfig is LDTILECFG's 64-byte memory operand (palette 1): byte 0 palette_id, byte 1
// start_row, bytes 2-15 reserved (zero), bytes 16-47 colsb[16] (uint16 little-endian: bytes per
// row of tile i), bytes 48-63 rows[16] (uint8). A tile whose rows and colsb are zero is unused.
type tileConfig [64]byte

// colsb returns the bytes per row of tile t.
func (c *tileConfig) colsb(t int) int { return int(binary.LittleEndian.Uint16(c[16+2*t:])) }

// rows returns the rows of tile t.
func (c *tileConfig) rows(t int) int { return int(c[48+t]) }

// newTileConfig returns the configuration of the kernel's tile plan for a row block of rows0
// (x tile 0) + rows1 (x tile 1) rows: TMM0, TMM1 output rows 0-15 (columns 0-15, 16-31), TMM2,
// TMM3 output rows 16-31, TMM4, TMM5 x rows 0-15 and 16-31 (16 pairs), TMM6, TMM7 the two halves
// of the panel (16 pairs x 16 columns); every used tile has 64-byte rows.
func newTileConfig(rows0, rows1 int) tileConfig {
	var c tileConfig
	c[0] = 1 // palette 1: 8 tiles of up to 16 rows x 64 bytes
	set := func(t, rows int) {
		if rows > 0 {
			binary.LittleEndian.PutUint16(c[16+2*t:], 64)
			c[48+t] = byte(rows)
		}
	}
	set(0, rows0)
	set(1, rows0)
	set(2, rows1)
	set(3, rows1)
	set(4, rows0)
	set(5, rows1)
	set(6, 16)
	set(7, 16)
	return c
}

// amxConfigs holds the configuration of every row split, 64-byte aligned (LDTILECFG's operand is
// one cache line): amxConfig(rows0, rows1) for 1 <= rows0 <= 16, rows1 <= 16 (rows1 > 0 only
// with rows0 = 16).
var amxConfigs = func() []tileConfig {
	buf := make([]byte, 17*17*64+64)
	off := (64 - int(uintptr(unsafe.Pointer(&buf[0]))%64)) % 64
	cs := unsafe.Slice((*tileConfig)(unsafe.Pointer(&buf[off])), 17*17)
	for r0 := 0; r0 <= 16; r0++ {
		for r1 := 0; r1 <= 16; r1++ {
			cs[r0*17+r1] = newTileConfig(r0, r1)
		}
	}
	return cs
}()

// amxConfig returns the configuration for a row block of rows0 + rows1 rows (x tile 0 and 1).
func amxConfig(rows0, rows1 int) *tileConfig { return &amxConfigs[rows0*17+rows1] }

// amxKernel is the AMX micro-kernel contract (amxDotBF16 in assembly, kernelAMXGo in Go): with
// the tiles configured by cfg, output rows i < cfg.rows(4) (and 16 + i, i < cfg.rows(5), when
// mt = 2) of one panel: c[i*ldc + 4j] (bytes) for j < 32 = the TDPBF16PS sum over kb blocks of
// 16 pairs of x row i (a + i·lda bytes) and of the panel b ([16·kb][32] pairs).
type amxKernel func(cfg *tileConfig, a, b *uint32, c *float32, kb, lda, ldc, mt int)

// amxDotElem is one output element of one TDPBF16PS: c plus the dot product of a and b, 16 pairs
// of bf16 each (lo: even k, hi: odd k), as Intel's pseudo-code defines it:
//
//	even, odd = +0, +0
//	for kk in 0..15: even = fma(a[kk].lo, b[kk].lo, even); odd = fma(a[kk].hi, b[kk].hi, odd)
//	return c + (even + odd)
//
// each operation in fp32 with DAZ, FTZ and round to nearest even (fmaFTZ, roundFTZ).
func amxDotElem(c float32, a, b *[16]uint32) float32 {
	var even, odd float32
	for kk := range 16 {
		even = fmaFTZ(even, uint16(a[kk]), uint16(b[kk]))
		odd = fmaFTZ(odd, uint16(a[kk]>>16), uint16(b[kk]>>16))
	}
	t := roundFTZ(float64(dazF32(even)) + float64(dazF32(odd)))
	return roundFTZ(float64(dazF32(c)) + float64(t))
}

// kernelAMXGo is the Go emulation of amxDotBF16 (the amxKernel contract): the oracle the
// hardware kernel is checked against bit for bit, and the AMX path's kernel in tests on CPUs
// without AMX.
func kernelAMXGo(cfg *tileConfig, a, b *uint32, c *float32, kb, lda, ldc, mt int) {
	k2p := 16 * kb
	bs := unsafe.Slice(b, k2p*nr)
	var ab, bb [16]uint32
	for t := 0; t < mt; t++ {
		for i := 0; i < cfg.rows(4+t); i++ {
			row := 16*t + i
			as := unsafe.Slice((*uint32)(unsafe.Add(unsafe.Pointer(a), row*lda)), k2p)
			cs := unsafe.Slice((*float32)(unsafe.Add(unsafe.Pointer(c), row*ldc)), nr)
			for j := range nr {
				var acc float32 // TILEZERO
				for blk := 0; blk < kb; blk++ {
					copy(ab[:], as[16*blk:])
					for kk := range 16 {
						bb[kk] = bs[(16*blk+kk)*nr+j]
					}
					acc = amxDotElem(acc, &ab, &bb)
				}
				cs[j] = acc
			}
		}
	}
}

// matmulAMX is matmul for dot weights on an AMX path: x rounded to bf16 and packed row-major as
// pairs [m][k2p], then every (panel, row group) item runs the AMX kernel on row blocks of up to
// 32 rows (two x tiles) over all of k.
func (t Threads) matmulAMX(ys [][]float32, x []float32, m int, ws []*Weight, trans bool) {
	k, np := ws[0].k, 0
	for _, w := range ws {
		np += w.np
	}
	k2p := ws[0].k2p()
	im := cur
	const mr = 32
	nrb := (m + mr - 1) / mr
	first := func(r int) int { return r * m / nrb }

	ap, put := t.packAMX(x, m, k, k2p, trans)
	defer put()

	p := t.count()
	nrg := 1
	if np < 4*p && nrb > 1 {
		nrg = min(nrb, (4*p+np-1)/np)
	}
	t.ParallelFine(np*nrg, chunksPerThread, func(lo, hi int) {
		var tile [mr * nr]float32 // output rows of a partial last panel
		for it := lo; it < hi; it++ {
			pn, g := it/nrg, it%nrg
			wi := 0
			for pn >= ws[wi].np {
				pn -= ws[wi].np
				wi++
			}
			w, y, n := ws[wi], ys[wi], ws[wi].n
			b := &w.dp[pn*k2p*nr]
			last := n%nr != 0 && pn == w.np-1
			for r := g * nrb / nrg; r < (g+1)*nrb/nrg; r++ {
				r0, rows := first(r), first(r+1)-first(r)
				rows0 := min(rows, 16)
				mt := 1
				if rows > 16 {
					mt = 2
				}
				c, ldc := &tile[0], nr
				if !last {
					c, ldc = &y[r0*n+pn*nr], n
				}
				im.amx(amxConfig(rows0, rows-rows0), &ap[r0*k2p], b, c, k2p/16, 4*k2p, 4*ldc, mt)
				if last {
					for i := 0; i < rows; i++ {
						row := (r0 + i) * n
						copy(y[row+pn*nr:row+n], tile[i*nr:i*nr+n%nr])
					}
				}
			}
		}
	})
}

// packAMX rounds x [m,k] (or xᵀ given as [k,m] when trans) to bf16 and packs it row-major as
// pairs [m][k2p] for the AMX kernel (zero pairs past k). put returns the scratch.
func (t Threads) packAMX(x []float32, m, k, k2p int, trans bool) (ap []uint32, put func()) {
	bp := getBuf(m * k2p)
	ap = unsafe.Slice((*uint32)(unsafe.Pointer(&(*bp)[0])), m*k2p) // [m][k2p] pairs
	if trans {
		tp := getBuf((m*k + 1) / 2)
		defer putBuf(tp)
		xt := unsafe.Slice((*uint16)(unsafe.Pointer(&(*tp)[0])), m*k) // all of x [k][m] in bf16
		t.Parallel(k, max(1, 16384/m), func(lo, hi int) {
			cvtRow(xt[lo*m:hi*m], x[lo*m:hi*m])
		})
		t.Parallel(m, max(1, 16384/k2p), func(lo, hi int) {
			for i := lo; i < hi; i++ {
				row := unsafe.Slice((*uint16)(unsafe.Pointer(&ap[i*k2p])), 2*k2p)
				for kk := 0; kk < k; kk++ {
					row[kk] = xt[kk*m+i]
				}
				clear(row[k:])
			}
		})
	} else {
		t.Parallel(m, max(1, 16384/k2p), func(lo, hi int) {
			for i := lo; i < hi; i++ {
				row := unsafe.Slice((*uint16)(unsafe.Pointer(&ap[i*k2p])), 2*k2p)
				cvtRow(row[:k], x[i*k:i*k+k])
				clear(row[k:])
			}
		})
	}
	return ap, func() { putBuf(bp) }
}
