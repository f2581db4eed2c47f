package engine

import (
	"errors"
	"math"
)

// This file holds the RoPE pieces that yarn scaling adds: its inverse frequencies (used by
// Config.InvFreq) and its attention factor, which multiplies the cos and sin tables: the
// model's tables (RopeTables), the float64 reference (RefModel) and the ONNX export (a Mul
// after Cos and Sin) all apply it.
//
// RopeAttentionFactor is the factor the RoPE cos and sin tables are multiplied by: 1 except
// for yarn, where it is rope_scaling's attention_factor or, when absent, HF's default
// 0.1 ln(factor) + 1 (or mscale's ratio form when mscale and mscale_all_dim are both given).
func (c *Config) RopeAttentionFactor() float64 {
	rs := c.RopeScaling
	if rs == nil || rs.Type != "yarn" {
		return 1
	}
	if rs.AttentionFactor != nil {
		return *rs.AttentionFactor
	}
	f := rs.yarnFactor(c)
	if rs.Mscale != 0 && rs.MscaleAllDim != 0 {
		return yarnMscale(f, rs.Mscale) / yarnMscale(f, rs.MscaleAllDim)
	}
	return yarnMscale(f, 1)
}

// RopeTables returns the RoPE tables cos and sin, each [n, head_dim/2] row-major (position p,
// frequency i at p*head_dim/2+i): cos(p·inv_freq[i]) and sin(p·inv_freq[i]) times
// RopeAttentionFactor, computed in float64 and rounded once.
func (c *Config) RopeTables(n int) (cos, sin []float32) {
	inv := c.InvFreq()
	half := len(inv)
	scale := c.RopeAttentionFactor()
	cos = make([]float32, n*half) // [n, Dh/2]
	sin = make([]float32, n*half) // [n, Dh/2]
	for p := 0; p < n; p++ {
		for i, f := range inv {
			s, co := math.Sincos(float64(p) * f)
			cos[p*half+i], sin[p*half+i] = float32(co*scale), float32(s*scale)
		}
	}
	return cos, sin
}

func yarnMscale(scale, mscale float64) float64 {
	if scale <= 1 {
		return 1
	}
	return 0.1*mscale*math.Log(scale) + 1
}

// yarnFactor is the scaling factor; a config without one takes max_position_embeddings over
// original_max_position_embeddings, as transformers does.
func (rs *RopeScaling) yarnFactor(c *Config) float64 {
	if rs.Factor != 0 || rs.OriginalMaxPositionEmbeddings <= 0 {
		return rs.Factor
	}
	return float64(c.MaxPositionEmbeddings) / float64(rs.OriginalMaxPositionEmbeddings)
}

func (rs *RopeScaling) yarnOriginal(c *Config) int {
	if rs.OriginalMaxPositionEmbeddings > 0 {
		return rs.OriginalMaxPositionEmbeddings
	}
	return c.MaxPositionEmbeddings
}

func (rs *RopeScaling) validateYarn(c *Config) error {
	f := rs.yarnFactor(c)
	if !(f > 0) || math.IsInf(f, 0) {
		return errors.New("field \"rope_scaling.factor\": yarn needs a positive factor")
	}
	if rs.OriginalMaxPositionEmbeddings < 0 {
		return errors.New("field \"rope_scaling.original_max_position_embeddings\" must be positive")
	}
	if rs.BetaFast < 0 || rs.BetaSlow < 0 || math.IsNaN(rs.BetaFast) || math.IsNaN(rs.BetaSlow) {
		return errors.New("fields \"rope_scaling.beta_fast\" and \"beta_slow\" must be positive")
	}
	if rs.AttentionFactor != nil && !(*rs.AttentionFactor > 0) {
		return errors.New("field \"rope_scaling.attention_factor\" must be positive")
	}
	return nil
}

// yarnInvFreq is transformers' _compute_yarn_parameters in float64: frequencies that turn
// fewer than beta_slow times over the original context are interpolated (divided by factor),
// those that turn more than beta_fast times are kept, with a linear ramp between.
func (c *Config) yarnInvFreq() []float64 {
	rs := c.RopeScaling
	dim := float64(c.HeadDim)
	base := c.RopeTheta
	orig := float64(rs.yarnOriginal(c))
	factor := rs.yarnFactor(c)
	betaFast, betaSlow := rs.BetaFast, rs.BetaSlow
	if betaFast == 0 {
		betaFast = 32
	}
	if betaSlow == 0 {
		betaSlow = 1
	}
	corr := func(rot float64) float64 {
		return dim * math.Log(orig/(rot*2*math.Pi)) / (2 * math.Log(base))
	}
	low, high := corr(betaFast), corr(betaSlow)
	if rs.Truncate == nil || *rs.Truncate {
		low, high = math.Floor(low), math.Ceil(high)
	}
	low, high = max(low, 0), min(high, dim-1)
	if low == high {
		high += 0.001
	}
	half := c.HeadDim / 2
	inv := make([]float64, half)
	for i := range inv {
		pos := math.Pow(base, float64(2*i)/dim)
		ramp := min(max((float64(i)-low)/(high-low), 0), 1)
		extrap := 1 - ramp // weight of the unscaled frequency
		inv[i] = 1/(factor*pos)*(1-extrap) + 1/pos*extrap
	}
	return inv
}
