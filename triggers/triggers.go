// Package triggers owns the registry's trigger SQL: one revision per transaction in commit
// order, the change log, and the NOTIFY that wakes the syncer.
package triggers

import (
	"context"
	"crypto/sha256"
	"database/sql"
	_ "embed"
	"encoding/hex"
	"fmt"
	"unicode/utf8"
)

// SQL creates the trigger functions and triggers in the current schema. It is applied by
// migration 2 (see migrations/), with ChannelSQL.
//
//go:embed triggers.sql
var SQL string

// ChannelSQL creates or replaces registry_channel(), which names the NOTIFY channel (see
// Channel). Migration 2 installs it with SQL; migration 4 replaces the earlier definition,
// which cut the name at 63 characters instead of bytes.
//
//go:embed channel.sql
var ChannelSQL string

// ChannelQuery returns the NOTIFY channel of the registry in the connection's schema.
// A trigger's notification carries the committed revision as decimal text, nothing else;
// the listener's liveness probes on the same channel carry "probe:<listener>:<seq>".
const ChannelQuery = `SELECT registry_channel()`

// MaxChannelBytes is the longest channel name PostgreSQL takes: NAMEDATALEN - 1 bytes
// (max_identifier_length), on every stock build.
const MaxChannelBytes = 63

// channelSuffix ends every channel name; channelHash is how many hex digits of the schema
// name's SHA-256 a long name carries.
const (
	channelSuffix = ".registry_revision"
	channelHash   = 16
)

// Channel is the name registry_channel() gives the schema's channel (with
// max_identifier_length 63): schema.registry_revision when it fits in MaxChannelBytes
// bytes, else the schema name cut to whole characters of at most 28 bytes, a dot, 16 hex
// digits of the SHA-256 of the schema name, and .registry_revision. It always fits, and
// differs for two schema names (to 64 bits of hash).
func Channel(schema string) string {
	if whole := schema + channelSuffix; len(whole) <= MaxChannelBytes {
		return whole
	}
	room := MaxChannelBytes - len(channelSuffix) - 1 - channelHash
	head := schema
	for len(head) > room {
		_, size := utf8.DecodeLastRuneInString(head)
		head = head[:len(head)-size]
	}
	sum := sha256.Sum256([]byte(schema))
	return head + "." + hex.EncodeToString(sum[:])[:channelHash] + channelSuffix
}

// Install creates the triggers inside tx.
func Install(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, ChannelSQL); err != nil {
		return fmt.Errorf("install registry_channel: %w", err)
	}
	if _, err := tx.ExecContext(ctx, SQL); err != nil {
		return fmt.Errorf("install registry triggers: %w", err)
	}
	return nil
}

// InstallChannel replaces registry_channel() inside tx (migration 4).
func InstallChannel(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, ChannelSQL); err != nil {
		return fmt.Errorf("install registry_channel: %w", err)
	}
	return nil
}
