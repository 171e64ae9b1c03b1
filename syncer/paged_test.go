package syncer_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/syncer"
)

// TestHugeRevisionInPages: with a small change-log bound (16 KiB), revisions of thousands of
// change-log rows are read, applied and published page by page, and no read holds more rows
// than the bound allows. One that fits in one message is published as a delta with every
// change, an aggregate made invalid on a later page than one of its valid changes withheld
// with its content before the revision; one that does not fit becomes a snapshot and a
// resync delta. The published state equals the database's throughout.
func TestHugeRevisionInPages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.schema.UndoRules(t) // rows the router side refuses (see TestPoisonRowWithheld)
	const pageBytes = 16 << 10
	r := b.start(t, func(c *syncer.Config) { c.BatchBytes = pageBytes })
	b.waitConverged(t, 10*time.Second)
	b.exec(t, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1', 100)`)
	b.exec(t, `ALTER TABLE extensions DROP CONSTRAINT extensions_timeout_ms_between_10_and_5000`)

	// 1. 2,000 new extensions between a valid change of 'a' (first page) and one that makes
	// it invalid (last page): about 700 kB of changes, one message's worth.
	fits := b.exec(t,
		`UPDATE extensions SET timeout_ms = 300 WHERE id = 'a'`,
		`INSERT INTO extensions (id, type, subject, timeout_ms, config)
		 SELECT 'page_' || g, 'pre', 'beamline.ext.pre.page_' || g || '.v1', 100, jsonb_build_object('description', repeat('p', 100), 'n', g)
		 FROM generate_series(1, 2000) g`,
		`UPDATE extensions SET timeout_ms = 1 WHERE id = 'a'`)
	var published *cache.Snapshot
	waitFor(t, 30*time.Second, fmt.Sprintf("revision %d published", fits), func() (bool, error) {
		var err error
		published, err = b.follow(context.Background())
		if err != nil {
			return false, err
		}
		return published.Revision() >= fits, fmt.Errorf("published revision %d", published.Revision())
	})
	if published.Len() != 2001 {
		t.Errorf("published %d extensions at revision %d, want 2,001", published.Len(), fits)
	}
	if e, ok := published.Get("a"); !ok || e.TimeoutMS != 100 {
		t.Errorf("a: %+v %v; want its content before revision %d (timeout 100): withheld", e, ok, fits)
	}
	if e, ok := published.Get("page_2000"); !ok || !strings.Contains(string(e.Config), `"n": 2000`) && !strings.Contains(string(e.Config), `"n":2000`) {
		t.Errorf("page_2000: %+v %v", e, ok)
	}
	d, err := b.reader.Delta(context.Background(), fits)
	if err != nil {
		t.Fatalf("delta %d: %v", fits, err)
	}
	if d.Resync || len(d.Changes) < 2000 {
		t.Errorf("delta %d: resync %v with %d changes; want the changes themselves", fits, d.Resync, len(d.Changes))
	}
	waitFor(t, 10*time.Second, "a withheld", func() (bool, error) {
		st := r.s.Status()
		return len(st.Withheld) == 1 && st.Withheld[0].ID == "a" && strings.Contains(st.Withheld[0].Reason, "timeout"), fmt.Errorf("withheld %+v", st.Withheld)
	})
	// Fixed: published whole again, and everything equals the database.
	b.exec(t, `UPDATE extensions SET timeout_ms = 400 WHERE id = 'a'`)
	got := b.waitConverged(t, 30*time.Second)
	if e, _ := got.Get("a"); e == nil || e.TimeoutMS != 400 {
		t.Errorf("a after the fix: %+v", e)
	}

	// 2. 6,000 more with larger values (about 2 MB of changes): above the 1 MiB message, so
	// a snapshot and a resync delta.
	huge := b.exec(t, `INSERT INTO extensions (id, type, subject, timeout_ms, config)
		SELECT 'huge_' || g, 'pre', 'beamline.ext.pre.huge_' || g || '.v1', 100, jsonb_build_object('description', repeat('x', 200), 'n', g)
		FROM generate_series(1, 6000) g`)
	got = b.waitConverged(t, 60*time.Second)
	if got.Len() != 8001 {
		t.Errorf("published %d extensions, want 8,001", got.Len())
	}
	if d, err := b.reader.Delta(context.Background(), huge); err != nil || !d.Resync || len(d.Changes) != 0 || d.Checksum != got.Checksum() {
		t.Errorf("delta %d: %+v %v; want a resync delta for the snapshot %s", huge, d, err, got.Checksum())
	}

	// Every read held at most one page: 128 rows at this bound (a row counts 64 bytes or
	// more, and a read takes at most pageBytes/128 rows of a revision), never a revision's
	// thousands.
	rows := testutil.ToFloat64(r.metrics.ChangeLogRows)
	if rows < 1 || rows > pageBytes/128 {
		t.Errorf("the most change-log rows one read held: %v, want 1..%d", rows, pageBytes/128)
	}
	t.Logf("largest change-log read: %v rows", rows)
	b.checkExactlyOnce(t, 1, got.Revision(), 0)
	r.stop(t)
}
