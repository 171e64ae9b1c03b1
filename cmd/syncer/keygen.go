package main

import (
	"context"
	"fmt"

	"github.com/beamline/registry-syncer/signingkey"
)

// cmdKeygen writes a new signing seed file and prints its public key. It needs no other
// configuration.
func cmdKeygen(_ context.Context, e *env, args []string) error {
	rest, err := parseFlags("keygen", args, 1, 1)
	if err != nil {
		return err
	}
	s, err := signingkey.WriteFile(rest[0])
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	fmt.Fprintln(e.stdout, s.PublicKey())
	return nil
}
