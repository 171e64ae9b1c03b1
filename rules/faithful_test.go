package rules_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestRoutersGetWhatTheDatabaseHolds: config and metadata the database accepts reach a
// router (a snapshot built from the rows, encoded, decoded as a router does) as the
// canonical encoding of exactly the value the database holds: PostgreSQL finds the
// router's Lookup().Config equal to the stored jsonb (numbers compared as exact
// decimals), and the canonical encoding of that config is the config itself.
func TestRoutersGetWhatTheDatabaseHolds(t *testing.T) {
	t.Parallel()
	s := harness.PG(t).NewSchema(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	rng := rand.New(rand.NewPCG(3, 4))
	configs := []string{
		`{}`,
		`{"big":12345678901234567000,"n":[0.1,1.0,1e2,-0,1.5e-7,5e-324,1.7976931348623157e308,9007199254740992,1738381126998224000]}`,
		`{"z":1,"a":{"y":[true,false,null],"b":"\u0001\n\"\\é😀\u2028"},"é":{},"":[]}`,
		`{"deep":` + strings.Repeat("[", 255) + strings.Repeat("]", 255) + `}`,
	}
	for range 40 {
		var nums []string
		for range 20 {
			f := math.Float64frombits(rng.Uint64() &^ (1 << 63))
			if math.IsInf(f, 0) || math.IsNaN(f) {
				continue
			}
			format := []byte{'e', 'f', 'g'}[rng.IntN(3)]
			lit := strconv.FormatFloat(f, format, -1, 64)
			if format == 'f' && len(lit) > 400 {
				lit = strconv.FormatFloat(f, 'e', -1, 64)
			}
			nums = append(nums, lit)
		}
		configs = append(configs, `{"n":[`+strings.Join(nums, ",")+`]}`)
	}
	for i, c := range configs {
		if _, err := s.Pool.Exec(ctx, `INSERT INTO extensions (id, type, subject, config, metadata) VALUES ($1, 'pre', 'beamline.ext.pre.x.v1', $2::text::jsonb, $2::text::jsonb)`,
			fmt.Sprintf("e%03d", i), c); err != nil {
			t.Fatalf("config %d %s: %v", i, c, err)
		}
	}

	// The rows as the syncer reads them, into a snapshot, over the wire to a router.
	rows, err := s.Pool.Query(ctx, `SELECT id, type, subject, timeout_ms, retry, enabled, version, config, metadata FROM extensions ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var exts []cache.Extension
	for rows.Next() {
		var e cache.Extension
		var conf, meta []byte
		if err := rows.Scan(&e.ID, &e.Type, &e.Subject, &e.TimeoutMS, &e.Retry, &e.Enabled, &e.Version, &conf, &meta); err != nil {
			t.Fatal(err)
		}
		e.Config, e.Metadata = conf, meta
		exts = append(exts, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	snap, err := cache.New(1, "database", exts)
	if err != nil {
		t.Fatalf("the router side refuses what the database holds: %v", err)
	}
	wire, err := snap.Encode()
	if err != nil {
		t.Fatal(err)
	}
	router, err := cache.Decode(wire)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range exts {
		got, ok := router.Lookup(e.ID)
		if !ok {
			t.Fatalf("%s missing at the router", e.ID)
		}
		for name, raw := range map[string]json.RawMessage{"config": got.Config, "metadata": got.Metadata} {
			var equal bool
			if err := s.Pool.QueryRow(ctx, `SELECT $1::text::jsonb = `+name+` FROM extensions WHERE id = $2`, string(raw), e.ID).Scan(&equal); err != nil {
				t.Fatal(err)
			}
			if !equal {
				var held string
				_ = s.Pool.QueryRow(ctx, `SELECT `+name+`::text FROM extensions WHERE id = $1`, e.ID).Scan(&held)
				t.Errorf("%s %s: the router has %s, the database %s", e.ID, name, raw, held)
			}
			c, err := cache.Canonical(got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(c, append([]byte(`"`+name+`":`), raw...)) {
				t.Errorf("%s %s: %s is not canonical", e.ID, name, raw)
			}
		}
	}

	// A number a double cannot carry is refused, so an update between two of them (which
	// reached no router: both rounded to one double) cannot happen.
	for _, v := range []string{`12345678901234567891`, `12345678901234567892`} {
		_, err := s.Pool.Exec(ctx, `UPDATE extensions SET config = jsonb_build_object('big', $1::numeric) WHERE id = 'e000'`, v)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.ConstraintName != "extensions_config_numbers_round_trip_doubles" {
			t.Errorf("config %s: %v, want extensions_config_numbers_round_trip_doubles", v, err)
		}
	}
}
