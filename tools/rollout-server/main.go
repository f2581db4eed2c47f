// Command rollout-server serves a model over an OpenAI-compatible HTTP API with continuous
// batching: what RL trainers call for samples (token ids and per-token log-probs), and what a
// user runs to try a checkpoint.
//
//	go run ./tools/rollout-server --model DIR [--addr 127.0.0.1:8000] [--api-key KEY]
//
// Endpoints: POST /v1/completions, POST /v1/chat/completions (stream: server-sent events),
// GET /v1/models, GET /health, GET /metrics (Prometheus), POST /v1/weights (new weights, API key
// required), GET /v1/weights (the dtype each weight is computed in, API key required), POST
// /v1/load_lora_adapter and /v1/unload_lora_adapter (PEFT LoRA adapters served under their own
// model names, as --lora NAME=DIR does at startup; API key required). See
// docs/rollout-server.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/tools/internal/clilog"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	_ "github.com/prolong-rl/prolong/cuda" // registers --device cuda
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
)

type options struct {
	model, addr, apiKey, name, dtype string
	device                           string
	maxN, maxTokens, maxPrompts      int
	maxConcurrent, maxQueued         int
	maxSeqs, maxBatchTokens          int
	kvMiB, poolMiB                   int64
	kvMemory, kvDType                string
	maxBodyKiB, maxWeightsMiB        int64
	maxConns                         int
	headerTimeout, bodyTimeout       time.Duration
	writeTimeout, idleTimeout        time.Duration
	weightsMiBps                     float64
	shutdownTimeout                  time.Duration
	loras                            []string // --lora NAME=DIR
}

