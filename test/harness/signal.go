package harness

import (
	"os"
	"os/signal"
	"syscall"
)

// stopOnSignal runs cleanup and exits when the test binary is interrupted (Ctrl-C, or the
// SIGTERM/SIGQUIT that go test sends on timeout), so no server or directory is left behind.
func stopOnSignal(cleanup func()) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			cleanup()
			signal.Stop(ch)
			if s, ok := sig.(syscall.Signal); ok {
				os.Exit(128 + int(s))
			}
			os.Exit(1)
		case <-done:
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}
