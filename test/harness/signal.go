package harness

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// onSignal holds the cleanups to run when the test binary is interrupted. One goroutine
// serves every registration, so that all of them run before the process exits; it ends
// (and the signals get their default action back) when the last one is unregistered.
var onSignal struct {
	mu       sync.Mutex
	next     int
	cleanups map[int]func()
	ch       chan os.Signal
	done     chan struct{}
}

// stopOnSignal runs cleanup and exits when the test binary is interrupted (Ctrl-C, or the
// SIGTERM/SIGQUIT that go test sends on timeout), so no server or directory is left behind.
// The returned stop unregisters cleanup.
func stopOnSignal(cleanup func()) (stop func()) {
	onSignal.mu.Lock()
	defer onSignal.mu.Unlock()
	if len(onSignal.cleanups) == 0 {
		onSignal.cleanups = map[int]func(){}
		ch, done := make(chan os.Signal, 1), make(chan struct{})
		onSignal.ch, onSignal.done = ch, done
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
		go serveSignals(ch, done)
	}
	id := onSignal.next
	onSignal.next++
	onSignal.cleanups[id] = cleanup
	var once sync.Once
	return func() {
		once.Do(func() {
			onSignal.mu.Lock()
			defer onSignal.mu.Unlock()
			delete(onSignal.cleanups, id)
			if len(onSignal.cleanups) == 0 {
				signal.Stop(onSignal.ch)
				close(onSignal.done)
			}
		})
	}
}

func serveSignals(ch chan os.Signal, done chan struct{}) {
	select {
	case sig := <-ch:
		onSignal.mu.Lock()
		var all []func()
		for _, c := range onSignal.cleanups {
			all = append(all, c)
		}
		onSignal.mu.Unlock()
		var wg sync.WaitGroup
		for _, c := range all {
			wg.Go(c)
		}
		wg.Wait()
		if s, ok := sig.(syscall.Signal); ok {
			os.Exit(128 + int(s))
		}
		os.Exit(1)
	case <-done:
	}
}
