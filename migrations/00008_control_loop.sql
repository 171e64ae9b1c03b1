-- The control loop (package health): fleet health merged from the routers' reports, and
-- automatic disable/enable.
--
-- extensions.auto_disabled is the syncer's automatic disable, a state of its own beside the
-- operator's enabled. Only the leading syncer's automatic management sets it (its
-- transactions carry registry.auto_manage = 'syncer' and a changed_by naming the syncer and
-- the reason, so every change is audited and reaches every router as a revision). An
-- operator always wins (registry_auto_guard below):
--   * setting auto_disabled = true by hand is refused (disable with enabled = false);
--   * changing enabled clears auto_disabled (the operator decided);
--   * clearing auto_disabled by hand is the operator's explicit enable: it also turns the
--     extension's automatic management off (extension_health.auto_manage = 'off'), so the
--     syncer never undoes it. UPDATE extension_health SET auto_manage = 'default' re-arms it.
--
-- extension_health gains the fleet view of the breakers (in how many reporting routers the
-- extension's circuit is open or half-open), the calls refused by open breakers, and the
-- per-extension policy: auto_manage ('default': the environment's setting, 'on', 'off')
-- and min_success_rate (NULL: the environment's). The syncer writes the statistics at most
-- once per extension per health interval; extension_health has no registry trigger, so
-- those writes never create revisions.
--
-- extension_instance_health is the same per instance, where the reports name instances
-- (rows of instances deleted since are dropped at the syncer's next write of the extension).

-- +goose Up
ALTER TABLE extensions ADD COLUMN auto_disabled boolean NOT NULL DEFAULT false;

ALTER TABLE extension_health
    ADD COLUMN rejected_count     bigint           NOT NULL DEFAULT 0,
    ADD COLUMN routers_reporting  integer          NOT NULL DEFAULT 0,
    ADD COLUMN routers_open       integer          NOT NULL DEFAULT 0,
    ADD COLUMN routers_half_open  integer          NOT NULL DEFAULT 0,
    ADD COLUMN auto_manage        text             NOT NULL DEFAULT 'default',
    ADD COLUMN min_success_rate   double precision,
    ADD CONSTRAINT extension_health_auto_manage_default_on_off
        CHECK (auto_manage IN ('default', 'on', 'off')),
    ADD CONSTRAINT extension_health_min_success_rate_between_0_and_1
        CHECK (min_success_rate IS NULL OR (min_success_rate >= 0 AND min_success_rate <= 1));

CREATE TABLE extension_instance_health (
    extension_id           text             NOT NULL,
    instance_id            text             NOT NULL,
    last_success           timestamptz,
    last_failure           timestamptz,
    success_count          bigint           NOT NULL DEFAULT 0,
    failure_count          bigint           NOT NULL DEFAULT 0,
    rejected_count         bigint           NOT NULL DEFAULT 0,
    p99_latency_ms         double precision,
    circuit_breaker_state  text             NOT NULL DEFAULT 'closed',
    routers_reporting      integer          NOT NULL DEFAULT 0,
    routers_open           integer          NOT NULL DEFAULT 0,
    routers_half_open      integer          NOT NULL DEFAULT 0,
    updated_at             timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (extension_id, instance_id),
    -- Not a foreign key to extension_instances: TRUNCATE extension_instances keeps working
    -- without CASCADE; the syncer drops the rows of instances that are gone.
    FOREIGN KEY (extension_id) REFERENCES extensions (id) ON DELETE CASCADE,
    CONSTRAINT extension_instance_health_breaker_state_closed_open_half_open
        CHECK (circuit_breaker_state IN ('closed', 'open', 'half_open'))
);

-- +goose StatementBegin
CREATE FUNCTION registry_auto_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF coalesce(current_setting('registry.auto_manage', true), '') = 'syncer' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.auto_disabled THEN
            RAISE EXCEPTION 'extension %: auto_disabled is set only by the syncer''s automatic management; insert it with enabled = false to disable it', NEW.id
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.enabled IS DISTINCT FROM OLD.enabled THEN
        -- The operator enabled or disabled it: that decision supersedes the automatic one.
        NEW.auto_disabled := false;
        RETURN NEW;
    END IF;
    IF NEW.auto_disabled AND NOT OLD.auto_disabled THEN
        RAISE EXCEPTION 'extension %: auto_disabled is set only by the syncer''s automatic management; set enabled = false to disable it', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.auto_disabled AND NOT NEW.auto_disabled THEN
        INSERT INTO extension_health (extension_id, auto_manage) VALUES (NEW.id, 'off')
        ON CONFLICT (extension_id) DO UPDATE SET auto_manage = 'off';
        RAISE NOTICE 'extension %: enabled by an operator; its automatic management is now off (re-arm: UPDATE extension_health SET auto_manage = ''default'' WHERE extension_id = ''%'')', NEW.id, NEW.id;
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER registry_auto_guard BEFORE INSERT OR UPDATE ON extensions
FOR EACH ROW EXECUTE FUNCTION registry_auto_guard();

-- +goose Down
DROP TRIGGER registry_auto_guard ON extensions;
DROP FUNCTION registry_auto_guard();
DROP TABLE extension_instance_health;
ALTER TABLE extension_health
    DROP CONSTRAINT extension_health_min_success_rate_between_0_and_1,
    DROP CONSTRAINT extension_health_auto_manage_default_on_off,
    DROP COLUMN min_success_rate,
    DROP COLUMN auto_manage,
    DROP COLUMN routers_half_open,
    DROP COLUMN routers_open,
    DROP COLUMN routers_reporting,
    DROP COLUMN rejected_count;
ALTER TABLE extensions DROP COLUMN auto_disabled;
