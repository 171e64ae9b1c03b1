package signingkey_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/signingkey"
	"github.com/beamline/registry-syncer/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.MainPostgres(m, harness.PGOptions{})) }

func TestFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "signing.nk")
	s, err := signingkey.WriteFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := signingkey.WriteFile(path); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("overwrote the key file: %v", err)
	}
	r, err := signingkey.ReadFile(path)
	if err != nil || r.PublicKey() != s.PublicKey() || !strings.HasPrefix(s.PublicKey(), "U") {
		t.Fatalf("read back %v: %v", r, err)
	}

	// Not a user seed: refused, and the content is not in the error.
	for name, content := range map[string]string{
		"garbage":      "not a seed at all",
		"account seed": "SAAGNJOZTRPYYXG2NJX3ZNGXYUSDYX2BWO447W3SHG6XQ7U66RWHQ3JUXM",
		"public key":   s.PublicKey(),
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := signingkey.ReadFile(p)
		if err == nil {
			t.Errorf("%s accepted", name)
			continue
		}
		if strings.Contains(err.Error(), content) {
			t.Errorf("%s: the error shows the file's content: %v", name, err)
		}
	}
	if _, err := signingkey.ReadFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file accepted")
	}
}

// Syncers that start at once generate a key each; they all end with the one stored.
func TestFromDatabaseOneKey(t *testing.T) {
	t.Parallel()
	pg := harness.PG(t)
	schema := pg.NewSchema(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	const n = 8
	keys := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, _, err := signingkey.FromDatabase(ctx, schema.Pool, nil)
			errs[i] = err
			if s != nil {
				keys[i] = s.PublicKey()
			}
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || keys[i] != keys[0] {
			t.Fatalf("syncer %d: key %s, error %v; syncer 0: %s", i, keys[i], errs[i], keys[0])
		}
	}
	again, _, err := signingkey.FromDatabase(ctx, schema.Pool, nil)
	if err != nil || again.PublicKey() != keys[0] {
		t.Fatalf("later start: %v %v", again, err)
	}
	var rows int
	if err := schema.Pool.QueryRow(ctx, `SELECT count(*) FROM registry_signing_key`).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("%d rows: %v", rows, err)
	}

	// Nobody but the owner (the syncer's role) can read the seed.
	role := fmt.Sprintf("regsk_%d", os.Getpid())
	if err := pg.Exec(ctx, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Exec(context.Background(), "DROP ROLE "+pgx.Identifier{role}.Sanitize()) })
	table := schema.Name + ".registry_signing_key"
	for _, who := range []string{"public", role} {
		var can bool
		if err := schema.Pool.QueryRow(ctx, `SELECT has_table_privilege($1, $2, 'SELECT')`, who, table).Scan(&can); err != nil {
			t.Fatal(err)
		}
		if can {
			t.Errorf("%s can read %s", who, table)
		}
	}
}
