-- Registry triggers: one revision per transaction, in commit order; the change log; one
-- NOTIFY per transaction carrying only the revision.
--
-- Why revisions follow commit order (invariant 1)
-- ------------------------------------------------
-- Statement-level AFTER triggers append every changed row to extension_audit_log (tagged
-- with the transaction id) and register the transaction once in registry_pending. The row
-- in registry_pending fires a DEFERRABLE INITIALLY DEFERRED constraint trigger, so
-- registry_commit() runs exactly once per transaction, at COMMIT, after every statement
-- of the transaction. registry_commit() increments the single row of registry_counter.
-- That UPDATE takes the row lock and keeps it until the transaction has fully committed
-- (PostgreSQL releases row locks after the commit record is written and the transaction
-- is visible to new snapshots). A second committer therefore blocks on the row until the
-- first is visible, then reads the new value and takes the next number. So:
--   * revision N+1 is assigned only after the transaction holding N is committed and
--     visible: anyone who can see N+1 can see N (no observable holes, no reordering);
--   * a transaction that rolls back (also after taking a number) rolls the counter back
--     with it, so aborted transactions leave no gap;
--   * the lock is held only from the start of COMMIT to its end, not for the whole
--     transaction, so writers still run concurrently until they commit.
-- Writers must use READ COMMITTED (the default): under REPEATABLE READ or SERIALIZABLE the
-- counter UPDATE of a concurrent committer raises a serialization failure, which the
-- application has to retry, as for any other serialization failure.
--
-- Writes that bypass triggers (session_replication_role = replica, as pg_restore and
-- logical replication apply do) change tables without a revision or a change-log entry.
-- The syncer's periodic reconcile reads the whole registry at one revision, compares it
-- with what it published and repairs any difference under a new revision by calling
-- registry_sync(), which writes 'sync' entries for the drifted extensions.

CREATE FUNCTION registry_channel() RETURNS text
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT left(current_schema() || '.registry_revision', 63)
$$;

-- Registers the current transaction for a revision (once per transaction).
CREATE FUNCTION registry_mark_pending() RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    x xid8 := pg_current_xact_id();
BEGIN
    IF current_setting('registry.pending_xid', true) IS DISTINCT FROM x::text THEN
        INSERT INTO registry_pending (xid) VALUES (x) ON CONFLICT DO NOTHING;
        PERFORM set_config('registry.pending_xid', x::text, true);
    END IF;
END
$$;

-- Runs at COMMIT (deferred), once per registry transaction: takes the next revision.
CREATE FUNCTION registry_commit() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    rev bigint;
    n   integer;
BEGIN
    DELETE FROM registry_pending WHERE xid = NEW.xid;
    SELECT count(*) INTO n FROM extension_audit_log WHERE xid = NEW.xid;
    UPDATE registry_counter SET revision = revision + 1 RETURNING revision INTO rev;
    INSERT INTO registry_revisions (revision, xid, committed_at, changed_by, changes)
    VALUES (rev, NEW.xid, clock_timestamp(), registry_actor(), n);
    PERFORM pg_notify(registry_channel(), rev::text);
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER registry_commit
    AFTER INSERT ON registry_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION registry_commit();

-- BEFORE UPDATE row triggers: keys are immutable (delete and insert instead), and
-- updated_at/updated_by move only when the content really changes.
-- Like every function here they pin the search_path (registry_actor() is unqualified), so
-- a client whose search_path does not include the registry schema can still write
-- schema.extensions.
CREATE FUNCTION registry_extensions_touch() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'extensions.id cannot be changed (% -> %): delete the extension and insert it under the new id', OLD.id, NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW IS DISTINCT FROM OLD AND NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
        IF NEW.updated_by IS NOT DISTINCT FROM OLD.updated_by THEN
            NEW.updated_by := registry_actor();
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER registry_extensions_touch BEFORE UPDATE ON extensions
    FOR EACH ROW EXECUTE FUNCTION registry_extensions_touch();

CREATE FUNCTION registry_versions_touch() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.version IS DISTINCT FROM OLD.version THEN
        RAISE EXCEPTION 'extension_versions.(id, version) cannot be changed (%/% -> %/%): delete the row and insert it', OLD.id, OLD.version, NEW.id, NEW.version
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER registry_versions_touch BEFORE UPDATE ON extension_versions
    FOR EACH ROW EXECUTE FUNCTION registry_versions_touch();

