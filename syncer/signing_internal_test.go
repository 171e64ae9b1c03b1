package syncer

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestUseKeyKeepsTheKeyAcrossAFailure: a term that cannot read the key (the database is
// being re-created: no table yet) keeps the key signed with so far, and offers it when the
// empty table is back, so routers that trusted it keep following.
func TestUseKeyKeepsTheKeyAcrossAFailure(t *testing.T) {
	t.Parallel()
	schema := harness.PG(t).NewSchema(t)
	srv := harness.NewNATS(t, harness.NATSOptions{})
	s, err := New(Config{DatabaseURL: schema.URL}, srv.Connect(t), publisher.Config{}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := s.useKey(ctx, schema.Pool); err != nil {
		t.Fatal(err)
	}
	first := s.pub.Signer().PublicKey()
	if _, err := schema.Pool.Exec(ctx, `ALTER TABLE registry_signing_key RENAME TO registry_signing_key_away`); err != nil {
		t.Fatal(err)
	}
	if err := s.useKey(ctx, schema.Pool); err == nil {
		t.Fatal("useKey without the table: no error")
	}
	if _, err := schema.Pool.Exec(ctx, `ALTER TABLE registry_signing_key_away RENAME TO registry_signing_key`); err != nil {
		t.Fatal(err)
	}
	if _, err := schema.Pool.Exec(ctx, `DELETE FROM registry_signing_key`); err != nil {
		t.Fatal(err)
	}
	if err := s.useKey(ctx, schema.Pool); err != nil {
		t.Fatal(err)
	}
	var stored string
	if err := schema.Pool.QueryRow(ctx, `SELECT public_key FROM registry_signing_key`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if got := s.pub.Signer().PublicKey(); got != first || stored != first {
		t.Fatalf("signing with %s, the database keeps %s; before the failure: %s", got, stored, first)
	}
}
