package client

import (
	"errors"
	"sync"

	"github.com/sony/gobreaker/v2"

	"github.com/beamline/registry-syncer/protocol"
)

// Breaker states, as reported by Resolve, CallStats and the
// beamline_extension_circuit_state metric (0, 1, 2).
const (
	BreakerClosed   = protocol.BreakerClosed
	BreakerHalfOpen = protocol.BreakerHalfOpen
	BreakerOpen     = protocol.BreakerOpen
)

// breaker is the circuit breaker of one invocation target, with the
// configuration it was built from.
type breaker struct {
	extension, target string
	cfg               BreakerConfig
	cb                *gobreaker.CircuitBreaker[struct{}]
}

// breakers holds a breaker per target (extension id and instance id, or the
// subject called when the extension has no instance). A target whose
// configuration changes (its extension's metadata.circuit_breaker) gets a new,
// closed breaker.
type breakers struct {
	mu sync.RWMutex
	m  map[targetKey]*breaker
}

type targetKey struct{ extension, target string }

func (bs *breakers) get(extension, target string, cfg BreakerConfig) *breaker {
	k := targetKey{extension, target}
	bs.mu.RLock()
	b := bs.m[k]
	bs.mu.RUnlock()
	if b != nil && b.cfg == cfg {
		return b
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if b = bs.m[k]; b != nil && b.cfg == cfg {
		return b
	}
	if bs.m == nil {
		bs.m = make(map[targetKey]*breaker)
	}
	b = &breaker{extension: extension, target: target, cfg: cfg, cb: newCircuitBreaker(extension+"/"+target, cfg)}
	bs.m[k] = b
	return b
}

// peek returns the breaker of a target if one exists.
func (bs *breakers) peek(extension, target string) *breaker {
	bs.mu.RLock()
	defer bs.mu.RUnlock()
	return bs.m[targetKey{extension, target}]
}

// prune drops the breakers whose target no longer exists (keep reports false).
func (bs *breakers) prune(keep func(extension, target string) bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	for k := range bs.m {
		if !keep(k.extension, k.target) {
			delete(bs.m, k)
		}
	}
}

func (bs *breakers) each(f func(*breaker)) {
	bs.mu.RLock()
	list := make([]*breaker, 0, len(bs.m))
	for _, b := range bs.m {
		list = append(list, b)
	}
	bs.mu.RUnlock()
	for _, b := range list {
		f(b)
	}
}

// errCallerGone marks a call abandoned because the caller's context ended: the
// breaker counts it neither as a success nor as a failure.
var errCallerGone = errors.New("client: caller's context ended")

func newCircuitBreaker(name string, cfg BreakerConfig) *gobreaker.CircuitBreaker[struct{}] {
	// The rolling window is made of ten buckets: counts age out a tenth of the
	// window at a time.
	bucket := max(cfg.Window/10, 1)
	return gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:         name,
		MaxRequests:  uint32(cfg.HalfOpenMaxRequests),
		Interval:     cfg.Window,
		BucketPeriod: bucket,
		Timeout:      cfg.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			if int(c.ConsecutiveFailures) >= cfg.FailureThreshold {
				return true
			}
			// Requests counts calls still in flight: the rate is over completed ones.
			done := c.TotalSuccesses + c.TotalFailures
			return int(done) >= cfg.MinRequests && done > 0 &&
				float64(c.TotalFailures)/float64(done) >= cfg.ErrorRateThreshold
		},
		IsSuccessful: func(err error) bool {
			return err == nil || errors.Is(err, ErrValidatorBlocked)
		},
		IsExcluded: func(err error) bool { return errors.Is(err, errCallerGone) },
	})
}

func stateName(s gobreaker.State) string {
	switch s {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	}
	return BreakerClosed
}

func stateValue(s gobreaker.State) float64 {
	switch s {
	case gobreaker.StateOpen:
		return 2
	case gobreaker.StateHalfOpen:
		return 1
	}
	return 0
}
