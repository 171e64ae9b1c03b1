package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
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
