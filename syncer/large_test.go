package syncer_test

import (
	"context"
	"testing"
	"time"
)

// TestLargeRevisionBecomesResync: a transaction whose delta cannot fit in one NATS message
// (a bulk import) is published as a snapshot followed by a resync delta without changes.
func TestLargeRevisionBecomesResync(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, nil)
	b.waitConverged(t, 10*time.Second)
	// 6,000 extensions with some config: well above the default 1 MiB max_payload.
	rev := b.exec(t, `INSERT INTO extensions (id, type, subject, timeout_ms, config)
		SELECT 'bulk_' || g, 'pre', 'beamline.ext.pre.bulk_' || g || '.v1', 100,
		       jsonb_build_object('description', repeat('x', 120), 'n', g)
		FROM generate_series(1, 6000) g`)
	got := b.waitConverged(t, 30*time.Second)
	if got.Len() != 6000 {
		t.Fatalf("published %d extensions, want 6000", got.Len())
	}
	d, err := b.reader.Delta(context.Background(), rev)
	if err != nil {
		t.Fatalf("delta %d: %v", rev, err)
	}
	if !d.Resync || len(d.Changes) != 0 || d.Count != 6000 || d.Checksum != got.Checksum() {
		t.Fatalf("delta %d: resync %v, %d changes, count %d, checksum %s; want a resync delta for the snapshot %s",
			rev, d.Resync, len(d.Changes), d.Count, d.Checksum, got.Checksum())
	}
	snap, _, err := b.reader.Snapshot(context.Background())
	if err != nil {
		t.Fatalf("stored snapshot: %v", err)
	}
	if snap.Revision() < rev {
		t.Fatalf("stored snapshot at revision %d, want >= %d", snap.Revision(), rev)
	}
}
