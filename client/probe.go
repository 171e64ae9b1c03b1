package client

import (
	"sync"
	"time"
)

// An auto-disabled extension (cache.Extension.AutoDisabled, set by the leading syncer
// when the fleet's breakers are open for it) is not called, except for a few probe
// calls so that the fleet sees when it recovers: at each client, at most
// HalfOpenMaxRequests calls per OpenTimeout of the extension's breaker configuration
// (3 per 30 s by default). A probe is an ordinary call (selection, breaker, retries,
// statistics); every other call fails at once with extension_unavailable and is counted
// as such.

// probeBudget counts the probe calls of auto-disabled extensions, per extension.
type probeBudget struct {
	mu      sync.Mutex
	windows map[string]*probeWindow
}

type probeWindow struct {
	start time.Time
	used  int
}

// allow reports whether one more probe of extension id may be sent at now.
func (b *probeBudget) allow(id string, cfg BreakerConfig, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.windows == nil {
		b.windows = map[string]*probeWindow{}
	}
	w := b.windows[id]
	if w == nil || now.Sub(w.start) >= cfg.OpenTimeout {
		w = &probeWindow{start: now}
		b.windows[id] = w
	}
	if w.used >= max(cfg.HalfOpenMaxRequests, 1) {
		return false
	}
	w.used++
	return true
}
