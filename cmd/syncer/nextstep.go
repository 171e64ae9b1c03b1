package main

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// nextStep says what to do about an error a command failed with, when the error alone
// does not ("" when there is nothing to add).
func nextStep(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "42P01", "42883": // undefined_table, undefined_function: a schema not migrated (or an older one)
			return "the registry tables are missing from this schema (or older than this binary): run `syncer migrate` first (`syncer migrate status` lists what is applied), or check EXTENSION_REGISTRY_DB_SCHEMA / the search_path of EXTENSION_REGISTRY_DATABASE_URL"
		case "3F000": // invalid_schema_name
			return "the schema does not exist: run `syncer migrate` (it creates the schema named by EXTENSION_REGISTRY_DB_SCHEMA)"
		}
	}
	return ""
}
