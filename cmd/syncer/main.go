// Command syncer publishes the Beamline extension registry from PostgreSQL to NATS
// JetStream, migrates its schema and manages fixture files. Run `syncer help` for the
// commands and the environment variables.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runEnv(ctx, os.Args[1:], &env{lookup: os.LookupEnv, environ: os.Environ, stdout: os.Stdout, stderr: os.Stderr})
	stop()
	os.Exit(code)
}
