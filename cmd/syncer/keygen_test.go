package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/beamline/registry-syncer/test/harness"
)

func TestKeygen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "signing.nk")
	r := runCLI(t, context.Background(), envMap{}, "keygen", path)
	pub := strings.TrimSpace(r.stdout)
	if r.code != exitOK || !nkeys.IsValidPublicUserKey(pub) {
		t.Fatalf("exit %d, printed %q", r.code, r.stdout)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("seed file: %v %v", st, err)
	}
	seed, _ := os.ReadFile(path)
	if strings.Contains(r.stdout+r.stderr, strings.TrimSpace(string(seed))) {
		t.Fatal("keygen printed the seed")
	}
	// Never overwritten.
	again := runCLI(t, context.Background(), envMap{}, "keygen", path)
	if again.code != exitError || !strings.Contains(again.stderr, "already exists") {
		t.Fatalf("second keygen: exit %d: %s", again.code, again.stderr)
	}
	if now, _ := os.ReadFile(path); string(now) != string(seed) {
		t.Fatal("the key file changed")
	}
	if r := runCLI(t, context.Background(), envMap{}, "keygen"); r.code != exitUsage {
		t.Fatalf("keygen without FILE: exit %d", r.code)
	}

	// The seed file configures the syncer; its public key is the signer's.
	cfg, err := loadConfig(envMap{"EXTENSION_REGISTRY_SIGNING_KEY": path, "EXTENSION_REGISTRY_TRUSTED_KEYS": pub + ", " + pub}.lookup)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Publisher.Signer == nil || cfg.Publisher.Signer.PublicKey() != pub || len(cfg.TrustedKeys) != 2 {
		t.Fatalf("signer %v, trusted %v", cfg.Publisher.Signer, cfg.TrustedKeys)
	}
}

func TestSigningConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	account, _ := nkeys.CreateAccount()
	accountSeed, _ := account.Seed()
	pubFile := filepath.Join(dir, "public")
	accountFile := filepath.Join(dir, "account")
	if err := os.WriteFile(accountFile, accountSeed, 0o600); err != nil {
		t.Fatal(err)
	}
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()
	if err := os.WriteFile(pubFile, []byte(userPub), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		env    envMap
		want   string
		secret string
	}{
		{envMap{"EXTENSION_REGISTRY_SIGNING_KEY": filepath.Join(dir, "missing")}, "EXTENSION_REGISTRY_SIGNING_KEY: no such file", ""},
		{envMap{"EXTENSION_REGISTRY_SIGNING_KEY": dir}, "EXTENSION_REGISTRY_SIGNING_KEY: is a directory", ""},
		{envMap{"EXTENSION_REGISTRY_SIGNING_KEY": accountFile}, "EXTENSION_REGISTRY_SIGNING_KEY: must be a file holding an NKey user seed", string(accountSeed)},
		{envMap{"EXTENSION_REGISTRY_SIGNING_KEY": pubFile}, "EXTENSION_REGISTRY_SIGNING_KEY: must be a file holding an NKey user seed", ""},
		{envMap{"EXTENSION_REGISTRY_TRUSTED_KEYS": "Uxyz"}, "EXTENSION_REGISTRY_TRUSTED_KEYS: must be comma-separated public NKey user keys", ""},
		{envMap{"EXTENSION_REGISTRY_TRUSTED_KEYS": userPub + "," + string(accountSeed)}, "EXTENSION_REGISTRY_TRUSTED_KEYS: must be", string(accountSeed)},
	} {
		_, err := loadConfig(tt.env.lookup)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want %q", tt.env, err, tt.want)
			continue
		}
		if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
			t.Errorf("the error shows the seed: %v", err)
		}
	}
}

// TestRunWithSigningKeyFile: the daemon signs with the configured seed (never logged,
// never stored in the database); syncer watch bootstraps trusting that key, or on first
// use, and refuses a registry signed by another key.
func TestRunWithSigningKeyFile(t *testing.T) {
	t.Parallel()
	schema := harness.PG(t).NewSchema(t)
	srv := harness.NewNATS(t, harness.NATSOptions{})
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "signing.nk")
	r := runCLI(t, context.Background(), envMap{}, "keygen", keyFile)
	pub := strings.TrimSpace(r.stdout)
	seed, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	env := envMap{
		"EXTENSION_REGISTRY_DATABASE_URL":       schema.URL,
		"EXTENSION_REGISTRY_NATS_URL":           srv.URL(),
		"EXTENSION_REGISTRY_HTTP_ADDR":          "127.0.0.1:0",
		"EXTENSION_REGISTRY_SUBJECT_PREFIX":     "test.signed",
		"EXTENSION_REGISTRY_HEARTBEAT_INTERVAL": "100ms",
		"EXTENSION_REGISTRY_SNAPSHOT_INTERVAL":  "20ms",
		"EXTENSION_REGISTRY_LEADER_RETRY":       "50ms",
		"EXTENSION_REGISTRY_LOG_FORMAT":         "json",
		"EXTENSION_REGISTRY_LOG_LEVEL":          "debug",
		"EXTENSION_REGISTRY_SIGNING_KEY":        keyFile,
	}
	d := startDaemon(t, "signed", env)
	waitReady(t, d.base)

	watch := func(trusted string) result {
		t.Helper()
		e := envMap{"EXTENSION_REGISTRY_NATS_URL": srv.URL(), "EXTENSION_REGISTRY_SUBJECT_PREFIX": "test.signed"}
		if trusted != "" {
			e["EXTENSION_REGISTRY_TRUSTED_KEYS"] = trusted
		}
		return runCLI(t, context.Background(), e, "watch", "--dump", "--once", "--timeout", "3s")
	}
	other, _ := nkeys.CreateUser()
	otherPub, _ := other.PublicKey()
	if r := watch(pub); r.code != exitOK || !strings.Contains(r.stdout, `"revision"`) {
		t.Errorf("watch trusting the configured key: exit %d", r.code)
	}
	if r := watch(otherPub + "," + pub); r.code != exitOK {
		t.Errorf("watch trusting two keys (a rotation): exit %d", r.code)
	}
	if r := watch(""); r.code != exitOK {
		t.Errorf("watch trusting on first use: exit %d", r.code)
	}
	if r := watch(otherPub); r.code != exitError || !strings.Contains(r.stderr, "untrusted key") {
		t.Errorf("watch trusting another key: exit %d, stderr lacks the rejection", r.code)
	}
	var rows int
	if err := schema.Pool.QueryRow(context.Background(), `SELECT count(*) FROM registry_signing_key`).Scan(&rows); err != nil || rows != 0 {
		t.Errorf("%d keys stored in the database with a key file configured: %v", rows, err)
	}
	_, log := d.stop(t)
	if strings.Contains(log, strings.TrimSpace(string(seed))) {
		t.Error("the daemon logged its seed")
	}
}
