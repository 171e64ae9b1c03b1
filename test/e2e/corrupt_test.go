package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
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

	// 2. A well-formed delta on top of the served revision with a wrong checksum, signed
	// with the registry's own key (a syncer bug, not a forgery: the content check is what
	// refuses it).
	forged := &protocol.Delta{Revision: good.Revision() + 1, PrevRevision: good.Revision(), Checksum: badChecksum,
		Count: good.Len(), Source: protocol.SourceDatabase, CommittedAt: time.Now().UTC(),
		Changes: []cache.Change{{Op: cache.OpPut, Kind: cache.KindExtension, ID: "normalize_text",
			Value: json.RawMessage(`{"id": "normalize_text", "type": "pre", "subject": "beamline.ext.pre.normalize_text.v1",
				"timeout_ms": 4321, "retry": 0, "enabled": true, "version": "v1", "config": {}, "metadata": {}}`)}}}
	key := b.registryKey(t)
	b.publishDeltaSigned(t, forged, key)
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
	b.publishBadSnapshot(t, good, key)
	b.publishDeltaSigned(t, &protocol.Delta{Revision: good.Revision() + 1, PrevRevision: good.Revision(), Checksum: badChecksum,
		Count: good.Len(), Source: protocol.SourceDatabase, CommittedAt: time.Now().UTC(), Resync: true}, key)
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

// registryKey is the key the syncer signs with: the one it generated and stored in the
// database (the test's role may read it; routers and forgers cannot).
func (b *testBundle) registryKey(t *testing.T) *protocol.Signer {
	t.Helper()
	var seed string
	if err := b.schema.Pool.QueryRow(context.Background(), `SELECT seed FROM registry_signing_key`).Scan(&seed); err != nil {
		t.Fatal(err)
	}
	s, err := protocol.NewSigner([]byte(seed))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// publishDelta announces d on the live subject with the headers a syncer sets, unsigned
// (what anyone allowed to publish there can send).
func (b *testBundle) publishDelta(t *testing.T, d *protocol.Delta) {
	t.Helper()
	b.publishDeltaSigned(t, d, nil)
}

// publishDeltaSigned is publishDelta with a signature by signer (nil: none).
func (b *testBundle) publishDeltaSigned(t *testing.T, d *protocol.Delta, signer *protocol.Signer) {
	t.Helper()
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	m := d.Msg(b.names.Live(), data)
	if signer != nil {
		if err := signer.Sign(protocol.KindDelta, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.nc.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// publishBadSnapshot stores, like the syncer does (chunk, then manifest), the content
// of good labelled one revision later, with a checksum that does not match it in both
// the document and the manifest.
func (b *testBundle) publishBadSnapshot(t *testing.T, good *cache.Snapshot, signer *protocol.Signer) {
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
	if err := signer.Sign(protocol.KindManifest, mm); err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.PublishMsg(ctx, mm); err != nil {
		t.Fatal(err)
	}
}

// TestForgedMessagesRefused plays a NATS user allowed to publish on the live and heartbeat
// subjects, against a syncer that signs with the key it generated (no key configured) and
// routers and a watcher that trust it on first use. Measured before signatures: a forged
// delta at served+1 with the right checksum for its forged content was applied at once, one
// at revision MaxInt64 pinned the routers to it for good, one far ahead kept them resyncing
// for ≥ 36 s (real changes 0.8–1.5 s late, through snapshots), and alternating
// ahead/confirm heartbeats defeated the resync backoff. Now each is refused and the next
// real revision reaches every router within the usual time.
func TestForgedMessagesRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.forged")
	b.seedDefaults(t)
	s := b.startSyncer(t)
	s.waitReady(t, 30*time.Second)
	f := b.startFleet(t, 3, true)
	good := b.db(t)
	f.converge(t, good, time.Now(), 30*time.Second)
	stranger, _, err := protocol.GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}

	// forged is a delta that points normalize_text at an attacker's subject, with the
	// checksum and count of that content.
	forged := func(rev, prev int64) *protocol.Delta {
		e, _ := good.Get("normalize_text")
		cp := *e
		cp.Subject = "attacker.steals.traffic.v1"
		raw, err := cache.Canonical(&cp)
		if err != nil {
			t.Fatal(err)
		}
		ch := cache.Change{Op: cache.OpPut, Kind: cache.KindAggregate, ID: cp.ID, Value: raw}
		next, _, err := good.Apply(good.Revision()+1, protocol.SourceDatabase, []cache.Change{ch})
		if err != nil {
			t.Fatal(err)
		}
		return &protocol.Delta{Revision: rev, PrevRevision: prev, Checksum: next.Checksum(), Count: next.Len(),
			Source: protocol.SourceDatabase, CommittedAt: time.Now().UTC(), Changes: []cache.Change{ch}}
	}
	notForged := func(what string) {
		t.Helper()
		for _, r := range f.routers {
			if e, ok := r.c.Snapshot().Get("normalize_text"); !ok || e.Subject == "attacker.steals.traffic.v1" {
				t.Fatalf("%s serves forged content after %s", r.name, what)
			}
		}
	}
	timeout := 300
	for _, step := range []struct {
		what string
		send func()
	}{
		{"a forged delta at served+1 (unsigned)", func() { b.publishDelta(t, forged(good.Revision()+1, good.Revision())) }},
		{"a forged delta at served+1 (signed by another key)", func() {
			b.publishDeltaSigned(t, forged(good.Revision()+1, good.Revision()), stranger)
		}},
		{"a forged delta at MaxInt64", func() { b.publishDelta(t, forged(math.MaxInt64, good.Revision())) }},
		{"a forged delta far ahead", func() { b.publishDelta(t, forged(good.Revision()+1_000_000, good.Revision()+999_999)) }},
		{"alternating ahead/confirm heartbeats", func() {
			for i := range 200 {
				for _, rev := range []int64{good.Revision() + 1 + int64(i), good.Revision()} {
					hb, _ := json.Marshal(&protocol.Heartbeat{Revision: rev, Checksum: good.Checksum(), Source: protocol.SourceDatabase,
						Time: time.Now().UTC(), IntervalMS: 2000, Syncer: "forger"})
					if err := b.nc.Publish(b.names.Heartbeat(), hb); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := b.nc.Flush(); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		var before []int64
		for _, r := range f.routers {
			before = append(before, r.rejected.Load())
		}
		step.send()
		eventually(t, 5*time.Second, "the routers reject "+step.what, func() error {
			for i, r := range f.routers {
				if r.rejected.Load() <= before[i] {
					return fmt.Errorf("%s: no rejection", r.name)
				}
			}
			return nil
		})
		notForged(step.what)
		timeout++
		_, at := b.commit(t, fmt.Sprintf(`UPDATE extensions SET timeout_ms = %d WHERE id = 'mask_pii'`, timeout))
		good = b.db(t)
		c := f.converge(t, good, at, convergeWithin)
		notForged(step.what)
		t.Logf("after %s: next real revision %d: %s", step.what, good.Revision(), c)
	}
	for _, r := range f.routers {
		if got := r.c.TrustedKeys(); len(got) != 1 || got[0] != b.registryKey(t).PublicKey() {
			t.Errorf("%s trusts %v, want the registry's key", r.name, got)
		}
	}
}