func newFlags(o *options) *pflag.FlagSet {
	fs := pflag.NewFlagSet("rollout-server", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: go run ./tools/rollout-server --model DIR [--addr 127.0.0.1:8000] [flags]

Serves a model with an OpenAI-compatible API (completions, chat completions, streaming, token
ids and log-probs), continuous batching on the engine, Prometheus metrics and live weight
updates. Binds to loopback unless an API key is set.

Chat completions render messages with the chat_template of the model's tokenizer_config.json
as transformers' apply_chat_template does: the template is a Jinja program, run by a Go Jinja2
engine (gonja) with trim_blocks and lstrip_blocks, messages, add_generation_prompt=true,
tools=None, the tokenizer's bos_token/eos_token/pad_token/unk_token, and transformers'
raise_exception and strftime_now. Qwen2.5/Qwen3, Llama 3.x, DeepSeek-R1(-Distill), Mistral and
Gemma templates render as Python's Jinja2 renders them. Messages are text (system, user,
assistant; no tools or images). A template the engine cannot compile disables chat: the
server logs why at startup and /v1/chat/completions answers 400 naming the problem; a
template that raises (e.g. Gemma on a system message) answers 400 with its message.

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.model, "model", "", "model to serve: a Hugging Face directory (config.json, safetensors, tokenizer.json), a model.onnx, a training run, or a Hugging Face model id ORG/NAME[@REVISION] (from the Hugging Face cache, downloaded when not there; HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE apply) (required)")
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8000", "address to listen on; a non-loopback address needs --api-key")
	fs.StringVar(&o.apiKey, "api-key", "", "API key clients send as 'Authorization: Bearer KEY' (default: $PROLONG_API_KEY); required for /v1/weights and for non-loopback addresses")
	fs.StringVar(&o.name, "served-model-name", "", "model name in responses and /v1/models (default: the --model directory's name or model id, then the name of the directory each /v1/weights update loads)")
	fs.StringVar(&o.dtype, "dtype", "f32", "weights in memory: f32 or bf16 (bf16 multiplies as bf16 dot products with fp32 sums where the CPU has AVX512_BF16, else widened to fp32)")
	fs.StringVar(&o.device, "device", "auto", "where the model runs: auto (the GPU when one is there, else the CPU), cpu or cuda")
	fs.IntVar(&o.maxN, "max-n", 64, "largest n (samples per prompt) a request may ask")
	fs.IntVar(&o.maxTokens, "max-tokens", 4096, "largest max_tokens a request may ask")
	fs.IntVar(&o.maxPrompts, "max-prompts", 64, "most prompts in one completions request")
	fs.IntVar(&o.maxConcurrent, "max-concurrent", 256, "requests served at once; more get 429 with Retry-After")
	fs.IntVar(&o.maxQueued, "max-queued", 256, "requests waiting for KV-cache room; more get 429 with Retry-After")
	fs.IntVar(&o.maxSeqs, "max-seqs", 256, "samples decoded together in one batch")
	fs.IntVar(&o.maxBatchTokens, "max-batch-tokens", 4096, "prompt tokens prefilled in one step")
	fs.StringVar(&o.kvMemory, "kv-memory", "auto", "memory of the KV cache: auto (room for --max-seqs sequences of the model's max_position_embeddings, at most half the GPU's free memory or a quarter of RAM), or a size such as 512MiB or 2GiB; requests are admitted when their prompts fit, and when the running samples outgrow it the youngest are preempted and recomputed later (same tokens)")
	fs.StringVar(&o.kvDType, "kv-dtype", "auto", "element type of the KV cache: auto (bf16 where --dtype is bf16 and the device stores bf16 keys and values, the CPU; else fp32), fp32 or bf16")
	fs.Int64Var(&o.kvMiB, "kv-cache-mib", 0, "KV-cache budget in MiB (deprecated: --kv-memory)")
	_ = fs.MarkDeprecated("kv-cache-mib", "use --kv-memory, e.g. --kv-memory 1GiB")
	fs.Int64Var(&o.poolMiB, "activation-pool-mib", 64, "freed activation buffers kept for reuse, in MiB (memory beyond the weights and the KV cache)")
	fs.Int64Var(&o.maxBodyKiB, "max-body-kib", 1024, "largest request body of the generation endpoints, in KiB (413 above)")
	fs.Int64Var(&o.maxWeightsMiB, "max-weights-mib", 16384, "largest safetensors body of POST /v1/weights, in MiB")
	fs.IntVar(&o.maxConns, "max-connections", 1024, "connections served at once (lowered to fit the open-file limit); a few more are accepted for GET /health and GET /metrics only, the rest closed at once")
	fs.DurationVar(&o.headerTimeout, "header-timeout", 10*time.Second, "time a client has to send a request's headers")
	fs.DurationVar(&o.bodyTimeout, "body-timeout", 30*time.Second, "time a client has to send a request's body, from its headers on (POST /v1/weights: more, see --weights-min-mibps); 408 after it")
	fs.Float64Var(&o.weightsMiBps, "weights-min-mibps", 4, "slowest POST /v1/weights body accepted, in MiB/s: it must arrive within --body-timeout plus its size at this rate")
	fs.DurationVar(&o.writeTimeout, "write-timeout", 60*time.Second, "time a client has to take a response (a whole response, or each streamed chunk); the connection is closed after it")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 60*time.Second, "how long an idle keep-alive connection stays open")
	fs.StringArrayVar(&o.loras, "lora", nil, "serve a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) over the model as NAME=DIR, as vLLM's --lora-modules: requests whose model is NAME use it (repeatable); each adapter shares the base weights and has a KV cache of its own (--kv-memory)")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long in-flight requests may take to finish before they are cancelled")
	return fs
}

func main() {
	clilog.Setup("rollout-server")
	o, err := parseArgs(os.Args[1:], os.Stdout)
	if errors.Is(err, pflag.ErrHelp) {
		return
	}
	if err != nil {
		slog.Error(err.Error() + " (see --help)")
		os.Exit(2)
	}
	if err := serve(o); err != nil {
		slog.Error(err.Error())
		os.Exit(1)
	}
}

