package harness

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// onSignal holds the cleanups to run when the test binary is interrupted. One goroutine
// serves every registration, so that all of them run before the process exits.
var onSignal struct {
	once     sync.Once
	mu       sync.Mutex
	next     int
	cleanups map[int]func()
}

// stopOnSignal runs cleanup and exits when the test binary is interrupted (Ctrl-C, or the
// SIGTERM/SIGQUIT that go test sends on timeout), so no server or directory is left behind.
// The returned stop unregisters cleanup.
func stopOnSignal(cleanup func()) (stop func()) {
	onSignal.once.Do(func() {
		onSignal.cleanups = map[int]func(){}
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
		go func() {
			sig := <-ch
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
		}()
	})
	onSignal.mu.Lock()
	id := onSignal.next
	onSignal.next++
	onSignal.cleanups[id] = cleanup
	onSignal.mu.Unlock()
	return func() {
		onSignal.mu.Lock()
		delete(onSignal.cleanups, id)
		onSignal.mu.Unlock()
	}
}
