-- Circuit breaker thresholds from extension_health reach every router.
--
-- The router project keeps an extension's breaker thresholds in extension_health
-- (failure_threshold 5, error_rate_threshold 0.5, window_seconds 60,
-- half_open_max_requests 3). extension_health is not registry content (the syncer writes
-- its statistics every health interval, and those writes must never create revisions), so
-- routers read the thresholds from the extension's metadata.circuit_breaker (PROTOCOL.md
-- appendix). This trigger keeps the two together: when an operator sets a threshold column
-- (an UPDATE that changes one, or an INSERT with a value other than the default), the four
-- values are copied into extensions.metadata.circuit_breaker (its other keys kept) in the
-- same transaction, an ordinary audited registry change that every router applies as a
-- revision. Statistics writes never change a threshold column, so they never fire it.

-- +goose Up
-- The ranges routers accept (client.BreakerConfig): a value outside them is refused here
-- instead of being ignored by every router.
ALTER TABLE extension_health
    ADD CONSTRAINT extension_health_failure_threshold_at_least_1 CHECK (failure_threshold >= 1),
    ADD CONSTRAINT extension_health_error_rate_threshold_above_0_at_most_1
        CHECK (error_rate_threshold > 0 AND error_rate_threshold <= 1),
    ADD CONSTRAINT extension_health_window_seconds_between_1_and_86400 CHECK (window_seconds BETWEEN 1 AND 86400),
    ADD CONSTRAINT extension_health_half_open_max_requests_at_least_1 CHECK (half_open_max_requests >= 1);

-- +goose StatementBegin
CREATE FUNCTION registry_health_thresholds() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND (NEW.failure_threshold, NEW.error_rate_threshold, NEW.window_seconds, NEW.half_open_max_requests)
        IS NOT DISTINCT FROM (OLD.failure_threshold, OLD.error_rate_threshold, OLD.window_seconds, OLD.half_open_max_requests) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' AND (NEW.failure_threshold, NEW.error_rate_threshold, NEW.window_seconds, NEW.half_open_max_requests)
        IS NOT DISTINCT FROM (5, 0.5::double precision, 60, 3) THEN
        RETURN NULL;
    END IF;
    UPDATE extensions
    SET metadata = jsonb_set(metadata, '{circuit_breaker}',
        CASE WHEN jsonb_typeof(metadata->'circuit_breaker') = 'object' THEN metadata->'circuit_breaker' ELSE '{}'::jsonb END
        || jsonb_build_object('failure_threshold', NEW.failure_threshold, 'error_rate_threshold', NEW.error_rate_threshold,
                              'window_seconds', NEW.window_seconds, 'half_open_max_requests', NEW.half_open_max_requests))
    WHERE id = NEW.extension_id;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER registry_health_thresholds AFTER INSERT OR UPDATE ON extension_health
FOR EACH ROW EXECUTE FUNCTION registry_health_thresholds();

-- +goose Down
DROP TRIGGER registry_health_thresholds ON extension_health;
DROP FUNCTION registry_health_thresholds();
ALTER TABLE extension_health
    DROP CONSTRAINT extension_health_half_open_max_requests_at_least_1,
    DROP CONSTRAINT extension_health_window_seconds_between_1_and_86400,
    DROP CONSTRAINT extension_health_error_rate_threshold_above_0_at_most_1,
    DROP CONSTRAINT extension_health_failure_threshold_at_least_1;
