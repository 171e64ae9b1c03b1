package client

import (
	"sync"

	"github.com/nats-io/nats.go"
)

// liveQueue holds the live and heartbeat messages received and not yet handled, in the
// order the connection delivered them (both subscriptions deliver into one channel),
// within a bound in messages and one in bytes (Config.BufferSize, Config.BufferBytes). A
// message beyond either is dropped and counted, never blocking the connection: the client
// notices the drop and catches up from the stream. One queue per subscription, i.e. per
// Start.
//
// The connection hands messages over on a channel that a forwarder goroutine empties into
// the queue. The channel holds as many messages as the queue (BufferSize): the connection
// delivers a whole read buffer of messages at once, without yielding, so a smaller channel
// dropped bursts of small deltas at 1,000 commits/s before the forwarder ran (measured
// with 16). Its messages are not counted in bytes; it only fills while the forwarder waits
// for a CPU, whereas the queue fills while the client is busy (a snapshot read, a slow
// OnChange), which is what the bounds are for.
type liveQueue struct {
	in    chan *nats.Msg // the subscriptions deliver here
	ready chan struct{}  // holds a token while messages are queued
	stop  chan struct{}
	done  chan struct{}

	mu                sync.Mutex
	q                 []*nats.Msg
	bytes             int
	maxMsgs, maxBytes int
	dropped           int
	peakBytes         int
}

func newLiveQueue(maxMsgs, maxBytes int) *liveQueue {
	q := &liveQueue{in: make(chan *nats.Msg, maxMsgs), ready: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		maxMsgs: maxMsgs, maxBytes: maxBytes}
	go q.forward()
	return q
}

// forward moves messages from the subscriptions' channel into the queue until close.
func (q *liveQueue) forward() {
	defer close(q.done)
	for {
		select {
		case <-q.stop:
			return
		case m := <-q.in:
			q.push(m)
		}
	}
}

// close stops the forwarder (the subscriptions are unsubscribed first).
func (q *liveQueue) close() {
	close(q.stop)
	<-q.done
}

// msgSize is what a message is counted as against the byte bound: its payload, headers
// and subject, and a fixed overhead for the rest.
func msgSize(m *nats.Msg) int {
	n := 128 + len(m.Subject) + len(m.Data)
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

func (q *liveQueue) push(m *nats.Msg) {
	size := msgSize(m)
	q.mu.Lock()
	if len(q.q) >= q.maxMsgs || q.bytes+size > q.maxBytes {
		q.dropped++
		q.mu.Unlock()
		q.signal() // the drop is noticed when the loop next looks
		return
	}
	q.q = append(q.q, m)
	q.bytes += size
	q.peakBytes = max(q.peakBytes, q.bytes)
	q.mu.Unlock()
	q.signal()
}

func (q *liveQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop takes the oldest queued message (nil when none is queued), putting the ready
// token back while others remain.
func (q *liveQueue) pop() *nats.Msg {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.q) == 0 {
		return nil
	}
	m := q.q[0]
	q.q[0] = nil
	q.q = q.q[1:]
	if len(q.q) == 0 {
		q.q = nil // let the backing array go
	}
	q.bytes -= msgSize(m)
	if len(q.q) > 0 {
		q.signal()
	}
	return m
}

// droppedCount is how many messages the queue dropped because it was full.
func (q *liveQueue) droppedCount() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dropped
}
