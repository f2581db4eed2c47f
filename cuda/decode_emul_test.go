package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// emulCache is a paged KV cache in the device layout, [blocks, KV, BS, Dh], of fp32 (k, v) or
// of bf16 bits (k16, v16).
type emulCache struct {
	kvh, bs, dh int
	k, v        []float32
	k16, v16    []uint16
}

func (c *emulCache) write(slot, h int, k, v []float32) {
	off := ((slot/c.bs*c.kvh+h)*c.bs + slot%c.bs) * c.dh
	if c.k16 != nil {
		for d := range c.dh {
			c.k16[off+d], c.v16[off+d] = bf16RNE(k[d]), bf16RNE(v[d])
		}
		return
	}
	copy(c.k[off:off+c.dh], k)
	copy(c.v[off:off+c.dh], v)
}

// bf16RNE is f32_to_bf16 of common.cuh (round to nearest even), for finite values.
func bf16RNE(f float32) uint16 {
	u := math.Float32bits(f)
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// load is da_load: vector j of the row at off as VE floats; a bf16 vector is read as four
// little-endian u32 words, element 2i from the low half of word i.
func (c *emulCache) load(val bool, off, j int, f []float32) {
	al := c.dh%len(f) == 0
	if c.k16 != nil {
		src := c.k16
		if val {
			src = c.v16
		}
		if al {
			for i := range 4 {
				u := uint32(src[off+8*j+2*i]) | uint32(src[off+8*j+2*i+1])<<16 // the 16-byte load
				f[2*i], f[2*i+1] = math.Float32frombits(u<<16), math.Float32frombits(u&0xffff0000)
			}
			return
		}
		for i := range f {
			f[i] = 0
			if d := 8*j + i; d < c.dh {
				f[i] = math.Float32frombits(uint32(src[off+d]) << 16)
			}
		}
		return
	}
	src := c.k
	if val {
		src = c.v
	}
	for i := range f {
		f[i] = 0
		if d := len(f)*j + i; d < c.dh {
			f[i] = src[off+d]
		}
	}
}

func expf32(x float32) float32 { return float32(math.Exp(float64(x))) }

// emulDecodeAttn runs decode_attn (decode_attn.cu) block by block, warp by warp, in fp32, then
// decode_attn_combine when split: the kernels' partitioning, head slices, tiles, online
// softmax, and the lanes' split of P·V over (key, value vector) with its shuffle reduction
// (the scores' and the sums' lanes are summed in one order).
func emulDecodeAttn(c *emulCache, out, q []float32, meta []int32, T, nh int, scale float32, part, nsplit int) {
	const warps, maxG, tile = 4, decodeMaxGroup, decodeTile
	nkv, dh, bs := c.kvh, c.dh, c.bs
	VE := 4
	if c.k16 != nil {
		VE = 8
	}
	NV := (dh + VE - 1) / VE
	G := nh / nkv
	slices := (G + maxG - 1) / maxG
	pm, pl := make([]float32, T*nh*nsplit), make([]float32, T*nh*nsplit)
	po := make([]float32, T*nh*nsplit*dh)
	for t := range T {
		table := meta[meta[2*t]:]
		n := int(meta[2*t+1]) + 1
		rowOff := func(p, kvh int) int { return ((int(table[p/bs])*nkv+kvh)*bs + p%bs) * dh }
		for y := range nkv * slices {
			kvh := y / slices
			h0 := kvh*G + (y%slices)*maxG
			ng := min(maxG, kvh*G+G-h0)
			for z := range nsplit {
				p0, p1 := z*part, min(n, z*part+part)
				if p0 >= p1 {
					continue
				}
				sq := make([][]float32, ng)
				for g := range ng {
					sq[g] = make([]float32, NV*VE)
					for d := range dh {
						sq[g][d] = q[(t*nh+h0+g)*dh+d] * scale
					}
				}
				var wm, wl [warps][maxG]float32
				var wacc [warps][maxG][]float32
				NVP := 1
				for NVP < NV && NVP < 32 {
					NVP <<= 1
				}
				KPW, NR := 32/NVP, 8/VE
				for w := range warps {
					m, l := &wm[w], &wl[w]
					var lacc [32][maxG][8]float32 // each lane's accumulators (acc in the kernel)
					for g := range ng {
						m[g] = float32(math.Inf(-1))
						wacc[w][g] = make([]float32, dh)
					}
					for t0 := p0 + tile*w; t0 < p1; t0 += tile * warps {
						// 1. lane i: the score of position t0+i
						var s, e [tile][maxG]float32
						f := make([]float32, VE)
						for i := range tile {
							if t0+i >= p1 {
								continue
							}
							for j := range NV {
								c.load(false, rowOff(t0+i, kvh), j, f)
								for g := range ng {
									for x := range VE {
										s[i][g] += sq[g][j*VE+x] * f[x]
									}
								}
							}
						}
						// 2. online softmax
						for g := range ng {
							mx := float32(math.Inf(-1))
							for i := range tile {
								if t0+i < p1 {
									mx = max(mx, s[i][g])
								}
							}
							mn := max(m[g], mx)
							cr := expf32(m[g] - mn)
							l[g] *= cr
							for lane := range 32 {
								for x := range 8 {
									lacc[lane][g][x] *= cr
								}
							}
							for i := range tile {
								if t0+i < p1 {
									e[i][g] = expf32(s[i][g] - mn)
									l[g] += e[i][g]
								}
							}
							m[g] = mn
						}
						// 3. lane c + NVP·kl: vector c (and c+32) of keys kl, kl+KPW, ...
						for lane := range 32 {
							cl, kl := lane%NVP, lane/NVP
							for k := kl; k < tile && t0+k < p1; k += KPW {
								var f8 [8]float32
								for r := range NR {
									if j := cl + 32*r; j < NV {
										c.load(true, rowOff(t0+k, kvh), j, f8[r*VE:(r+1)*VE])
									}
								}
								for g := range ng {
									for x := range 8 {
										lacc[lane][g][x] += e[k][g] * f8[x]
									}
								}
							}
						}
					}
					// The shuffle reduction over the lanes of one vector, then lanes kl = 0 write.
					for o := NVP; o < 32; o <<= 1 {
						prev := lacc
						for lane := range 32 {
							for g := range ng {
								for x := range 8 {
									lacc[lane][g][x] = prev[lane][g][x] + prev[lane^o][g][x]
								}
							}
						}
					}
					for lane := range NVP {
						for g := range ng {
							for r := range NR {
								for x := range VE {
									if d := (lane+32*r)*VE + x; d < dh {
										wacc[w][g][d] = lacc[lane][g][r*VE+x]
									}
								}
							}
						}
					}
				}
				for g := range ng {
					M := wm[0][g]
					for w := 1; w < warps; w++ {
						M = max(M, wm[w][g])
					}
					var L float32
					o := make([]float32, dh)
					for w := range warps {
						if wl[w][g] == 0 {
							continue
						}
						f := expf32(wm[w][g] - M)
						L += wl[w][g] * f
						for d := range o {
							o[d] += wacc[w][g][d] * f
						}
					}
					row := t*nh + h0 + g
					if nsplit == 1 {
						for d := range o {
							out[row*dh+d] = o[d] / L
						}
						continue
					}
					r := row*nsplit + z
					copy(po[r*dh:(r+1)*dh], o)
					pm[r], pl[r] = M, L
				}
			}
		}
	}
	if nsplit == 1 {
		return
	}
	for t := range T {
		n := int(meta[2*t+1]) + 1
		ns := min(nsplit, (n+part-1)/part)
		for h := range nh {
			r := (t*nh + h) * nsplit
			M := pm[r]
			for s := 1; s < ns; s++ {
				M = max(M, pm[r+s])
			}
			var L float32
			for s := range ns {
				L += pl[r+s] * expf32(pm[r+s]-M)
			}
			for d := range dh {
				var o float32
				for s := range ns {
					o += po[(r+s)*dh+d] * expf32(pm[r+s]-M)
				}
				out[(t*nh+h)*dh+d] = o / L
			}
		}
	}
}

// TestDecodeAttnEmulation checks the decode_attn kernels' algorithm, emulated on the host
// (emulDecodeAttn: splits chosen by decodeSplit, head slices of a group above 8, tiles of 32
// positions strided over 4 warps, the online softmax, the bf16 16-byte vector unpacking and
// the element path of unaligned rows, the partials' combination), against the CPU backend's
// Attention over the same cache (fp32, or bf16 rounded the same way) and batch: one decode row
// at long context, a short prefill, and a one-position row.
func TestDecodeAttnEmulation(t *testing.T) {
	const bs = engine.DefaultBlockSize
	type shape struct{ h, kv, dh int }
	for _, tc := range []struct {
		sh       shape
		dt       engine.DType
		ctx      int
		opts     Options
		sms      int
		wantSplt bool
	}{
		{shape{12, 2, 128}, engine.BF16, 3000, Options{SplitKVDecode: true}, 132, true},
		{shape{12, 2, 128}, engine.F32, 3000, Options{SplitKVDecode: true}, 132, true},
		{shape{12, 2, 128}, engine.BF16, 3000, Options{}, 132, false},
		{shape{12, 1, 32}, engine.BF16, 700, Options{SplitKVDecode: true, SplitKVMinPart: 32}, 132, true},
		{shape{14, 2, 64}, engine.F32, 700, Options{SplitKVDecode: true, SplitKVMinPart: 100}, 16, true},
		{shape{4, 2, 10}, engine.BF16, 300, Options{SplitKVDecode: true, SplitKVMinPart: 32}, 132, true}, // unaligned rows
		{shape{4, 2, 10}, engine.F32, 300, Options{}, 132, false},
		{shape{3, 3, 8}, engine.BF16, 200, Options{SplitKVDecode: true, SplitKVMinPart: 64}, 132, true},
		{shape{2, 1, 256}, engine.F32, 500, Options{SplitKVDecode: true, SplitKVMinPart: 32}, 132, true},
		{shape{2, 1, 256}, engine.BF16, 500, Options{}, 132, false},
	} {
		name := fmt.Sprintf("H=%d,KV=%d,Dh=%d/%v/ctx=%d/%+v", tc.sh.h, tc.sh.kv, tc.sh.dh, tc.dt, tc.ctx, tc.opts)
		t.Run(name, func(t *testing.T) {
			H, KV, dh := tc.sh.h, tc.sh.kv, tc.sh.dh
			r := rand.New(rand.NewPCG(uint64(H*1000+dh), uint64(tc.ctx)))
			randn := func(n int) []float32 {
				x := make([]float32, n)
				for i := range x {
					x[i] = float32(r.NormFloat64())
				}
				return x
			}
			// Step 2's rows: A decodes at ctx, B prefills 3 tokens at 40, C holds one position.
			lens := []int{tc.ctx, 40, 1}
			news := []int{1, 3, 1}
			var tables [][]int32
			nb := int32(0)
			for _, n := range lens {
				var tb []int32
				for p := 0; p < n; p += bs {
					tb = append(tb, nb)
					nb++
				}
				tables = append(tables, tb)
			}
			// Step 1 fills every block: one sequence of bs positions per block.
			s1 := &engine.AttnBatch{SeqStart: []int32{0}}
			for b := range nb {
				s1.Blocks = append(s1.Blocks, []int32{b})
				s1.CtxLen = append(s1.CtxLen, bs)
				for i := range int32(bs) {
					s1.Slots = append(s1.Slots, b*bs+i)
				}
				s1.SeqStart = append(s1.SeqStart, int32(len(s1.Slots)))
			}
			s2 := &engine.AttnBatch{SeqStart: []int32{0}}
			for i, n := range lens {
				s2.Blocks = append(s2.Blocks, tables[i])
				s2.CtxLen = append(s2.CtxLen, int32(n))
				for p := n - news[i]; p < n; p++ {
					s2.Slots = append(s2.Slots, tables[i][p/bs]*bs+int32(p%bs))
				}
				s2.SeqStart = append(s2.SeqStart, int32(len(s2.Slots)))
			}
			T1, T2 := len(s1.Slots), len(s2.Slots)
			q1, k1, v1 := randn(T1*H*dh), randn(T1*KV*dh), randn(T1*KV*dh)
			q2, k2, v2 := randn(T2*H*dh), randn(T2*KV*dh), randn(T2*KV*dh)

			// The CPU backend: both steps through its own store.
			c := cpu.New()
			store, err := c.NewKVStore(1, KV, bs, dh, int(nb), tc.dt)
			if err != nil {
				t.Fatal(err)
			}
			up := func(x []float32, rows, cols int) *engine.Tensor {
				tt, err := c.Upload(engine.F32, x, false, rows, cols)
				if err != nil {
					t.Fatal(err)
				}
				return tt
			}
			c.Attention(c.Alloc(T1, H*dh), up(q1, T1, H*dh), up(k1, T1, KV*dh), up(v1, T1, KV*dh), store, 0, s1)
			outT := c.Alloc(T2, H*dh)
			c.Attention(outT, up(q2, T2, H*dh), up(k2, T2, KV*dh), up(v2, T2, KV*dh), store, 0, s2)
			want := make([]float32, T2*H*dh)
			if err := c.Download(outT, want); err != nil {
				t.Fatal(err)
			}

			// The emulated kernels over the same writes.
			ec := &emulCache{kvh: KV, bs: bs, dh: dh}
			size := int(nb) * KV * bs * dh
			if tc.dt == engine.BF16 {
				ec.k16, ec.v16 = make([]uint16, size), make([]uint16, size)
			} else {
				ec.k, ec.v = make([]float32, size), make([]float32, size)
			}
			for _, st := range []struct {
				slots []int32
				k, v  []float32
			}{{s1.Slots, k1, v1}, {s2.Slots, k2, v2}} {
				for i, slot := range st.slots {
					for h := range KV {
						o := (i*KV + h) * dh
						ec.write(int(slot), h, st.k[o:o+dh], st.v[o:o+dh])
					}
				}
			}
			// Attention's metadata.
			meta := make([]int32, 2*T2)
			for sq := range s2.CtxLen {
				off := int32(len(meta))
				meta = append(meta, s2.Blocks[sq]...)
				nNew := s2.SeqStart[sq+1] - s2.SeqStart[sq]
				for tt := s2.SeqStart[sq]; tt < s2.SeqStart[sq+1]; tt++ {
					meta[2*tt] = off
					meta[2*tt+1] = s2.CtxLen[sq] - nNew + (tt - s2.SeqStart[sq])
				}
			}
			b := &Backend{opts: tc.opts, sms: tc.sms}
			G := H / KV
			part, ns := b.decodeSplit(T2, KV*((G+decodeMaxGroup-1)/decodeMaxGroup), tc.ctx)
			if (ns > 1) != tc.wantSplt {
				t.Fatalf("%d splits of %d", ns, part)
			}
			got := make([]float32, T2*H*dh)
			emulDecodeAttn(ec, got, q2, meta, T2, H, float32(1/math.Sqrt(float64(dh))), part, ns)
			var num, den float64
			for i := range want {
				d := float64(got[i] - want[i])
				num += d * d
				den += float64(want[i]) * float64(want[i])
				if math.IsNaN(float64(got[i])) {
					t.Fatalf("NaN at %d", i)
				}
			}
			if nmse := num / den; nmse > 1e-10 {
				t.Fatalf("%d splits of %d: NMSE %.3g against the CPU backend", ns, part, nmse)
			} else {
				t.Logf("%d splits of %d: NMSE %.3g", ns, part, nmse)
			}
		})
	}
}
