-- registry_channel(): the NOTIFY channel of the registry in the current schema, the one
-- name both sides use (the trigger notifies on it; the listener reads it with
-- triggers.ChannelQuery and LISTENs on it).
--
-- A channel is an identifier: at most max_identifier_length BYTES (NAMEDATALEN - 1, 63 on
-- every stock build). pg_notify() refuses a longer name at COMMIT ("channel name too
-- long") and LISTEN silently cuts it, so the name is made to fit by bytes:
--   * <schema>.registry_revision when that fits (every earlier version used this name,
--     so existing deployments keep their channel);
--   * else <head>.<hash>.registry_revision: head is the longest prefix of the schema name,
--     in whole characters, of at most max_identifier_length - 35 bytes (28), and hash is
--     the first 16 hex digits of SHA-256 of the schema name in UTF-8. Two schemas that
--     share a long head (or differ only in multibyte characters) still get two channels.
-- triggers.Channel computes the same name in Go (a test compares them).
CREATE OR REPLACE FUNCTION registry_channel() RETURNS text
LANGUAGE plpgsql STABLE SET search_path FROM CURRENT AS $$
DECLARE
    s     text    := current_schema();
    whole text    := s || '.registry_revision';
    limit_bytes integer := current_setting('max_identifier_length')::integer;
    head  text;
BEGIN
    IF octet_length(whole) <= limit_bytes THEN
        RETURN whole;
    END IF;
    head := left(s, limit_bytes - 35);
    WHILE octet_length(head) > limit_bytes - 35 LOOP
        head := left(head, -1);
    END LOOP;
    RETURN head || '.' || left(encode(sha256(convert_to(s, 'UTF8')), 'hex'), 16) || '.registry_revision';
END
$$;
