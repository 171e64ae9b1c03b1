package protocol

import "sync"

// recent remembers, process-wide, the last size values stored under a SHA-256 key,
// forgetting the oldest first. Safe for concurrent use.
type recent[V any] struct {
	mu   sync.Mutex
	m    map[[32]byte]V
	ring [][32]byte
	next int
	full bool
}

func newRecent[V any](size int) *recent[V] {
	return &recent[V]{m: make(map[[32]byte]V, size), ring: make([][32]byte, size)}
}

func (c *recent[V]) get(k [32]byte) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[k]
	return v, ok
}

func (c *recent[V]) add(k [32]byte, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; ok {
		return
	}
	if c.full {
		delete(c.m, c.ring[c.next])
	}
	c.ring[c.next] = k
	c.m[k] = v
	c.next++
	if c.next == len(c.ring) {
		c.next, c.full = 0, true
	}
}
