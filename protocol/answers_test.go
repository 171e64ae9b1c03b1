package protocol_test

// Tests that pin the answers of PROTOCOL.md §9 ("Answers to client authors' questions")
// that are behaviours of this package: envelope decoding, direct-get status handling,
// the headers of stored deltas, manifests and chunks. Each test names its question.

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/test/harness"
)

var answersSum = strings.Repeat("a", 64)

const answersDelta = `{"revision":2,"prev_revision":1,"checksum":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","count":0,"source":"database","committed_at":"2026-01-01T00:00:00Z","changes":[]}`

// Q11: the envelope's integers (revision, prev_revision, count, interval_ms) take integer
// literals only.
func TestAnswerEnvelopeIntegers(t *testing.T) {
	t.Parallel()
	if _, err := protocol.DecodeDelta([]byte(answersDelta)); err != nil {
		t.Fatal(err)
	}
	for _, repl := range [][2]string{
		{`"revision":2`, `"revision":2.0`},
		{`"revision":2`, `"revision":2e0`},
		{`"prev_revision":1`, `"prev_revision":1.0`},
		{`"count":0`, `"count":0.0`},
		{`"revision":2`, `"revision":"2"`},
	} {
		bad := strings.Replace(answersDelta, repl[0], repl[1], 1)
		if _, err := protocol.DecodeDelta([]byte(bad)); !errors.Is(err, protocol.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", repl[1], err)
		}
	}
	hb := `{"revision":2,"checksum":"` + answersSum + `","source":"database","time":"2026-01-01T00:00:00Z","interval_ms":2000,"syncer":"h:1"}`
	if _, err := protocol.DecodeHeartbeat([]byte(hb)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		strings.Replace(hb, `"interval_ms":2000`, `"interval_ms":2000.0`, 1),
		strings.Replace(hb, `"interval_ms":2000`, `"interval_ms":0`, 1),
		strings.Replace(hb, `"revision":2`, `"revision":2e0`, 1),
	} {
		if _, err := protocol.DecodeHeartbeat([]byte(bad)); !errors.Is(err, protocol.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", bad, err)
		}
	}
}

// Q9: envelope keys. PROTOCOL.md says keys match exactly and a repeated key is invalid in
// every document; the envelopes (delta, heartbeat, manifest) are decoded with
// encoding/json, which matches keys case-insensitively and keeps the last of repeated
// keys. The entries named "DEVIATION" pin today's behaviour (reported in §9, Q9); turn
// them into rejections when the envelope decoder becomes strict.
func TestAnswerEnvelopeKeys(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		doc      string
		accepted bool
	}{
		{"unknown key ignored", strings.Replace(answersDelta, `"changes"`, `"extra":{"a":[1]},"changes"`, 1), true},
		{"DEVIATION: case-insensitive key accepted", strings.Replace(answersDelta, `"revision":2`, `"REVISION":2`, 1), true},
		{"DEVIATION: repeated key accepted, last wins", strings.Replace(answersDelta, `"revision":2`, `"revision":1,"revision":2`, 1), true},
	}
	for _, tc := range cases {
		d, err := protocol.DecodeDelta([]byte(tc.doc))
		if (err == nil) != tc.accepted {
			t.Errorf("%s: err %v, want accepted=%v", tc.name, err, tc.accepted)
		}
		if err == nil && d.Revision != 2 {
			t.Errorf("%s: revision %d", tc.name, d.Revision)
		}
	}
}

