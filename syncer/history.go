package syncer

import "github.com/beamline/registry-syncer/protocol"

// published is one delta as it was stored, kept to republish it byte for byte.
type published struct {
	delta *protocol.Delta // its fields without the changes: data holds them
	data  []byte
	seq   uint64 // stream sequence of the last store of it by this process (0: unknown)
}

// publishedOverhead approximates the memory of one retained delta besides its payload:
// the structs, the checksum and registry id strings, the slot.
const publishedOverhead = 320

func (p *published) size() int64 {
	return int64(len(p.data)) + publishedOverhead + int64(len(p.delta.Checksum)+len(p.delta.RegistryID)+len(p.delta.Source))
}

// history holds the most recent published deltas, oldest first, bounded both in number
// (max) and in bytes (maxBytes; the newest is kept whatever its size). Only the
// publishing goroutine uses it.
type history struct {
	max      int
	maxBytes int64
	bytes    int64
	items    []*published // items[start:] are retained
	start    int
}

func newHistory(max int, maxBytes int64) *history { return &history{max: max, maxBytes: maxBytes} }

// add retains p (its changes are dropped from the kept delta: data has them), dropping
// the oldest deltas beyond the bounds.
func (h *history) add(p *published) {
	if p.delta != nil && p.delta.Changes != nil {
		d := *p.delta
		d.Changes = nil
		p = &published{delta: &d, data: p.data, seq: p.seq}
	}
	h.items = append(h.items, p)
	h.bytes += p.size()
	for h.len() > 1 && (h.len() > h.max || h.bytes > h.maxBytes) {
		h.bytes -= h.items[h.start].size()
		h.items[h.start] = nil
		h.start++
	}
	if h.start > 1024 && h.start > len(h.items)/2 {
		n := copy(h.items, h.items[h.start:])
		clear(h.items[n:])
		h.items, h.start = h.items[:n], 0
	}
}

func (h *history) len() int { return len(h.items) - h.start }

func (h *history) at(i int) *published { return h.items[h.start+i] }

// from returns the retained deltas from index i on, oldest first.
func (h *history) from(i int) []*published {
	out := make([]*published, 0, max(0, h.len()-i))
	for ; i < h.len(); i++ {
		out = append(out, h.at(i))
	}
	return out
}

// storedFrom returns the retained deltas last stored at stream sequence seq or later,
// oldest first.
func (h *history) storedFrom(seq uint64) []*published {
	var out []*published
	for i := 0; i < h.len(); i++ {
		if p := h.at(i); p.seq >= seq {
			out = append(out, p)
		}
	}
	return out
}

// byRevision returns the retained delta of revision rev, or nil. Deltas are retained in
// publish order, which is revision order.
func (h *history) byRevision(rev int64) *published {
	lo, hi := 0, h.len()
	for lo < hi {
		mid := (lo + hi) / 2
		if h.at(mid).delta.Revision < rev {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < h.len() && h.at(lo).delta.Revision == rev {
		return h.at(lo)
	}
	return nil
}
