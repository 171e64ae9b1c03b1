package harness

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a loopback TCP proxy in front of a server, to inject network faults that a
// process kill cannot: Stall makes every connection a black hole (bytes are accepted and
// never forwarded, nothing is closed, no RST), as a partitioned network or a frozen
// middlebox does; Resume lets bytes through again; Cut closes every connection.
type Proxy struct {
	target string
	ln     net.Listener

	mu      sync.Mutex
	rate    int // bytes per second and direction on each connection (0: unlimited)
	stalled bool
	resume  chan struct{} // closed by Resume; a new one is made by Stall
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// StartProxy listens on a free loopback port and forwards each connection to target
// (host:port).
func StartProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy: listen: %w", err)
	}
	p := &Proxy{target: target, ln: ln, resume: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.resume)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// NewProxy starts a proxy for one test and closes it when the test ends.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	p, err := StartProxy(target)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port is the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Stall stops forwarding in both directions on every connection, present and future, until
// Resume. Connections stay open: peers see silence, not an error.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stalled {
		p.stalled = true
		p.resume = make(chan struct{})
	}
}

// Resume forwards again, including what was held back while stalled.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled {
		p.stalled = false
		close(p.resume)
	}
}

// Throttle limits every connection, present and future, to bytesPerSecond in each
// direction (0: unlimited), as a slow link does: a reader behind it reads at a steady rate.
func (p *Proxy) Throttle(bytesPerSecond int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rate = max(0, bytesPerSecond)
}

func (p *Proxy) currentRate() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rate
}

// Cut closes every open connection (new ones are still accepted).
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}

// Close stops the proxy and closes every connection. Safe to call twice.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	_ = p.ln.Close()
	for c := range p.conns {
		_ = c.Close()
	}
	if p.stalled {
		p.stalled = false
		close(p.resume)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
			if err != nil {
				return
			}
			if !p.track(up) {
				return
			}
			defer p.untrack(up)
			done := make(chan struct{}, 2)
			go func() { p.pipe(up, c); done <- struct{}{} }()
			go func() { p.pipe(c, up); done <- struct{}{} }()
			<-done
		}()
	}
}

// gate blocks while the proxy is stalled. It returns false once the proxy is closed.
func (p *Proxy) gate() bool {
	p.mu.Lock()
	ch, closed := p.resume, p.closed
	p.mu.Unlock()
	<-ch
	return !closed
}

// pipe copies src to dst, holding every chunk read while the proxy is stalled. A chunk
// read before a stall may still be written; after Stall returns, nothing new crosses
// once the chunk in flight is done.
// A throttled pipe forwards at most 4 KiB at a time and paces the writes so that the
// bytes sent since the rate was set stay within it.
func (p *Proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32*1024)
	var paceFrom time.Time // when the current rate began to count
	paceRate, sent := 0, 0
	for {
		if !p.gate() {
			return
		}
		rate := p.currentRate()
		if rate != paceRate {
			paceRate, paceFrom, sent = rate, time.Now(), 0
		}
		b := buf
		if rate > 0 {
			b = buf[:4096]
		}
		n, err := src.Read(b)
		if n > 0 {
			if !p.gate() {
				return
			}
			if rate > 0 {
				sent += n
				// Pacing the link, not waiting for an effect.
				time.Sleep(time.Until(paceFrom.Add(time.Duration(float64(sent) / float64(rate) * float64(time.Second)))))
			}
			if _, werr := dst.Write(b[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			// Half-close: tell the other side, keep the other direction going.
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return
		}
	}
}
