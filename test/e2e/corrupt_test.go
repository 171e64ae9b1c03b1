package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
)

// badChecksum is well formed (64 lowercase hex digits) and matches no content.
var badChecksum = strings.Repeat("0badc0de", 8)

// TestCorruptPayloadsRejected publishes, by hand, what a router must refuse — garbage
// bytes on the live subject, a well-formed delta on top of the served revision whose
// checksum is wrong, and a stored snapshot (manifest and chunk) whose checksum is wrong —
// and checks that every router and the watcher reject each one, count it, keep serving
// the last good snapshot (Lookup works, revision and checksum unchanged) and converge on
// the next good revision.
func TestCorruptPayloadsRejected(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.corrupt")
	b.seedDefaults(t)
	s := b.startSyncer(t)
	s.waitReady(t, 30*time.Second)
	base := b.storedSnapshot(t)
	f := b.startFleet(t, 5, true)
	good := b.db(t)
	f.converge(t, good, time.Now(), 30*time.Second)

	// keepsServing checks that every router still serves good and counted want rejections,
	// and that the watcher reported as many.
	keepsServing := func(what string, want int64) {
		t.Helper()
		eventually(t, 5*time.Second, fmt.Sprintf("%d rejections after %s", want, what), func() error {
			for _, r := range f.routers {
				if n := r.rejected.Load(); n < want {
					return fmt.Errorf("%s: %d rejections", r.name, n)
				}
				if got := r.metric(t, "registry_client_rejections_total"); got < float64(want) {
					return fmt.Errorf("%s: registry_client_rejections_total %v", r.name, got)
				}
			}
			if n := f.watch.rejections(); n < int(want) {
				return fmt.Errorf("%s: %d rejections logged", f.watch.name, n)
			}
			return nil
		})
		for _, r := range f.routers {
			if n := r.rejected.Load(); n != want {
				t.Errorf("%s: %d rejections after %s, want %d: %v", r.name, n, what, want, r.errors())
			}
			if err := r.serves(good); err != nil {
				t.Errorf("after %s: %v", what, err)
			}
			if _, ok := r.c.Lookup("normalize_text"); !ok {
				t.Errorf("%s: Lookup(normalize_text) fails after %s", r.name, what)
			}
		}
	}

	// 1. Garbage on the live subject.
	if err := b.nc.Publish(b.names.Live(), []byte("\x00\xffnot a delta{")); err != nil {
		t.Fatal(err)
	}
	keepsServing("garbage on "+b.names.Live(), 1)

	// 2. A well-formed delta on top of the served revision with a wrong checksum.
	forged := &protocol.Delta{Revision: good.Revision() + 1, PrevRevision: good.Revision(), Checksum: badChecksum,
		Count: good.Len(), Source: protocol.SourceDatabase, CommittedAt: time.Now().UTC(),
		Changes: []cache.Change{{Op: cache.OpPut, Kind: cache.KindExtension, ID: "normalize_text",
			Value: json.RawMessage(`{"id": "normalize_text", "type": "pre", "subject": "beamline.ext.pre.normalize_text.v1",
				"timeout_ms": 4321, "retry": 0, "enabled": true, "version": "v1", "config": {}, "metadata": {}}`)}}}
	b.publishDelta(t, forged)
	keepsServing("a delta with a wrong checksum", 2)
	for _, r := range f.routers {
		if e, _ := r.c.Lookup("normalize_text"); e.TimeoutMS == 4321 {
			t.Errorf("%s serves the content of the rejected delta", r.name)
		}
	}

	// The next good revision is applied by everyone.
	_, at := b.commit(t, `UPDATE extensions SET timeout_ms = 250 WHERE id = 'mask_pii'`)
	good = b.db(t)
	c := f.converge(t, good, at, convergeWithin)
	t.Logf("next good revision %d after the rejected live messages: %s", good.Revision(), c)

	// 3. A stored snapshot with a wrong checksum, one revision ahead. The routers read the
	// snapshot when told to resync (a resync delta for that revision); a router that starts
	// now bootstraps from it.
	b.waitStoredSnapshot(t, good, 10*time.Second) // else the syncer could write over it for this revision
	b.publishBadSnapshot(t, good)
	b.publishDelta(t, &protocol.Delta{Revision: good.Revision() + 1, PrevRevision: good.Revision(), Checksum: badChecksum,
		Count: good.Len(), Source: protocol.SourceDatabase, CommittedAt: time.Now().UTC(), Resync: true})
	keepsServing("a stored snapshot with a wrong checksum", 3)
	late := b.startRouter(t, b.url)
	eventually(t, 5*time.Second, "the new router rejects the stored snapshot", func() error {
		if late.rejected.Load() == 0 {
			return fmt.Errorf("%s: no rejection", late.name)
		}
		return nil
	})
	if late.c.Ready() {
		t.Errorf("%s installed a snapshot whose checksum is wrong (revision %d)", late.name, late.c.Revision())
	}
	t.Logf("the new router rejected: %s", late.errors()[0])

	// The next good revision: its delta and the snapshot the syncer writes for it.
	_, at = b.commit(t, `UPDATE extensions SET timeout_ms = 260 WHERE id = 'mask_pii'`)
	good = b.db(t)
	f.routers = append(f.routers, late)
	c = f.converge(t, good, at, convergeWithin)
	t.Logf("next good revision %d after the rejected snapshot: %s", good.Revision(), c)
	b.waitStoredSnapshot(t, good, 10*time.Second)
	for _, r := range f.routers {
		if e, _ := r.c.Lookup("mask_pii"); e == nil || e.TimeoutMS != 260 {
			t.Errorf("%s: mask_pii %+v, want timeout 260", r.name, e)
		}
	}
	b.checkHistory(t, base, good)
}