CREATE FUNCTION registry_instances_touch() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.extension_id IS DISTINCT FROM OLD.extension_id OR NEW.instance_id IS DISTINCT FROM OLD.instance_id THEN
        RAISE EXCEPTION 'extension_instances.(extension_id, instance_id) cannot be changed (%/% -> %/%): delete the row and insert it', OLD.extension_id, OLD.instance_id, NEW.extension_id, NEW.instance_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at
       AND (to_jsonb(NEW) - 'last_health_check') IS DISTINCT FROM (to_jsonb(OLD) - 'last_health_check') THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER registry_instances_touch BEFORE UPDATE ON extension_instances
    FOR EACH ROW EXECUTE FUNCTION registry_instances_touch();

-- Statement-level AFTER triggers with transition tables: one set-based INSERT into the
-- change log per statement, however many rows it touched (a 100,000-row import is one
-- INSERT ... SELECT, not 100,000 trigger calls).
CREATE FUNCTION registry_extensions_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    changed bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO extension_audit_log (extension_id, entity, action, new_values)
        SELECT r.id, 'extension', 'create', to_jsonb(r) FROM new_rows r ORDER BY r.id;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO extension_audit_log (extension_id, entity, action, old_values, new_values)
        SELECT n.id, 'extension',
               CASE WHEN o.enabled AND NOT n.enabled THEN 'disable'
                    WHEN n.enabled AND NOT o.enabled THEN 'enable'
                    ELSE 'update' END,
               to_jsonb(o), to_jsonb(n)
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o IS DISTINCT FROM n
        ORDER BY n.id;
        GET DIAGNOSTICS changed = ROW_COUNT;
        -- Changing an extension's version keeps the previous definition.
        INSERT INTO extension_versions (id, version, subject, timeout_ms, retry, config, metadata, enabled)
        SELECT o.id, o.version, o.subject, o.timeout_ms, o.retry, o.config, o.metadata, true
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o.version IS DISTINCT FROM n.version
        ON CONFLICT (id, version) DO NOTHING;
    ELSE
        INSERT INTO extension_audit_log (extension_id, entity, action, old_values)
        SELECT r.id, 'extension', 'delete', to_jsonb(r) FROM old_rows r ORDER BY r.id;
    END IF;
    IF TG_OP <> 'UPDATE' THEN
        GET DIAGNOSTICS changed = ROW_COUNT;
    END IF;
    IF changed > 0 THEN
        PERFORM registry_mark_pending();
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION registry_versions_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    changed bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO extension_audit_log (extension_id, entity, entity_key, action, new_values)
        SELECT r.id, 'version', r.version, 'create', to_jsonb(r) FROM new_rows r ORDER BY r.id, r.version;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO extension_audit_log (extension_id, entity, entity_key, action, old_values, new_values)
        SELECT n.id, 'version', n.version,
               CASE WHEN o.enabled AND NOT n.enabled THEN 'disable'
                    WHEN n.enabled AND NOT o.enabled THEN 'enable'
                    ELSE 'update' END,
               to_jsonb(o), to_jsonb(n)
        FROM old_rows o JOIN new_rows n ON n.id = o.id AND n.version = o.version
        WHERE o IS DISTINCT FROM n
        ORDER BY n.id, n.version;
    ELSE
        INSERT INTO extension_audit_log (extension_id, entity, entity_key, action, old_values)
        SELECT r.id, 'version', r.version, 'delete', to_jsonb(r) FROM old_rows r ORDER BY r.id, r.version;
    END IF;
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed > 0 THEN
        PERFORM registry_mark_pending();
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION registry_instances_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    changed bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO extension_audit_log (extension_id, entity, entity_key, action, new_values)
        SELECT r.extension_id, 'instance', r.instance_id, 'create', to_jsonb(r)
        FROM new_rows r ORDER BY r.extension_id, r.instance_id;
    ELSIF TG_OP = 'UPDATE' THEN
        -- A health probe that only moves last_health_check is not a registry change.
        INSERT INTO extension_audit_log (extension_id, entity, entity_key, action, old_values, new_values)
        SELECT n.extension_id, 'instance', n.instance_id,
               CASE WHEN o.enabled AND NOT n.enabled THEN 'disable'
                    WHEN n.enabled AND NOT o.enabled THEN 'enable'
                    ELSE 'update' END,
               to_jsonb(o), to_jsonb(n)
        FROM old_rows o JOIN new_rows n ON n.extension_id = o.extension_id AND n.instance_id = o.instance_id
        WHERE (to_jsonb(o) - 'last_health_check' - 'updated_at') IS DISTINCT FROM (to_jsonb(n) - 'last_health_check' - 'updated_at')
        ORDER BY n.extension_id, n.instance_id;
    ELSE
        INSERT INTO extension_audit_log (extension_id, entity, entity_key, action, old_values)
        SELECT r.extension_id, 'instance', r.instance_id, 'delete', to_jsonb(r)
        FROM old_rows r ORDER BY r.extension_id, r.instance_id;
    END IF;
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed > 0 THEN
        PERFORM registry_mark_pending();
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER registry_extensions_insert AFTER INSERT ON extensions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION registry_extensions_changed();
CREATE TRIGGER registry_extensions_update AFTER UPDATE ON extensions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION registry_extensions_changed();
CREATE TRIGGER registry_extensions_delete AFTER DELETE ON extensions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION registry_extensions_changed();

