package syncer

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/cache"
)

// ReadDatabase exposes the consistent full read to the tests.
func ReadDatabase(ctx context.Context, pool *pgxpool.Pool) (*cache.Snapshot, error) {
	return readConsistent(ctx, pool)
}