// publishDelta announces d on the live subject with the headers a syncer sets.
func (b *testBundle) publishDelta(t *testing.T, d *protocol.Delta) {
	t.Helper()
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.nc.PublishMsg(d.Msg(b.names.Live(), data)); err != nil {
		t.Fatal(err)
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// publishBadSnapshot stores, like the syncer does (chunk, then manifest), the content
// of good labelled one revision later, with a checksum that does not match it in both
// the document and the manifest.
func (b *testBundle) publishBadSnapshot(t *testing.T, good *cache.Snapshot) {
	t.Helper()
	ctx := context.Background()
	doc, err := good.Encode()
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(doc, &fields); err != nil {
		t.Fatal(err)
	}
	rev := good.Revision() + 1
	fields["revision"] = json.RawMessage(strconv.FormatInt(rev, 10))
	fields["checksum"] = json.RawMessage(`"` + badChecksum + `"`)
	if doc, err = json.Marshal(fields); err != nil {
		t.Fatal(err)
	}
	chunk := nats.NewMsg(b.names.ChunkSubject(rev))
	chunk.Data = doc
	chunk.Header.Set(protocol.HeaderChunk, "0/1")
	chunk.Header.Set(protocol.HeaderRevision, strconv.FormatInt(rev, 10))
	ack, err := b.js.PublishMsg(ctx, chunk)
	if err != nil {
		t.Fatal(err)
	}
	man, err := json.Marshal(protocol.Manifest{Revision: rev, Checksum: badChecksum, Source: protocol.SourceDatabase,
		Count: good.Len(), Size: len(doc), Sequences: []uint64{ack.Sequence}, CreatedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	mm := nats.NewMsg(b.names.Manifest())
	mm.Data = man
	mm.Header.Set(protocol.HeaderRevision, strconv.FormatInt(rev, 10))
	mm.Header.Set(protocol.HeaderChecksum, badChecksum)
	if _, err := b.js.PublishMsg(ctx, mm); err != nil {
		t.Fatal(err)
	}
}
