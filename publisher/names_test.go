package publisher_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestCollidingPrefixes: prefixes that earlier versions mapped to one stream name
// (beamline.registry, beamline-registry, beamline_registry) publish side by side on one
// server; each reads back its own deltas, and the first keeps publishing after the others
// started.
func TestCollidingPrefixes(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	prefixes := []string{"beamline.registry", "beamline-registry", "beamline_registry", "Beamline.Registry"}
	pubs := make([]*publisher.Publisher, len(prefixes))
	for i, prefix := range prefixes {
		p, err := publisher.New(srv.Connect(t), publisher.Config{Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.EnsureStreams(ctx); err != nil {
			t.Fatalf("prefix %s: EnsureStreams: %v", prefix, err)
		}
		pubs[i] = p
		// Every publisher so far, the first included, still stores and reads its deltas.
		for j, q := range pubs[:i+1] {
			rev := int64(i + 1)
			d := delta(rev, prefixes[j])
			if err := q.PublishDelta(ctx, d, encode(t, d)); err != nil {
				t.Fatalf("prefix %s after %s started: publish delta %d: %v", prefixes[j], prefix, rev, err)
			}
			got, err := q.Reader().Delta(ctx, rev)
			if err != nil {
				t.Fatalf("prefix %s: read delta %d: %v", prefixes[j], rev, err)
			}
			if got.Checksum != checksum(prefixes[j]) {
				t.Fatalf("prefix %s read delta %d of another prefix", prefixes[j], rev)
			}
		}
	}
}

// TestStreamOfAnotherPrefix: a stream of our name that serves another prefix (made by an
// earlier version, whose names collided) is refused, naming both prefixes, and left as
// it is; so is a prefix nested in another one's subjects.
func TestStreamOfAnotherPrefix(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	nc := srv.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// What an earlier version made for beamline-registry: the default prefix's name.
	legacy := jetstream.StreamConfig{Name: "BEAMLINE_REGISTRY_DELTAS", Subjects: []string{"beamline-registry.delta.>"}}
	if _, err := js.CreateStream(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	p, err := publisher.New(nc, publisher.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, check := range []func(context.Context) error{p.CheckStreams, p.EnsureStreams} {
		err = check(ctx)
		if !errors.Is(err, publisher.ErrStreamInUse) {
			t.Fatalf("got %v, want ErrStreamInUse", err)
		}
		for _, want := range []string{"BEAMLINE_REGISTRY_DELTAS", `"beamline-registry"`, `"beamline.registry"`, "EXTENSION_REGISTRY_SUBJECT_PREFIX"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not name %s", err, want)
			}
		}
	}
	s, err := js.Stream(ctx, legacy.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.Subjects; len(got) != 1 || got[0] != legacy.Subjects[0] {
		t.Fatalf("the other prefix's stream was changed: subjects %v", got)
	}

	// Nested prefixes: acme's deltas are acme.delta.>, which holds acme.delta's subjects.
	outer, err := publisher.New(nc, publisher.Config{Prefix: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if err := outer.EnsureStreams(ctx); err != nil {
		t.Fatal(err)
	}
	inner, err := publisher.New(nc, publisher.Config{Prefix: "acme.delta"})
	if err != nil {
		t.Fatal(err)
	}
	err = inner.EnsureStreams(ctx)
	if !errors.Is(err, publisher.ErrStreamInUse) || !strings.Contains(err.Error(), "ACME_DELTAS") || !strings.Contains(err.Error(), `"acme"`) {
		t.Fatalf("nested prefix: got %v, want ErrStreamInUse naming ACME_DELTAS and prefix acme", err)
	}
	d := delta(1, "outer")
	if err := outer.PublishDelta(ctx, d, encode(t, d)); err != nil {
		t.Fatalf("the outer prefix stalled: %v", err)
	}
}
