package syncer

import (
	"bytes"
	"testing"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
)

// TestHistoryBytes: the history keeps the newest deltas within its bound in bytes (and in
// number), drops the oldest first, keeps the newest one whatever its size, keeps no
// changes besides the stored payload, and finds deltas by revision after it compacted.
func TestHistoryBytes(t *testing.T) {
	t.Parallel()
	payload := bytes.Repeat([]byte("x"), 1000)
	item := func(rev int64) *published {
		return &published{delta: &protocol.Delta{Revision: rev, PrevRevision: rev - 1, Checksum: "c",
			Changes: []cache.Change{{Op: "put", Kind: "extension", ID: "a", Value: payload}}}, data: payload, seq: uint64(rev)}
	}
	one := item(0).size()
	h := newHistory(100_000, 10*one)
	for rev := int64(1); rev <= 5000; rev++ {
		h.add(item(rev))
		if h.bytes > h.maxBytes {
			t.Fatalf("after %d deltas the history holds %d bytes, above its bound %d", rev, h.bytes, h.maxBytes)
		}
	}
	if h.len() != 10 {
		t.Fatalf("history holds %d deltas of %d bytes within %d bytes, want 10", h.len(), one, h.maxBytes)
	}
	for i := range h.len() {
		p := h.at(i)
		if want := int64(4991 + i); p.delta.Revision != want {
			t.Fatalf("history[%d] is revision %d, want %d (the newest, oldest first)", i, p.delta.Revision, want)
		}
		if p.delta.Changes != nil {
			t.Fatalf("history[%d] keeps the delta's changes besides its payload", i)
		}
	}
	if p := h.byRevision(4995); p == nil || p.delta.Revision != 4995 {
		t.Fatalf("byRevision(4995) = %v", p)
	}
	if h.byRevision(4990) != nil {
		t.Fatal("byRevision found a dropped delta")
	}
	if got := h.storedFrom(4999); len(got) != 2 {
		t.Fatalf("storedFrom(4999) = %d deltas, want 2", len(got))
	}
	if cap(h.items) > 4096 {
		t.Fatalf("the history's slice grew to %d slots for 10 deltas: it does not compact", cap(h.items))
	}
	huge := item(5001)
	huge.data = bytes.Repeat([]byte("y"), int(100*one))
	h.add(huge)
	if h.len() != 1 || h.at(0).delta.Revision != 5001 {
		t.Fatalf("after a delta larger than the bound the history holds %d deltas, want that one", h.len())
	}
	counted := newHistory(3, 1<<40)
	for rev := int64(1); rev <= 7; rev++ {
		counted.add(item(rev))
	}
	if counted.len() != 3 || counted.at(0).delta.Revision != 5 {
		t.Fatalf("a history of at most 3 deltas holds %d from revision %d", counted.len(), counted.at(0).delta.Revision)
	}
}
