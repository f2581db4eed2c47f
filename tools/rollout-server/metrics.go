package main

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/prolong-rl/prolong/engine"
)

// metrics are the server's Prometheus metrics (GET /metrics), with the process's own (memory,
// CPU, file descriptors) and the Go runtime's.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	ttft     prometheus.Histogram
	// connsRefused counts connections closed at accept: beyond --max-connections and the
	// health-check reserve.
	connsRefused prometheus.Counter
}

// newMetrics registers the metrics; stats gives the schedulers' figures (the base's and every
// LoRA adapter's together, server.schedStats).
func newMetrics(stats func() engine.SchedulerStats) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "prolong_requests_total",
		Help: "Generation requests served, by endpoint and HTTP status."}, []string{"endpoint", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "prolong_request_duration_seconds",
		Help: "Time from request to last byte, by endpoint.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 16)}, []string{"endpoint"})
	m.ttft = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "prolong_time_to_first_token_seconds",
		Help: "Time from submission to the first sampled token.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)})
	m.connsRefused = prometheus.NewCounter(prometheus.CounterOpts{Name: "prolong_connections_refused_total",
		Help: "Connections closed at accept: beyond --max-connections and the few kept for health checks."})
	stat := func(f func(engine.SchedulerStats) float64) func() float64 {
		return func() float64 { return f(stats()) }
	}
	var rateMu sync.Mutex
	lastT, lastN := time.Now(), uint64(0)
	m.reg.MustRegister(m.requests, m.latency, m.ttft, m.connsRefused,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "prolong_queue_depth", Help: "Requests waiting for admission."},
			stat(func(s engine.SchedulerStats) float64 { return float64(s.Queued) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "prolong_running_sequences", Help: "Samples being decoded."},
			stat(func(s engine.SchedulerStats) float64 { return float64(s.Running) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "prolong_kv_cache_usage_ratio", Help: "Share of the KV-cache budget in use."},
			stat(func(s engine.SchedulerStats) float64 {
				return float64(s.KVBlocksUsed) / float64(max(1, s.KVBlocksTotal))
			})),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "prolong_weight_version", Help: "Version of the weights new requests run on."},
			stat(func(s engine.SchedulerStats) float64 { return float64(s.Version) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "prolong_generated_tokens_total", Help: "Tokens sampled."},
			stat(func(s engine.SchedulerStats) float64 { return float64(s.TokensGenerated) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "prolong_preempted_sequences", Help: "Samples preempted (KV blocks freed) waiting to be recomputed."},
			stat(func(s engine.SchedulerStats) float64 { return float64(s.Preempted) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "prolong_preemptions_total", Help: "Samples preempted because the running samples outgrew the KV cache."},
			stat(func(s engine.SchedulerStats) float64 { return float64(s.Preemptions) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "prolong_engine_steps_total", Help: "Forward passes of the batch."},
			stat(func(s engine.SchedulerStats) float64 { return float64(s.Steps) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "prolong_generation_tokens_per_second",
			Help: "Tokens sampled per second since the previous scrape (rate(prolong_generated_tokens_total) over longer windows)."},
			func() float64 {
				rateMu.Lock()
				defer rateMu.Unlock()
				now, n := time.Now(), stats().TokensGenerated
				r := float64(n-lastN) / max(1e-9, now.Sub(lastT).Seconds())
				lastT, lastN = now, n
				return r
			}),
	)
	return m
}

// watchRequests adds the number of requests holding a serving slot (at most --max-concurrent).
func (m *metrics) watchRequests(slots chan struct{}) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "prolong_requests_running",
		Help: "Generation requests being served (at most --max-concurrent)."},
		func() float64 { return float64(len(slots)) }))
}

// adapterStat is one LoRA adapter's scheduler figures.
type adapterStat struct {
	name  string
	stats engine.SchedulerStats
}

// adapterCollector reports each LoRA adapter's own figures, labelled by its name, and how many
// are loaded.
type adapterCollector struct {
	list                        func() []adapterStat
	loaded, tokens, running, kv *prometheus.Desc
}

func (c *adapterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.loaded
	ch <- c.tokens
	ch <- c.running
	ch <- c.kv
}

func (c *adapterCollector) Collect(ch chan<- prometheus.Metric) {
	as := c.list()
	ch <- prometheus.MustNewConstMetric(c.loaded, prometheus.GaugeValue, float64(len(as)))
	for _, a := range as {
		ch <- prometheus.MustNewConstMetric(c.tokens, prometheus.CounterValue, float64(a.stats.TokensGenerated), a.name)
		ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, float64(a.stats.Running), a.name)
		ch <- prometheus.MustNewConstMetric(c.kv, prometheus.GaugeValue,
			float64(a.stats.KVBlocksUsed)/float64(max(1, a.stats.KVBlocksTotal)), a.name)
	}
}

// watchAdapters adds the per-adapter metrics of the LoRA adapters list returns.
func (m *metrics) watchAdapters(list func() []adapterStat) {
	m.reg.MustRegister(&adapterCollector{list: list,
		loaded:  prometheus.NewDesc("prolong_lora_adapters_loaded", "LoRA adapters being served (--lora, POST /v1/load_lora_adapter).", nil, nil),
		tokens:  prometheus.NewDesc("prolong_lora_generated_tokens_total", "Tokens sampled on a LoRA adapter (since it was loaded).", []string{"adapter"}, nil),
		running: prometheus.NewDesc("prolong_lora_running_sequences", "Samples being decoded on a LoRA adapter.", []string{"adapter"}, nil),
		kv:      prometheus.NewDesc("prolong_lora_kv_cache_usage_ratio", "Share of a LoRA adapter's own KV-cache budget in use.", []string{"adapter"}, nil),
	})
}

// watchConns adds the number of open connections of l.
func (m *metrics) watchConns(l *connLimiter) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "prolong_connections_open",
		Help: "Connections being served (at most --max-connections, plus a few for health checks)."},
		func() float64 { return float64(l.open()) }))
}

func (m *metrics) handler() http.Handler { return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}) }
