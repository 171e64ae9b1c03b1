package syncer

import "github.com/beamline/registry-syncer/protocol"

// published is one delta as it was stored, kept to republish it byte for byte.
type published struct {
	delta *protocol.Delta
	data  []byte
}

// history is a bounded ring of the most recent published deltas, oldest first. Only the
// publishing goroutine uses it.
type history struct {
	max   int
	items []published
	start int
}

func newHistory(max int) *history { return &history{max: max} }

func (h *history) add(p published) {
	if len(h.items) < h.max {
		h.items = append(h.items, p)
		return
	}
	h.items[h.start] = p
	h.start = (h.start + 1) % h.max
}

func (h *history) at(i int) published { return h.items[(h.start+i)%len(h.items)] }

// after returns the retained deltas with a revision above rev, oldest first, and whether
// they continue rev without a hole (the first one's prev is rev).
func (h *history) after(rev int64) ([]published, bool) {
	n := len(h.items)
	i := n
	for i > 0 && h.at(i-1).delta.Revision > rev {
		i--
	}
	out := make([]published, 0, n-i)
	for ; i < n; i++ {
		out = append(out, h.at(i))
	}
	return out, len(out) > 0 && out[0].delta.PrevRevision == rev
}
