-- The extension registry: the router project's tables (011_extensions_registry.sql) with
-- the validation the router needs at call time, plus the revision counter, the revision
-- table and the change log that the syncer follows. Every CHECK constraint is named
-- <table>_<column>_<rule> so that a refused write says which column broke which rule.
-- Length limits are CHECK constraints on text columns, not varchar(n): a varchar(n) overflow
-- is raised while the value is coerced, before any constraint, as an anonymous "value too
-- long for type character varying(n)" that names neither the table nor the column.
-- Names fit PostgreSQL's 63-byte identifier limit (a longer one is silently truncated, and
-- the error would then name a constraint that appears nowhere in this file).

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION registry_routing_rules_valid(rules jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_typeof(rules) = 'object' AND NOT EXISTS (
        SELECT 1 FROM jsonb_each(rules) AS r(key, value)
        WHERE NOT (jsonb_typeof(r.value) = 'string'
                   OR (jsonb_typeof(r.value) = 'array'
                       AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(r.value) AS e(v)
                                       WHERE jsonb_typeof(e.v) <> 'string'))))
$$;
-- +goose StatementEnd

-- The actor recorded in created_by/updated_by and the change log: the session setting
-- registry.changed_by when the application sets one, else the database user.
-- +goose StatementBegin
CREATE FUNCTION registry_actor() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('registry.changed_by', true), ''), current_user::text)
$$;
-- +goose StatementEnd

CREATE TABLE extensions (
    id          text         PRIMARY KEY,
    type        text         NOT NULL,
    subject     text         NOT NULL,
    timeout_ms  integer      NOT NULL DEFAULT 5000,
    retry       integer      NOT NULL DEFAULT 0,
    enabled     boolean      NOT NULL DEFAULT true,
    version     text         NOT NULL DEFAULT 'v1',
    config      jsonb        NOT NULL DEFAULT '{}',
    metadata    jsonb        NOT NULL DEFAULT '{}',
    created_at  timestamptz  NOT NULL DEFAULT now(),
    updated_at  timestamptz  NOT NULL DEFAULT now(),
    created_by  text         NOT NULL DEFAULT registry_actor(),
    updated_by  text         NOT NULL DEFAULT registry_actor(),
    CONSTRAINT extensions_id_lowercase_letters_digits_underscore_dash_dot
        -- Not '{1,255}' in the pattern: a bounded repetition makes PostgreSQL's regex engine
        -- far slower per row (measured: a 100,000-row COPY took ~40 s with it, ~2 s without).
        CHECK (id ~ '^[a-z0-9_.-]+$' AND length(id) <= 255),
    CONSTRAINT extensions_type_one_of_pre_validator_post_provider
        CHECK (type IN ('pre', 'validator', 'post', 'provider')),
    CONSTRAINT extensions_subject_nats_subject_without_wildcards_ending_vn
        CHECK (subject ~ '^[^.[:space:]*>]+(\.[^.[:space:]*>]+)*\.v[0-9]+$'),
    CONSTRAINT extensions_subject_at_most_512_chars
        CHECK (length(subject) <= 512),
    CONSTRAINT extensions_timeout_ms_between_10_and_5000
        CHECK (timeout_ms BETWEEN 10 AND 5000),
    CONSTRAINT extensions_retry_between_0_and_3
        CHECK (retry BETWEEN 0 AND 3),
    CONSTRAINT extensions_version_not_empty
        CHECK (version <> ''),
    CONSTRAINT extensions_version_at_most_64_chars
        CHECK (length(version) <= 64),
    CONSTRAINT extensions_config_json_object
        CHECK (jsonb_typeof(config) = 'object'),
    CONSTRAINT extensions_metadata_json_object
        CHECK (jsonb_typeof(metadata) = 'object')
);
CREATE INDEX extensions_type_idx ON extensions (type);

CREATE TABLE extension_versions (
    id            text         NOT NULL REFERENCES extensions (id) ON DELETE CASCADE,
    version       text         NOT NULL,
    subject       text         NOT NULL,
    timeout_ms    integer      NOT NULL DEFAULT 5000,
    retry         integer      NOT NULL DEFAULT 0,
    config        jsonb        NOT NULL DEFAULT '{}',
    metadata      jsonb        NOT NULL DEFAULT '{}',
    routing_rules jsonb        NOT NULL DEFAULT '{}',
    enabled       boolean      NOT NULL DEFAULT true,
    created_at    timestamptz  NOT NULL DEFAULT now(),
    created_by    text         NOT NULL DEFAULT registry_actor(),
    PRIMARY KEY (id, version),
    CONSTRAINT extension_versions_version_not_empty
        CHECK (version <> ''),
    CONSTRAINT extension_versions_version_at_most_64_chars
        CHECK (length(version) <= 64),
    CONSTRAINT extension_versions_subject_nats_subject_without_wildcards_vn
        CHECK (subject ~ '^[^.[:space:]*>]+(\.[^.[:space:]*>]+)*\.v[0-9]+$'),
    CONSTRAINT extension_versions_subject_at_most_512_chars
        CHECK (length(subject) <= 512),
    CONSTRAINT extension_versions_timeout_ms_between_10_and_5000
        CHECK (timeout_ms BETWEEN 10 AND 5000),
    CONSTRAINT extension_versions_retry_between_0_and_3
        CHECK (retry BETWEEN 0 AND 3),
    CONSTRAINT extension_versions_config_json_object
        CHECK (jsonb_typeof(config) = 'object'),
    CONSTRAINT extension_versions_metadata_json_object
        CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT extension_versions_routing_rules_values_strings_or_arrays
        CHECK (registry_routing_rules_valid(routing_rules))
);