CREATE TRIGGER registry_versions_insert AFTER INSERT ON extension_versions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION registry_versions_changed();
CREATE TRIGGER registry_versions_update AFTER UPDATE ON extension_versions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION registry_versions_changed();
CREATE TRIGGER registry_versions_delete AFTER DELETE ON extension_versions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION registry_versions_changed();

CREATE TRIGGER registry_instances_insert AFTER INSERT ON extension_instances
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION registry_instances_changed();
CREATE TRIGGER registry_instances_update AFTER UPDATE ON extension_instances
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION registry_instances_changed();
CREATE TRIGGER registry_instances_delete AFTER DELETE ON extension_instances
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION registry_instances_changed();

-- TRUNCATE has no row events, so the statement triggers above never see it: log every row
-- it is about to remove as a delete, in the same revision, before it goes. (TRUNCATE
-- extensions CASCADE fires this for each truncated table.)
CREATE FUNCTION registry_truncated() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    changed bigint;
BEGIN
    IF TG_TABLE_NAME = 'extensions' THEN
        INSERT INTO extension_audit_log (extension_id, entity, action, old_values)
        SELECT r.id, 'extension', 'delete', to_jsonb(r) FROM extensions r ORDER BY r.id;
    ELSIF TG_TABLE_NAME = 'extension_versions' THEN
        INSERT INTO extension_audit_log (extension_id, entity, entity_key, action, old_values)
        SELECT r.id, 'version', r.version, 'delete', to_jsonb(r) FROM extension_versions r ORDER BY r.id, r.version;
    ELSE
        INSERT INTO extension_audit_log (extension_id, entity, entity_key, action, old_values)
        SELECT r.extension_id, 'instance', r.instance_id, 'delete', to_jsonb(r)
        FROM extension_instances r ORDER BY r.extension_id, r.instance_id;
    END IF;
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed > 0 THEN
        PERFORM registry_mark_pending();
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER registry_extensions_truncate BEFORE TRUNCATE ON extensions
    FOR EACH STATEMENT EXECUTE FUNCTION registry_truncated();
CREATE TRIGGER registry_versions_truncate BEFORE TRUNCATE ON extension_versions
    FOR EACH STATEMENT EXECUTE FUNCTION registry_truncated();
CREATE TRIGGER registry_instances_truncate BEFORE TRUNCATE ON extension_instances
    FOR EACH STATEMENT EXECUTE FUNCTION registry_truncated();

-- The whole aggregate of one extension (its row, versions and instances) as JSON, or NULL
-- when it does not exist.
CREATE FUNCTION registry_aggregate(ext_id text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT to_jsonb(e) || jsonb_build_object(
        'versions', coalesce((SELECT jsonb_agg(to_jsonb(v) ORDER BY v.version) FROM extension_versions v WHERE v.id = e.id), '[]'::jsonb),
        'instances', coalesce((SELECT jsonb_agg(to_jsonb(i) ORDER BY i.instance_id) FROM extension_instances i WHERE i.extension_id = e.id), '[]'::jsonb))
    FROM extensions e WHERE e.id = ext_id
$$;

-- registry_sync records the current aggregate of each given extension (or its absence) as
-- a 'sync' change in a new revision. The syncer calls it to repair drift found by a
-- reconcile and to switch sources. It takes the revision lock first, so no other registry
-- transaction can commit between the read of the aggregates and this transaction's
-- commit: the recorded aggregates are exactly the state at the new revision.
-- floor_revision raises the counter so that the new revision is above a revision already
-- published from another source (the only way revision numbers ever skip).
CREATE FUNCTION registry_sync(ids text[], floor_revision bigint DEFAULT 0) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM 1 FROM registry_counter FOR UPDATE;
    UPDATE registry_counter SET revision = floor_revision WHERE revision < floor_revision;
    INSERT INTO extension_audit_log (extension_id, entity, action, new_values)
    SELECT i, 'aggregate', 'sync', registry_aggregate(i)
    FROM (SELECT DISTINCT unnest(ids) AS i) AS s ORDER BY i;
    PERFORM registry_mark_pending();
END
$$;
