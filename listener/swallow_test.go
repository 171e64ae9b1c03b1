package listener_test

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// swallowProxy forwards PostgreSQL connections and, while swallowing, drops every
// NotificationResponse the server sends: the path still answers queries (a ping succeeds)
// but no notification arrives, as behind a pooler that moved the session to a backend
// without the LISTEN. Test-local: it parses the backend message framing (no TLS).
type swallowProxy struct {
	target string
	ln     net.Listener
	on     atomic.Bool // swallowing now

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newSwallowProxy(t *testing.T, target string) *swallowProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &swallowProxy{target: target, ln: ln}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *swallowProxy) addr() string { return p.ln.Addr().String() }

func (p *swallowProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *swallowProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *swallowProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.track(c)
		p.wg.Go(func() {
			defer c.Close()
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				return
			}
			p.track(up)
			defer up.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
			go func() { p.filter(c, up); done <- struct{}{} }()
			<-done
			_ = c.Close()
			_ = up.Close()
			<-done
		})
	}
}

// filter copies backend messages (type byte, int32 length including itself, body) from
// src to dst, dropping NotificationResponse ('A') while swallowing.
func (p *swallowProxy) filter(dst, src net.Conn) {
	hdr := make([]byte, 5)
	for {
		if _, err := io.ReadFull(src, hdr); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 {
			return
		}
		msg := make([]byte, 5+n)
		copy(msg, hdr)
		if _, err := io.ReadFull(src, msg[5:]); err != nil {
			return
		}
		if hdr[0] == 'A' && p.on.Load() {
			continue
		}
		if _, err := dst.Write(msg); err != nil {
			return
		}
	}
}