CREATE TABLE extension_instances (
    extension_id      text         NOT NULL REFERENCES extensions (id) ON DELETE CASCADE,
    instance_id       text         NOT NULL,
    subject           text         NOT NULL,
    weight            integer      NOT NULL DEFAULT 100,
    enabled           boolean      NOT NULL DEFAULT true,
    health_status     text         NOT NULL DEFAULT 'unknown',
    last_health_check timestamptz,
    created_at        timestamptz  NOT NULL DEFAULT now(),
    updated_at        timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (extension_id, instance_id),
    CONSTRAINT extension_instances_instance_id_not_empty
        CHECK (instance_id <> ''),
    CONSTRAINT extension_instances_instance_id_at_most_255_chars
        CHECK (length(instance_id) <= 255),
    CONSTRAINT extension_instances_subject_nats_subject_without_wildcards
        CHECK (subject ~ '^[^.[:space:]*>]+(\.[^.[:space:]*>]+)*$'),
    CONSTRAINT extension_instances_subject_at_most_512_chars
        CHECK (length(subject) <= 512),
    CONSTRAINT extension_instances_weight_between_0_and_100
        CHECK (weight BETWEEN 0 AND 100),
    CONSTRAINT extension_instances_health_healthy_degraded_unhealthy_unknown
        CHECK (health_status IN ('healthy', 'degraded', 'unhealthy', 'unknown'))
);

-- High-churn health counters: not snapshot data, so no revision and no change log.
CREATE TABLE extension_health (
    extension_id                 text    PRIMARY KEY REFERENCES extensions (id) ON DELETE CASCADE,
    last_success                 timestamptz,
    last_failure                 timestamptz,
    success_count                bigint  NOT NULL DEFAULT 0,
    failure_count                bigint  NOT NULL DEFAULT 0,
    avg_latency_ms               double precision,
    p50_latency_ms               double precision,
    p95_latency_ms               double precision,
    p99_latency_ms               double precision,
    circuit_breaker_state        text    NOT NULL DEFAULT 'closed',
    opened_at                    timestamptz,
    failure_threshold            integer NOT NULL DEFAULT 5,
    error_rate_threshold         double precision NOT NULL DEFAULT 0.5,
    window_seconds               integer NOT NULL DEFAULT 60,
    half_open_max_requests       integer NOT NULL DEFAULT 3,
    updated_at                   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT extension_health_circuit_breaker_state_closed_open_half_open
        CHECK (circuit_breaker_state IN ('closed', 'open', 'half_open'))
);

-- The change log: every row change of a registry table, written by the triggers (triggers/).
-- No foreign key to extensions: the trail must outlive the extension it describes.
-- Rows are grouped by the writing transaction (xid); registry_revisions maps a committed
-- transaction to its revision, so the revision of a change is a join away (registry_change_log).
CREATE TABLE extension_audit_log (
    seq          bigserial    PRIMARY KEY,
    xid          xid8         NOT NULL DEFAULT pg_current_xact_id(),
    extension_id text         NOT NULL,
    entity       text         NOT NULL,
    entity_key   text,
    action       text         NOT NULL,
    old_values   jsonb,
    new_values   jsonb,
    changed_by   text         NOT NULL DEFAULT registry_actor(),
    changed_at   timestamptz  NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT extension_audit_log_entity_extension_version_instance_aggregate
        CHECK (entity IN ('extension', 'version', 'instance', 'aggregate')),
    CONSTRAINT extension_audit_log_action_create_update_delete_toggle_sync
        CHECK (action IN ('create', 'update', 'delete', 'enable', 'disable', 'sync'))
);
CREATE INDEX extension_audit_log_xid_idx ON extension_audit_log (xid);
CREATE INDEX extension_audit_log_extension_idx ON extension_audit_log (extension_id, seq);

-- One row: the last assigned revision. Taking the next revision locks this row until the
-- transaction ends, which is what orders revisions by commit (see triggers/triggers.sql).
CREATE TABLE registry_counter (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    revision  bigint  NOT NULL
);
INSERT INTO registry_counter (singleton, revision) VALUES (true, 0);

-- One row per committed registry transaction.
CREATE TABLE registry_revisions (
    revision     bigint      PRIMARY KEY,
    xid          xid8        NOT NULL UNIQUE,
    committed_at timestamptz NOT NULL,
    changed_by   text        NOT NULL,
    changes      integer     NOT NULL
);

-- Transactions that changed registry data and have not committed yet (normally empty:
-- the commit-time trigger deletes its own row).
CREATE TABLE registry_pending (
    xid xid8 PRIMARY KEY
);

CREATE VIEW registry_change_log AS
SELECT r.revision, r.committed_at, a.seq, a.extension_id, a.entity, a.entity_key, a.action,
       a.old_values, a.new_values, a.changed_by, a.changed_at
FROM registry_revisions r
JOIN extension_audit_log a ON a.xid = r.xid;

-- +goose Down
DROP VIEW registry_change_log;
DROP TABLE registry_pending, registry_revisions, registry_counter, extension_audit_log,
    extension_health, extension_instances, extension_versions, extensions;
DROP FUNCTION registry_actor();
DROP FUNCTION registry_routing_rules_valid(jsonb);