// parseArgs reads the command line; --help prints the usage on stdout and returns
// pflag.ErrHelp. The API key comes from PROLONG_API_KEY unless --api-key is given: it is read
// after parsing so that the usage never shows it.
func parseArgs(args []string, stdout io.Writer) (options, error) {
	var o options
	fs := newFlags(&o)
	fs.SetOutput(stdout)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if !fs.Changed("api-key") {
		o.apiKey = os.Getenv("PROLONG_API_KEY")
	}
	return o, nil
}

// isLoopback reports whether addr's host only accepts local connections.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkLimits refuses connection and time limits that would serve nothing.
func checkLimits(o options) error {
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"header-timeout", o.headerTimeout}, {"body-timeout", o.bodyTimeout}, {"write-timeout", o.writeTimeout}, {"idle-timeout", o.idleTimeout}} {
		if d.v <= 0 {
			return fmt.Errorf("--%s %v: want a positive duration", d.flag, d.v)
		}
	}
	if o.maxConns < 1 || o.maxConcurrent < 1 {
		return fmt.Errorf("--max-connections %d, --max-concurrent %d: want at least 1", o.maxConns, o.maxConcurrent)
	}
	if !(o.weightsMiBps > 0) {
		return fmt.Errorf("--weights-min-mibps %g: want a positive rate", o.weightsMiBps)
	}
	return nil
}

// newServer loads the model and builds the server.
func newServer(o options) (*server, error) {
	if o.model == "" {
		return nil, errors.New("--model is required (see --help)")
	}
	if err := checkLimits(o); err != nil {
		return nil, err
	}
	if !isLoopback(o.addr) && o.apiKey == "" {
		return nil, fmt.Errorf("--addr %s is not a loopback address: set --api-key (or PROLONG_API_KEY) to serve beyond this machine", o.addr)
	}
	dt := engine.F32
	switch o.dtype {
	case "f32":
	case "bf16":
		dt = engine.BF16
	default:
		return nil, fmt.Errorf("--dtype %q: want f32 or bf16", o.dtype)
	}
	m, err := modelio.LoadFlag(context.Background(), o.model, modelio.Options{Step: checkpoints.Latest})
	if err != nil {
		return nil, err
	}
	var tok *tokenizer.Tokenizer
	if m.TokenizerDir != "" {
		if tok, err = tokenizer.Load(m.TokenizerDir); err != nil {
			return nil, fmt.Errorf("--model %s: %w", o.model, err)
		}
		if err := tok.ChatTemplateProblem(); err != nil {
			slog.Warn("chat completions disabled: /v1/chat/completions answers 400", "model", o.model, "reason", err.Error())
		} else {
			slog.Info("chat completions: the model's chat template compiled", "model", o.model)
		}
	} else {
		slog.Warn("no tokenizer.json beside the model: prompts must be token ids; chat completions disabled", "model", o.model)
	}
	// On the CPU a server keeps a small pool of freed activation buffers: its batches change
	// size at every step, so a training-sized pool (cpu.DefaultPoolLimit) would fill with buffers
	// of sizes that rarely come back and the process would grow towards it under load.
	opts := engine.DeviceOptions{PoolLimitBytes: o.poolMiB << 20}
	if o.poolMiB <= 0 {
		opts.PoolLimitBytes = -1 // none kept
	}
	dev, err := engine.OpenDevice(o.device, opts)
	if err != nil {
		return nil, err
	}
	slog.Info("device", "backend", dev.Chosen)
	backend := dev.Backend
	model, err := engine.NewModel(m.Config, backend, m.Weights, dt)
	if err != nil {
		return nil, err
	}
	gopts, err := kvOptions(o)
	if err != nil {
		return nil, err
	}
	gopts.MaxSeqs, gopts.MaxBatchTokens = o.maxSeqs, o.maxBatchTokens
	schedOpts := engine.SchedulerOptions{MaxQueued: o.maxQueued, Generator: gopts}
	sched, err := engine.NewScheduler(model, 1, schedOpts)
	if err != nil {
		return nil, err
	}
	slog.Info(sched.KVChoice().String())
	name := o.name
	if name == "" {
		name = filepath.Base(filepath.Clean(o.model))
		if modelio.IsModelID(o.model) {
			name = o.model // a Hub id is served under the id, as vLLM does
		}
	}
	s := &server{sched: sched, dev: dev, cfg: m.Config, tok: tok, fixedName: o.name != "", apiKey: o.apiKey,
		lim:     limits{MaxN: o.maxN, MaxTokens: o.maxTokens, MaxPrompts: o.maxPrompts},
		maxBody: o.maxBodyKiB << 10, maxWeight: o.maxWeightsMiB << 20,
		bodyTimeout: o.bodyTimeout, writeTimeout: o.writeTimeout, weightsRate: o.weightsMiBps * (1 << 20),
		slots: make(chan struct{}, o.maxConcurrent), schedOpts: schedOpts}
	s.metrics = newMetrics(s.schedStats)
	s.metrics.watchRequests(s.slots)
	s.metrics.watchAdapters(s.adapterStats)
	s.setModelName(name)
	s.version.Store(1)
	for _, v := range o.loras {
		name, dir, err := parseLoRAFlag(v)
		if err == nil {
			err = s.addAdapter(name, dir)
		}
		if err != nil {
			s.closeAdapters()
			sched.Close()
			return nil, fmt.Errorf("--lora %s: %w", v, err)
		}
	}
	return s, nil
}

