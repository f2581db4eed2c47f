package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// Connections beyond --max-connections: a few more are accepted for GET /health and
// GET /metrics only, each for at most reserveLife, so that a server whose connections are all
// taken (slow clients, a flood) still answers its health checks; the rest are closed at once,
// so that they hold neither a file descriptor nor a place in the kernel's accept queue.
const (
	reserveConns = 16
	reserveLife  = 2 * time.Second
	// fdMargin is what the process keeps besides connections: the model's files, the
	// listener, standard streams, the runtime's own descriptors.
	fdMargin = 64
)

// connLimiter is a listener that serves at most max connections at once, plus reserveConns
// for health checks.
type connLimiter struct {
	net.Listener
	slots, reserve chan struct{}
	refused        func() // counts a connection closed at accept
}

func newConnLimiter(ln net.Listener, max int, refused func()) *connLimiter {
	return &connLimiter{Listener: ln, slots: make(chan struct{}, max), reserve: make(chan struct{}, reserveConns), refused: refused}
}

// Accept returns the next connection that fits, closing those that do not.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &countedConn{Conn: c, free: l.slots}, nil
		default:
		}
		select {
		case l.reserve <- struct{}{}:
			return &reserveConn{countedConn{Conn: c, free: l.reserve}, time.Now().Add(reserveLife)}, nil
		default:
			c.Close()
			l.refused()
		}
	}
}

// open is the number of connections being served.
func (l *connLimiter) open() int { return len(l.slots) + len(l.reserve) }

// countedConn gives its place back when it closes.
type countedConn struct {
	net.Conn
	free chan struct{}
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { <-c.free })
	return c.Conn.Close()
}

// CloseWrite half-closes a TCP connection: the HTTP server does so before it closes one whose
// request body it did not read, so that the client gets the response before a reset.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// reserveConn is a connection beyond --max-connections: it lives until end at the latest,
// whatever deadlines the HTTP server sets, and serves health checks only (see guard).
type reserveConn struct {
	countedConn
	end time.Time
}

func (c *reserveConn) clamp(t time.Time) time.Time {
	if t.IsZero() || t.After(c.end) {
		return c.end
	}
	return t
}

func (c *reserveConn) SetDeadline(t time.Time) error     { return c.Conn.SetDeadline(c.clamp(t)) }
func (c *reserveConn) SetReadDeadline(t time.Time) error { return c.Conn.SetReadDeadline(c.clamp(t)) }
func (c *reserveConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.clamp(t))
}

// reservedKey marks, in a request's context, a request on a reserve connection.
type reservedKey struct{}

// connContext marks the requests of reserve connections (http.Server.ConnContext).
func connContext(ctx context.Context, c net.Conn) context.Context {
	if rc, ok := c.(*reserveConn); ok {
		rc.SetDeadline(time.Time{}) // from the start: the end of its life
		return context.WithValue(ctx, reservedKey{}, true)
	}
	return ctx
}

// onReserve reports whether a request came on a reserve connection.
func onReserve(ctx context.Context) bool { return ctx.Value(reservedKey{}) != nil }

// fitConnections lowers the connection cap to what the file-descriptor limit allows (Go
// raises the soft RLIMIT_NOFILE to the hard limit at start; this is what is left after that).
func fitConnections(max int) (int, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return max, nil // no limit to read: keep the flag's
	}
	room := int64(lim.Cur) - reserveConns - fdMargin
	if int64(max) <= room {
		return max, nil
	}
	if room < 1 {
		return 0, fmt.Errorf("the open-file limit (ulimit -n) of %d leaves no room for connections: raise it", lim.Cur)
	}
	slog.Warn("--max-connections lowered to fit the open-file limit (ulimit -n)", "max_connections", max, "now", room, "nofile", lim.Cur)
	return int(room), nil
}
