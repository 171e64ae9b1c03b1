package syncer

import "github.com/beamline/registry-syncer/protocol"

// published is one delta as it was stored, kept to republish it byte for byte.
type published struct {
	delta *protocol.Delta
	data  []byte
	seq   uint64 // stream sequence of the last store of it by this process (0: unknown)
}

// history is a bounded ring of the most recent published deltas, oldest first. Only the
// publishing goroutine uses it.
type history struct {
	max   int
	items []*published
	start int
}

func newHistory(max int) *history { return &history{max: max} }

func (h *history) add(p *published) {
	if len(h.items) < h.max {
		h.items = append(h.items, p)
		return
	}
	h.items[h.start] = p
	h.start = (h.start + 1) % h.max
}

func (h *history) len() int { return len(h.items) }

func (h *history) at(i int) *published { return h.items[(h.start+i)%len(h.items)] }

// from returns the retained deltas from index i on, oldest first.
func (h *history) from(i int) []*published {
	out := make([]*published, 0, max(0, len(h.items)-i))
	for ; i < len(h.items); i++ {
		out = append(out, h.at(i))
	}
	return out
}

// storedFrom returns the retained deltas last stored at stream sequence seq or later,
// oldest first.
func (h *history) storedFrom(seq uint64) []*published {
	var out []*published
	for i := 0; i < len(h.items); i++ {
		if p := h.at(i); p.seq >= seq {
			out = append(out, p)
		}
	}
	return out
}

// byRevision returns the retained delta of revision rev, or nil. Deltas are retained in
// publish order, which is revision order.
func (h *history) byRevision(rev int64) *published {
	lo, hi := 0, len(h.items)
	for lo < hi {
		mid := (lo + hi) / 2
		if h.at(mid).delta.Revision < rev {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < len(h.items) && h.at(lo).delta.Revision == rev {
		return h.at(lo)
	}
	return nil
}