// listen opens the address, serving at most --max-connections connections at once (fitted to
// the open-file limit) and a few more for health checks.
func listen(o options, m *metrics) (net.Listener, error) {
	max, err := fitConnections(o.maxConns)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return nil, err
	}
	l := newConnLimiter(ln, max, m.connsRefused.Inc)
	m.watchConns(l)
	return l, nil
}

// serve runs until SIGTERM or SIGINT, then stops accepting, lets in-flight requests finish
// (up to --shutdown-timeout, then cancels them) and returns nil.
func serve(o options) error {
	s, err := newServer(o)
	if err != nil {
		return err
	}
	ln, err := listen(o, s.metrics)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: o.headerTimeout, IdleTimeout: o.idleTimeout, ConnContext: connContext}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	slog.Info("serving", "addr", ln.Addr().String(), "model", s.modelName(), "params_m", float64(s.cfg.NumParams())/1e6, "tokenizer", s.tok != nil)
	fmt.Printf("rollout-server listening on http://%s\n", ln.Addr())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	slog.Info("shutting down: finishing in-flight requests", "timeout", o.shutdownTimeout)
	s.draining.Store(true)
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	s.sched.Close() // cancels whatever did not finish in time
	s.closeAdapters()
	s.dev.Close()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	slog.Info("stopped")
	return nil
}

// kvOptions are the generator options of --kv-dtype and --kv-memory (or the deprecated
// --kv-cache-mib).
func kvOptions(o options) (engine.GeneratorOptions, error) {
	dt, err := engine.ParseKVDType(o.kvDType)
	if err != nil {
		return engine.GeneratorOptions{}, fmt.Errorf("--kv-dtype: %w", err)
	}
	g := engine.GeneratorOptions{KVDType: dt, KVBudgetBytes: o.kvMiB << 20}
	if o.kvMemory != "" && o.kvMemory != "auto" {
		if g.KVBudgetBytes, err = engine.ParseBytes(o.kvMemory); err != nil {
			return g, fmt.Errorf("--kv-memory: %w", err)
		}
		if g.KVBudgetBytes <= 0 {
			return g, fmt.Errorf("--kv-memory %q: want auto or a positive size", o.kvMemory)
		}
	}
	return g, nil
}
