// Package triggers owns the registry's trigger SQL: one revision per transaction in commit
// order, the change log, and the NOTIFY that wakes the syncer.
package triggers

import (
	"context"
	"database/sql"
	_ "embed"
	"fmt"
)

// SQL creates the trigger functions and triggers in the current schema. It is applied by
// migration 2 (see migrations/).
//
//go:embed triggers.sql
var SQL string

// ChannelQuery returns the NOTIFY channel of the registry in the connection's schema.
// A trigger's notification carries the committed revision as decimal text, nothing else;
// the listener's liveness probes on the same channel carry "probe:<listener>:<seq>".
const ChannelQuery = `SELECT registry_channel()`

// Install creates the triggers inside tx.
func Install(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, SQL); err != nil {
		return fmt.Errorf("install registry triggers: %w", err)
	}
	return nil
}