// Q13: direct-get replies. 404 is "not found"; no responders (a 503 status with an empty
// body, as nats.go reports it) is "no stream"; every other status, and a reply with
// neither a status nor a Nats-Sequence header, is an error that is neither: a transient
// failure to retry, which says nothing about the message.
func TestAnswerDirectGetStatuses(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	nc := srv.Connect(t)
	names, err := protocol.NewNames("answers.q13")
	if err != nil {
		t.Fatal(err)
	}
	r := &protocol.Reader{NC: nc, Names: names}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// No stream at all: nobody answers.
	if _, err := r.Last(ctx, names.DeltaStream, names.DeltaSubject(1)); !errors.Is(err, protocol.ErrNoStream) {
		t.Fatalf("no responders: got %v, want ErrNoStream", err)
	}

	// A stand-in for the stream's direct-get responder, answering what the test says.
	reply := make(chan func(*nats.Msg), 1)
	sub, err := nc.Subscribe("$JS.API.DIRECT.GET."+names.DeltaStream, func(m *nats.Msg) {
		out := nats.NewMsg(m.Reply)
		(<-reply)(out)
		_ = m.RespondMsg(out)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	status := func(code, desc string, body string) func(*nats.Msg) {
		return func(m *nats.Msg) {
			m.Header.Set("Status", code)
			m.Header.Set("Description", desc)
			m.Data = []byte(body)
		}
	}
	cases := []struct {
		name     string
		answer   func(*nats.Msg)
		notFound bool
		noStream bool
	}{
		{"404 Message Not Found", status("404", "Message Not Found", ""), true, false},
		{"404 No Results", status("404", "No Results", ""), true, false},
		{"503 with an empty body (no responders)", status("503", "", ""), false, true},
		{"503 with a body", status("503", "Unavailable", "x"), false, false},
		{"408 Empty Request", status("408", "Empty Request", ""), false, false},
		{"408 Bad Request", status("408", "Bad Request", ""), false, false},
		{"412 Required Api Level", status("412", "Required Api Level", ""), false, false},
		{"413 Too Many Results", status("413", "Too Many Results", ""), false, false},
		{"429 Too Many Requests", status("429", "Too Many Requests", ""), false, false},
		{"500", status("500", "internal", ""), false, false},
		{"no status, empty body, no Nats-Sequence", func(*nats.Msg) {}, false, false},
		{"no status, a body, no Nats-Sequence", func(m *nats.Msg) { m.Data = []byte(answersDelta) }, false, false},
	}
	for _, tc := range cases {
		reply <- tc.answer
		_, err := r.Last(ctx, names.DeltaStream, names.DeltaSubject(2))
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		if errors.Is(err, protocol.ErrNotFound) != tc.notFound || errors.Is(err, protocol.ErrNoStream) != tc.noStream {
			t.Errorf("%s: got %v, want not found %v, no stream %v", tc.name, err, tc.notFound, tc.noStream)
		}
		if errors.Is(err, protocol.ErrInvalid) {
			t.Errorf("%s: %v must not make the stored message invalid", tc.name, err)
		}
	}
	// A well-formed reply: Nats-Sequence and the payload.
	reply <- func(m *nats.Msg) {
		m.Header.Set("Nats-Sequence", "7")
		m.Header.Set("Nats-Subject", names.DeltaSubject(2))
		m.Data = []byte(answersDelta)
	}
	if d, err := r.Delta(ctx, 2); err != nil || d.Revision != 2 {
		t.Errorf("well-formed reply: %v", err)
	}
}

// Q14 (and Q1): the headers of stored deltas, manifests and chunks, and what a reader
// does with a chunk that is missing or belongs to another snapshot.
func TestAnswerStoredHeaders(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	nc := srv.Connect(t)
	names, err := protocol.NewNames("answers.q14")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range []jetstream.StreamConfig{
		{Name: names.DeltaStream, Subjects: []string{names.DeltaSubjects()}, AllowDirect: true, Storage: jetstream.MemoryStorage},
		{Name: names.SnapshotStream, Subjects: []string{names.SnapshotSubjects()}, AllowDirect: true, Storage: jetstream.MemoryStorage},
	} {
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	r := &protocol.Reader{NC: nc, Names: names}

	// Stored deltas: the subject names the revision; the payload must carry it.
	store := func(subject string, hdr map[string]string, data string) uint64 {
		t.Helper()
		m := nats.NewMsg(subject)
		for k, v := range hdr {
			m.Header.Set(k, v)
		}
		m.Data = []byte(data)
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	store(names.DeltaSubject(2), map[string]string{protocol.HeaderRevision: "2"}, answersDelta)
	if _, err := r.Delta(ctx, 2); err != nil {
		t.Errorf("stored delta: %v", err)
	}
	store(names.DeltaSubject(3), nil, strings.Replace(answersDelta, `"revision":2`, `"revision":3`, 1))
	if _, err := r.Delta(ctx, 3); err != nil {
		t.Errorf("stored delta without headers: %v", err)
	}
	newest := func() (*protocol.Delta, error) {
		st, err := r.Last(ctx, names.DeltaStream, names.DeltaSubjects())
		if err != nil {
			return nil, err
		}
		return names.DeltaFromStored(st)
	}
	if d, err := newest(); err != nil || d.Revision != 3 {
		t.Errorf("newest stored delta (revision 3, without headers): %v", err)
	}
	store(names.DeltaSubject(4), map[string]string{protocol.HeaderRevision: "5"}, strings.Replace(answersDelta, `"revision":2`, `"revision":4`, 1))
	if _, err := r.Delta(ctx, 4); !errors.Is(err, protocol.ErrInvalid) {
		t.Errorf("stored delta whose Registry-Revision disagrees: got %v, want ErrInvalid", err)
	}
	store(names.DeltaSubject(6), nil, answersDelta) // payload says 2
	if _, err := r.Delta(ctx, 6); !errors.Is(err, protocol.ErrInvalid) {
		t.Errorf("stored delta whose payload names another revision: got %v, want ErrInvalid", err)
	}

	if _, err := newest(); !errors.Is(err, protocol.ErrInvalid) {
		t.Errorf("newest stored delta on %s carrying revision 2: got %v, want ErrInvalid", names.DeltaSubject(6), err)
	}

	// Snapshots: two chunks and a manifest whose headers disagree with its payload
	// (headers are informative; the payload is authoritative).
	snap, err := cache.New(5, "database", []cache.Extension{{ID: "a", Type: "pre", Subject: "s.v1", TimeoutMS: 100, Enabled: true, Version: "v1"}})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := snap.Encode()
	if err != nil {
		t.Fatal(err)
	}
	half := len(doc) / 2
	write := func(rev int64, chunkHdr [2]string, chunkSubject [2]string) {
		t.Helper()
		var seqs []string
		for i, part := range [][]byte{doc[:half], doc[half:]} {
			hdr := map[string]string{protocol.HeaderRevision: "999"}
			if chunkHdr[i] != "" {
				hdr[protocol.HeaderChunk] = chunkHdr[i]
			}
			seqs = append(seqs, strconv.FormatUint(store(chunkSubject[i], hdr, string(part)), 10))
		}
		store(names.Manifest(), map[string]string{protocol.HeaderRevision: "1", protocol.HeaderChecksum: answersSum},
			`{"revision":`+strconv.FormatInt(rev, 10)+`,"checksum":"`+snap.Checksum()+`","source":"database","count":1,"size":`+
				strconv.Itoa(len(doc))+`,"sequences":[`+strings.Join(seqs, ",")+`],"created_at":"2026-01-01T00:00:00Z"}`)
	}
	data5 := names.ChunkSubject(5)
	write(5, [2]string{"0/2", "1/2"}, [2]string{data5, data5})
	got, _, err := r.Snapshot(ctx)
	if err != nil || got.Checksum() != snap.Checksum() {
		t.Fatalf("snapshot with informative headers that disagree: %v", err)
	}
	write(5, [2]string{"0/2", ""}, [2]string{data5, data5})
	if _, _, err := r.Snapshot(ctx); !errors.Is(err, protocol.ErrInvalid) {
		t.Errorf("chunk without Registry-Chunk: got %v, want ErrInvalid", err)
	}
	write(5, [2]string{"0/2", "1/3"}, [2]string{data5, data5})
	if _, _, err := r.Snapshot(ctx); !errors.Is(err, protocol.ErrInvalid) {
		t.Errorf("chunk with a wrong Registry-Chunk: got %v, want ErrInvalid", err)
	}
	write(5, [2]string{"0/2", "1/2"}, [2]string{data5, names.ChunkSubject(4)})
	if _, _, err := r.Snapshot(ctx); !errors.Is(err, protocol.ErrSnapshotMoved) {
		t.Errorf("chunk of another revision: got %v, want ErrSnapshotMoved", err)
	}
	write(5, [2]string{"0/2", "1/2"}, [2]string{data5, data5})
	m, err := r.Manifest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, names.SnapshotStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(ctx, m.Sequences[1]); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Snapshot(ctx); !errors.Is(err, protocol.ErrSnapshotMoved) {
		t.Errorf("missing chunk: got %v, want ErrSnapshotMoved", err)
	}
}

// Q3: a live delta whose Registry-Revision header disagrees with its payload is invalid
// (so its headers cannot be trusted to choose what to fetch); without the header, or with
// an agreeing one, it decodes.
func TestAnswerLiveHeaders(t *testing.T) {
	t.Parallel()
	for hdr, ok := range map[string]bool{"": true, "2": true, "3": false, "02": false} {
		m := nats.NewMsg("answers.live")
		m.Data = []byte(answersDelta)
		if hdr != "" {
			m.Header.Set(protocol.HeaderRevision, hdr)
		}
		_, err := protocol.DeltaFromMsg(m)
		if (err == nil) != ok || (err != nil && !errors.Is(err, protocol.ErrInvalid)) {
			t.Errorf("Registry-Revision %q: err %v, want ok=%v", hdr, err, ok)
		}
	}
	for _, garbage := range []string{"", "{", `{"revision":2}`, "\xff"} {
		if _, err := protocol.DeltaFromMsg(&nats.Msg{Subject: "answers.live", Data: []byte(garbage)}); !errors.Is(err, protocol.ErrInvalid) {
			t.Errorf("%q: got %v, want ErrInvalid", garbage, err)
		}
	}
}
