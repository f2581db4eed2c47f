package engine

import "fmt"

// ReduceGrads hands the accumulated gradients to reduce in buckets and puts back what reduce
// leaves in each: data-parallel training sums the ranks' gradients this way (an all-reduce per
// bucket) before Step. A bucket is the gradients of consecutive trainable weights, in
// TrainableNames order, concatenated into one host buffer of at most bucketElems elements (a
// weight larger than that is a bucket of its own; bucketElems <= 0: one bucket). reduce may
// change the values in place, not the length; an error stops the reduction, naming the
// bucket's weights, and leaves the gradients partly reduced.
func (t *Trainer) ReduceGrads(bucketElems int, reduce func(bucket []float32) error) error {
	var buf []float32 // the bucket, reused
	var names []string
	flush := func() error {
		if len(names) == 0 {
			return nil
		}
		if err := reduce(buf); err != nil {
			return fmt.Errorf("gradients of %s..%s: %w", names[0], names[len(names)-1], err)
		}
		off := 0
		for _, name := range names {
			g := t.grads[name]
			up, err := t.b.Upload(F32, buf[off:off+g.Len()], false, g.Shape...)
			if err != nil {
				return fmt.Errorf("gradient of %q: %w", name, err)
			}
			t.b.Copy(g, up)
			t.b.Free(up)
			off += g.Len()
		}
		buf, names = buf[:0], names[:0]
		return nil
	}
	for _, name := range t.names {
		g := t.grads[name]
		if len(names) > 0 && bucketElems > 0 && len(buf)+g.Len() > bucketElems {
			if err := flush(); err != nil {
				return err
			}
		}
		n := len(buf)
		buf = append(buf, make([]float32, g.Len())...)
		if err := t.b.Download(g, buf[n:]); err != nil {
			return fmt.Errorf("gradient of %q: %w", name, err)
		}
		names = append(names, name)
	}
	return flush()
}
