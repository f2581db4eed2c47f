package engine

import "fmt"

// ReduceGrads hands the accumulated gradients to reduce in buckets and puts back what reduce
// leaves in each: data-parallel training sums the ranks' gradients this way (an all-reduce per
// bucket) before Step. A bucket is the gradients of consecutive trainable weights, in
// TrainableNames order, concatenated into one host buffer of at most bucketElems elements (a
// weight larger than that is a bucket of its own; bucketElems <= 0: one bucket). reduce may
// change the values in place, not the length; an error stops the reduction, naming the
// bucket's weights, and leaves the gradients partly reduced.
//
// ReduceGrads runs after the backward; GradGroups, SetGradReady, ReadGrads and WriteGrads let
// a caller reduce each bucket while the backward goes on.
func (t *Trainer) ReduceGrads(bucketElems int, reduce func(bucket []float32) error) error {
	for _, names := range GradBuckets(t.names, t.gradLen, bucketElems) {
		n := 0
		for _, name := range names {
			n += t.gradLen(name)
		}
		buf := make([]float32, n)
		if err := t.ReadGrads(names, buf); err != nil {
			return err
		}
		if err := reduce(buf); err != nil {
			return fmt.Errorf("gradients of %s..%s: %w", names[0], names[len(names)-1], err)
		}
		if err := t.WriteGrads(names, buf); err != nil {
			return err
		}
	}
	return nil
}

// GradBuckets splits names, in order, into buckets of consecutive names whose sizes (size(name)
// elements each) add up to at most bucketElems; a name larger than that is a bucket of its own,
// and bucketElems <= 0 makes one bucket. No bucket is empty.
func GradBuckets(names []string, size func(string) int, bucketElems int) [][]string {
	var out [][]string
	var cur []string
	n := 0
	for _, name := range names {
		l := size(name)
		if len(cur) > 0 && bucketElems > 0 && n+l > bucketElems {
			out, cur, n = append(out, cur), nil, 0
		}
		cur, n = append(cur, name), n+l
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// GradLen is the number of elements of trainable weight name's gradient (0 for a name that is
// not trainable).
func (t *Trainer) GradLen(name string) int { return t.gradLen(name) }

func (t *Trainer) gradLen(name string) int {
	if g := t.grads[name]; g != nil {
		return g.Len()
	}
	return 0
}

// GradGroups are the trainable weights (TrainableNames) grouped by when a backward pass
// finishes their gradients: group i < L (L decoder layers) holds layer L-1-i's weights (its
// adapters, with LoRA), whose gradients are final as soon as that layer's backward is done;
// group L holds the rest (the embedding, the final norm, the LM head), final only at the end of
// the pass (a tied LM head adds to the embedding's gradient first). Each group keeps
// TrainableNames order; a layer with no trainable weight has an empty group.
func (t *Trainer) GradGroups() [][]string {
	L := len(t.Model.Layers)
	groups := make([][]string, L+1)
	for _, name := range t.names {
		g := L
		if li := t.layerOf[name]; li >= 0 {
			g = L - 1 - li
		}
		groups[g] = append(groups[g], name)
	}
	return groups
}

// SetGradReady makes the next ForwardBackward (or ForwardBackwardTokens) call ready(g), on the
// goroutine running it, as soon as the gradients of GradGroups()[g] are final for that pass:
// groups 0 to L-1 during the backward, layer by layer, and group L when the pass ends. Only
// that pass: the pass clears it. ready may read and write the finished gradients (ReadGrads,
// WriteGrads) while the rest of the backward has not run yet; it must not touch the others.
// A pass that fails stops calling it.
func (t *Trainer) SetGradReady(ready func(group int)) { t.gradReady = ready }

// ReadGrads copies the gradients of names, concatenated in that order, into dst, whose length
// must be the sum of their GradLen.
func (t *Trainer) ReadGrads(names []string, dst []float32) error {
	off, err := t.gradSpans(names, len(dst))
	if err != nil {
		return err
	}
	for i, name := range names {
		if err := t.b.Download(t.grads[name], dst[off[i]:off[i+1]]); err != nil {
			return fmt.Errorf("gradient of %q: %w", name, err)
		}
	}
	return nil
}

// WriteGrads sets the gradients of names from src, their values concatenated in that order (as
// ReadGrads gives them).
func (t *Trainer) WriteGrads(names []string, src []float32) error {
	off, err := t.gradSpans(names, len(src))
	if err != nil {
		return err
	}
	for i, name := range names {
		g := t.grads[name]
		up, err := t.b.Upload(F32, src[off[i]:off[i+1]], false, g.Shape...)
		if err != nil {
			return fmt.Errorf("gradient of %q: %w", name, err)
		}
		t.b.Copy(g, up)
		t.b.Free(up)
	}
	return nil
}

// gradSpans are the offsets of names' gradients in a buffer of n values holding them
// concatenated (len(names)+1 offsets), or an error naming the weight that is not trainable or
// the length that does not add up.
func (t *Trainer) gradSpans(names []string, n int) ([]int, error) {
	off := make([]int, len(names)+1)
	for i, name := range names {
		g := t.grads[name]
		if g == nil {
			return nil, fmt.Errorf("train: %q has no gradient (not a trainable weight)", name)
		}
		off[i+1] = off[i] + g.Len()
	}
	if off[len(names)] != n {
		return nil, fmt.Errorf("train: the gradients of %d weights have %d values, the buffer %d", len(names), off[len(names)], n)
	}
	return off, nil
}

// SplitFlat splits a vector laid out as the sharded optimizer lays out its state (every
// trainable weight's values, flat, in TrainableNames order) into one tensor per weight, shaped
// as the weight; the tensors share flat's memory.
func (t *Trainer) SplitFlat(flat []float32) (map[string]HostTensor, error) {
	off, err := t.gradSpans(t.names, len(flat))
	if err != nil {
		return nil, err
	}
	out := make(map[string]HostTensor, len(t.names))
	for i, name := range t.names {
		out[name] = HostTensor{Shape: append([]int(nil), t.grads[name].Shape...), Data: flat[off[i]:off[i+1]:off[i+1]]}
	}
	return out, nil
}

// GradTensor is trainable weight name's gradient tensor itself (nil for a name that is not
// trainable), for a collective that sums it in place in the backend's memory (a device
// communicator); like ReadGrads and WriteGrads, only once the pass has finished it.
func (t *Trainer) GradTensor(name string) *Tensor { return t.grads[name] }
