package main

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/changelog"
	"github.com/beamline/registry-syncer/syncer"
)

// pageHistory reads the change log for the status page at GET / (recent revisions, their
// authors and changed extensions) through a pool of its own, at most two connections,
// opened on the first request. nil without a database (source fixtures). Call the
// returned func to close the pool.
func pageHistory(cfg *config) (func(ctx context.Context, limit int) ([]changelog.Entry, error), func()) {
	if cfg.Syncer.Source == syncer.SourceFixtures {
		return nil, func() {}
	}
	pc, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return func(context.Context, int) ([]changelog.Entry, error) {
			return nil, errors.New(envPrefix + "_DATABASE_URL cannot be parsed")
		}, func() {}
	}
	pc.MaxConns = 2
	pc.ConnConfig.RuntimeParams["application_name"] = "registry-syncer-status-page"
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return func(context.Context, int) ([]changelog.Entry, error) { return nil, err }, func() {}
	}
	return func(ctx context.Context, limit int) ([]changelog.Entry, error) {
		return changelog.History(ctx, pool, changelog.HistoryFilter{Limit: limit})
	}, pool.Close
}
