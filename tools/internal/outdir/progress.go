package outdir

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/tools/internal/clilog"
)

// Progress is a tool's progress bar on stderr: the tensors counted as they are checked, then
// the bytes of each file set as it reaches the disk, then stages without a measure (verifying).
// Each stage replaces the bar of the one before; Finish clears it. A quiet Progress shows
// nothing.
type Progress struct {
	w     io.Writer
	quiet bool
	bar   *progressbar.ProgressBar
	stop  chan struct{} // closes the watcher of a Writing stage
	done  chan struct{} // closed when that watcher has stopped
}

// NewProgress returns a Progress writing to w (nothing when quiet).
//
// Where w is a file that is not a terminal (stderr redirected to a log file or a pipe), no bar
// is drawn: its redraw frames would fill the log.
func NewProgress(w io.Writer, quiet bool) *Progress {
	if f, ok := w.(*os.File); ok && !clilog.IsTerminal(f) {
		quiet = true
	}
	return &Progress{w: w, quiet: quiet}
}

// pollInterval is how often a Writing stage measures the output.
const pollInterval = 200 * time.Millisecond

func (p *Progress) next(bar *progressbar.ProgressBar) {
	p.stopWatch()
	if p.bar != nil {
		p.bar.Finish()
	}
	p.bar = bar
}

func (p *Progress) options(what string) []progressbar.Option {
	return []progressbar.Option{progressbar.OptionSetWriter(p.w), progressbar.OptionSetWidth(20),
		progressbar.OptionSetDescription(what), progressbar.OptionClearOnFinish(), progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetRenderBlankState(true), progressbar.OptionThrottle(100 * time.Millisecond)}
}

// Tensors starts counting n tensors, one per call of Tensor.
func (p *Progress) Tensors(n int) {
	if p.quiet {
		return
	}
	p.next(progressbar.NewOptions(n, append(p.options("checking tensors"), progressbar.OptionShowCount())...))
}

// Tensor counts one tensor (its signature is modelio.CheckWeights' progress callback).
func (p *Progress) Tensor(string) {
	if p.bar != nil {
		p.bar.Add(1)
	}
}

// Writing shows, as what, the bytes written under dir (and in the tmp.tmp-* directories
// checkpoints.Save builds beside it) since this call, out of total, until the next stage.
func (p *Progress) Writing(dir, what string, total int64) {
	if p.quiet {
		return
	}
	p.next(progressbar.NewOptions64(max(total, 1), append(p.options(what), progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(), progressbar.OptionUseIECUnits(true))...))
	base := Bytes(dir)
	bar := p.bar
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go func(stop, done chan struct{}) {
		defer close(done)
		t := time.NewTicker(pollInterval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				bar.Set64(max(total, 1)) // the stage is over: whatever was estimated, it is done
				return
			case <-t.C:
				bar.Set64(min(max(Bytes(dir)-base, 0), total))
			}
		}
	}(p.stop, p.done)
}

// Stage shows what the program does now, without a measure. (A program built with -tags
// testhold may stop here for good: see holdAt.)
func (p *Progress) Stage(what string) {
	holdAt(what)
	if p.quiet {
		return
	}
	p.next(progressbar.NewOptions(-1, p.options(what)...))
}

// Finish ends the last stage and clears the bar.
func (p *Progress) Finish() {
	if p.quiet {
		return
	}
	p.next(nil)
}

func (p *Progress) stopWatch() {
	if p.stop != nil {
		close(p.stop)
		<-p.done
		p.stop, p.done = nil, nil
	}
}

// WeightBytes is the size of the tensors of w stored with bytesPer bytes an element: what a
// Writing stage expects.
func WeightBytes(w map[string]engine.HostTensor, bytesPer int) int64 {
	var n int64
	for _, t := range w {
		n += int64(len(t.Data)) * int64(bytesPer)
	}
	return n
}

// DTypeSize is the bytes of one element stored as d.
func DTypeSize(d checkpoints.DType) int {
	if d == checkpoints.BF16 || d == checkpoints.F16 {
		return 2
	}
	return 4
}

// Bytes is the size of the regular files under dir and under the tmp.tmp-* directories
// beside it (0 for what cannot be read: files come and go while it counts).
func Bytes(dir string) int64 {
	var n int64
	for _, root := range append([]string{dir}, besides(dir)...) {
		filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if info, err := d.Info(); err == nil {
					n += info.Size()
				}
			}
			return nil
		})
	}
	return n
}
