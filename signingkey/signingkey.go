// Package signingkey owns the syncer's signing key: an NKey seed file
// (EXTENSION_REGISTRY_SIGNING_KEY, written by `syncer keygen`), or else a seed generated
// once and kept in the registry database (table registry_signing_key), so that every
// syncer of one registry, standbys included, signs with the same key.
package signingkey

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/beamline/registry-syncer/protocol"
)

// ReadFile reads the seed file at path. Errors name the file, never its content.
func ReadFile(path string) (*protocol.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	s, err := protocol.NewSigner(bytes.TrimSpace(data))
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	return s, nil
}

// WriteFile generates a new key and writes its seed to path (mode 0600), refusing to
// overwrite an existing file. It returns the signer.
func WriteFile(path string) (*protocol.Signer, error) {
	s, seed, err := protocol.GenerateSigner()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%s already exists: not overwriting a key", path)
		}
		return nil, fmt.Errorf("write signing key: %w", err)
	}
	if _, err := f.Write(append(seed, '\n')); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return nil, fmt.Errorf("write signing key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("write signing key %s: %w", path, err)
	}
	return s, nil
}

// Querier is what FromDatabase needs of a pool or connection.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// FromDatabase returns the registry's stored key and its seed, storing one first when
// there is none: offer (a seed the caller already signs with: while it served fixtures,
// or before the database was re-created), or else a new one. Two syncers storing at once
// end with the one key that was inserted first. The seed never appears in an error.
func FromDatabase(ctx context.Context, db Querier, offer []byte) (*protocol.Signer, []byte, error) {
	var (
		fresh *protocol.Signer
		seed  = offer
		err   error
	)
	if seed == nil {
		fresh, seed, err = protocol.GenerateSigner()
	} else {
		fresh, err = protocol.NewSigner(seed)
	}
	if err != nil {
		return nil, nil, err
	}
	if _, err := db.Exec(ctx, `INSERT INTO registry_signing_key (seed, public_key) VALUES ($1, $2)
		ON CONFLICT (singleton) DO NOTHING`, string(seed), fresh.PublicKey()); err != nil {
		return nil, nil, fmt.Errorf("store the generated signing key in registry_signing_key (does the syncer's role have INSERT on it? see migrations/00004_signing_key.sql): %w", err)
	}
	var stored, pub string
	if err := db.QueryRow(ctx, `SELECT seed, public_key FROM registry_signing_key`).Scan(&stored, &pub); err != nil {
		return nil, nil, fmt.Errorf("read the signing key from registry_signing_key: %w", err)
	}
	s, err := protocol.NewSigner([]byte(stored))
	if err != nil {
		return nil, nil, fmt.Errorf("registry_signing_key: %w", err)
	}
	if s.PublicKey() != pub {
		return nil, nil, fmt.Errorf("registry_signing_key: the seed's public key is %s, the row says %s", s.PublicKey(), pub)
	}
	return s, []byte(stored), nil
}
