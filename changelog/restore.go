package changelog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/cache"
)

// Current reads extension id's aggregate from the tables (nil: no such extension).
func Current(ctx context.Context, q Querier, id string) (*cache.Extension, error) {
	var e cache.Extension
	var cfg, md []byte
	err := q.QueryRow(ctx, `SELECT id, type, subject, timeout_ms, retry, enabled, version, config, metadata, auto_disabled FROM extensions WHERE id = $1`, id).
		Scan(&e.ID, &e.Type, &e.Subject, &e.TimeoutMS, &e.Retry, &e.Enabled, &e.Version, &cfg, &md, &e.AutoDisabled)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read extension %q: %w", id, err)
	}
	e.Config, e.Metadata = cfg, md
	rows, err := q.Query(ctx, `SELECT version, subject, timeout_ms, retry, enabled, config, metadata, routing_rules FROM extension_versions WHERE id = $1 ORDER BY version`, id)
	if err != nil {
		return nil, fmt.Errorf("read the versions of %q: %w", id, err)
	}
	for rows.Next() {
		var v cache.Version
		var c, m, rr []byte
		if err := rows.Scan(&v.Version, &v.Subject, &v.TimeoutMS, &v.Retry, &v.Enabled, &c, &m, &rr); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read the versions of %q: %w", id, err)
		}
		v.Config, v.Metadata, v.RoutingRules = c, m, rr
		e.Versions = append(e.Versions, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the versions of %q: %w", id, err)
	}
	rows, err = q.Query(ctx, `SELECT instance_id, subject, weight, enabled, health_status FROM extension_instances WHERE extension_id = $1 ORDER BY instance_id`, id)
	if err != nil {
		return nil, fmt.Errorf("read the instances of %q: %w", id, err)
	}
	for rows.Next() {
		var in cache.Instance
		if err := rows.Scan(&in.InstanceID, &in.Subject, &in.Weight, &in.Enabled, &in.HealthStatus); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read the instances of %q: %w", id, err)
		}
		e.Instances = append(e.Instances, in)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the instances of %q: %w", id, err)
	}
	normalizeAggregate(&e)
	return &e, nil
}

// Restore makes extension id's aggregate in the tables equal to target (nil: delete it),
// in tx, through ordinary writes: the triggers log every row it changes and the commit
// gets a revision like any other. Rows already as target wants are not touched.
func Restore(ctx context.Context, tx pgx.Tx, id string, target *cache.Extension) error {
	if target == nil {
		_, err := tx.Exec(ctx, `DELETE FROM extensions WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("delete extension %q: %w", id, err)
		}
		return nil
	}
	if target.ID != id {
		return fmt.Errorf("restore %q: the target aggregate is %q", id, target.ID)
	}
	_, err := tx.Exec(ctx, `
		INSERT INTO extensions (id, type, subject, timeout_ms, retry, enabled, version, config, metadata)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (id) DO UPDATE SET type = excluded.type, subject = excluded.subject, timeout_ms = excluded.timeout_ms,
			retry = excluded.retry, enabled = excluded.enabled, version = excluded.version, config = excluded.config,
			metadata = excluded.metadata, updated_at = now(), updated_by = registry_actor()
		WHERE (extensions.type, extensions.subject, extensions.timeout_ms, extensions.retry, extensions.enabled,
		       extensions.version, extensions.config, extensions.metadata)
		   IS DISTINCT FROM (excluded.type, excluded.subject, excluded.timeout_ms, excluded.retry, excluded.enabled,
		       excluded.version, excluded.config, excluded.metadata)`,
		id, target.Type, target.Subject, target.TimeoutMS, target.Retry, target.Enabled, target.Version,
		jsonArg(target.Config), jsonArg(target.Metadata))
	if err != nil {
		return fmt.Errorf("restore extension %q: %w", id, err)
	}
	// auto_disabled is the syncer's (migration 00008): an operator's write can end it (an
	// explicit enable, which also turns the extension's automatic management off) but
	// never set it.
	if !target.AutoDisabled {
		if _, err := tx.Exec(ctx, `UPDATE extensions SET auto_disabled = false WHERE id = $1 AND auto_disabled`, id); err != nil {
			return fmt.Errorf("restore extension %q: clear auto_disabled: %w", id, err)
		}
	}
	keepV := make([]string, 0, len(target.Versions))
	for _, v := range target.Versions {
		keepV = append(keepV, v.Version)
		_, err := tx.Exec(ctx, `
			INSERT INTO extension_versions (id, version, subject, timeout_ms, retry, enabled, config, metadata, routing_rules)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
			ON CONFLICT (id, version) DO UPDATE SET subject = excluded.subject, timeout_ms = excluded.timeout_ms,
				retry = excluded.retry, enabled = excluded.enabled, config = excluded.config, metadata = excluded.metadata,
				routing_rules = excluded.routing_rules
			WHERE (extension_versions.subject, extension_versions.timeout_ms, extension_versions.retry, extension_versions.enabled,
			       extension_versions.config, extension_versions.metadata, extension_versions.routing_rules)
			   IS DISTINCT FROM (excluded.subject, excluded.timeout_ms, excluded.retry, excluded.enabled,
			       excluded.config, excluded.metadata, excluded.routing_rules)`,
			id, v.Version, v.Subject, v.TimeoutMS, v.Retry, v.Enabled, jsonArg(v.Config), jsonArg(v.Metadata), jsonArg(v.RoutingRules))
		if err != nil {
			return fmt.Errorf("restore version %q of %q: %w", v.Version, id, err)
		}
	}
	if _, err := tx.Exec(ctx, `DELETE FROM extension_versions WHERE id = $1 AND NOT (version = ANY($2))`, id, keepV); err != nil {
		return fmt.Errorf("remove versions of %q: %w", id, err)
	}
	keepI := make([]string, 0, len(target.Instances))
	for _, in := range target.Instances {
		keepI = append(keepI, in.InstanceID)
		_, err := tx.Exec(ctx, `
			INSERT INTO extension_instances (extension_id, instance_id, subject, weight, enabled, health_status)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (extension_id, instance_id) DO UPDATE SET subject = excluded.subject, weight = excluded.weight,
				enabled = excluded.enabled, health_status = excluded.health_status
			WHERE (extension_instances.subject, extension_instances.weight, extension_instances.enabled, extension_instances.health_status)
			   IS DISTINCT FROM (excluded.subject, excluded.weight, excluded.enabled, excluded.health_status)`,
			id, in.InstanceID, in.Subject, in.Weight, in.Enabled, in.HealthStatus)
		if err != nil {
			return fmt.Errorf("restore instance %q of %q: %w", in.InstanceID, id, err)
		}
	}
	if _, err := tx.Exec(ctx, `DELETE FROM extension_instances WHERE extension_id = $1 AND NOT (instance_id = ANY($2))`, id, keepI); err != nil {
		return fmt.Errorf("remove instances of %q: %w", id, err)
	}
	return nil
}

// jsonArg passes a JSON document as text (PostgreSQL casts it to jsonb); empty is {}.
func jsonArg(raw []byte) string {
	if len(raw) == 0 || string(raw) == "null" {
		return "{}"
	}
	return string(raw)
}
