package syncer

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/cache"
)

// ReadDatabase exposes the consistent full read to the tests.
// Aggregates that do not validate are left out, as the syncer withholds them.
func ReadDatabase(ctx context.Context, pool *pgxpool.Pool) (*cache.Snapshot, error) {
	r, err := readConsistent(ctx, pool)
	return r.Snapshot, err
}
