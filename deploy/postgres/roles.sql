-- Least-privilege roles for the registry (OPERATIONS.md "Database roles").
--
-- Run as the owner of the registry schema (the role that runs `syncer migrate`), with
-- search_path set to that schema, after every `syncer migrate` that adds a table. The
-- three roles must exist (CREATE ROLE registry_syncer LOGIN PASSWORD '…'; and so on):
--
--   registry_syncer    `syncer run`: reads the registry and the change log, holds the
--                      leadership lease, keeps the signing key, writes extension health,
--                      and (automatic management) auto_disabled and instance health_status;
--   registry_operator  `syncer ext`, `rollback`, `fixtures import`, SQL writes of the
--                      registry (the triggers run with the writer's rights: writers append
--                      to the change log and take revisions);
--   registry_reader    `syncer history`, `diff`, `fixtures export|verify`, `ext list|show`.
--
-- The signing key table (registry_signing_key) is readable by its owner and the syncer
-- only.

DO $$ BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO registry_syncer, registry_operator, registry_reader', current_schema());
END $$;

-- Everyone reads the registry and its history.
GRANT SELECT ON extensions, extension_versions, extension_instances, extension_health, extension_instance_health,
    extension_audit_log, registry_revisions, registry_counter, registry_identity
    TO registry_syncer, registry_operator, registry_reader;

-- What every writer of registry rows needs: the triggers append to the change log, register
-- the transaction and take its revision at commit.
GRANT INSERT ON extension_audit_log, registry_revisions TO registry_syncer, registry_operator;
GRANT USAGE ON SEQUENCE extension_audit_log_seq_seq TO registry_syncer, registry_operator;
GRANT SELECT, INSERT, DELETE ON registry_pending TO registry_syncer, registry_operator;
GRANT UPDATE ON registry_counter TO registry_syncer, registry_operator;

-- The operator writes the registry (and the extension_health settings).
GRANT INSERT, UPDATE, DELETE ON extensions, extension_versions, extension_instances TO registry_operator;
GRANT INSERT, UPDATE ON extension_health TO registry_operator;

-- The syncer: the lease, the signing key, health, automatic management.
GRANT SELECT, INSERT, UPDATE ON registry_leader TO registry_syncer;
GRANT SELECT, INSERT ON registry_signing_key TO registry_syncer;
GRANT INSERT, UPDATE ON extension_health TO registry_syncer;
GRANT INSERT, UPDATE, DELETE ON extension_instance_health TO registry_syncer;
GRANT UPDATE (auto_disabled) ON extensions TO registry_syncer;
-- The extensions UPDATE trigger's statement that keeps a previous definition when an
-- extension's version changes runs on every update (inserting nothing for the syncer's):
-- PostgreSQL checks INSERT on extension_versions all the same.
GRANT INSERT ON extension_versions TO registry_syncer;
GRANT UPDATE (health_status, last_health_check) ON extension_instances TO registry_syncer;
