package migrations

import (
	"errors"

	"github.com/jackc/pgx/v5"
)

func pgxConfig(url string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		// Not pgx's message: for a string it cannot parse, it may quote the password.
		return nil, errors.New("parse database URL: not a valid URL or keyword/value connection string (not shown: it may hold a password)")
	}
	return cfg, nil
}
