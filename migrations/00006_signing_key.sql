-- The syncer's signing key, when no EXTENSION_REGISTRY_SIGNING_KEY file is configured.
--
-- The first syncer that needs a key generates an Ed25519 NKey user seed (SU…) and inserts
-- it here (INSERT … ON CONFLICT DO NOTHING, then SELECT: two syncers generating at once end
-- with one key); every syncer of this schema, standbys included, then signs with it. The
-- public key (U…) is what routers trust (PROTOCOL.md §9).
--
-- The seed is a secret: nobody but the table's owner may read it. The syncer's role needs
-- SELECT and INSERT on it. When the syncer runs the migrations it owns the table; otherwise
-- grant them to its role, and to nobody else:
--
--     GRANT SELECT, INSERT ON registry_signing_key TO registry_syncer;

-- +goose Up
CREATE TABLE registry_signing_key (
    singleton   boolean      PRIMARY KEY DEFAULT true CHECK (singleton),
    seed        text         NOT NULL CONSTRAINT registry_signing_key_seed_check CHECK (seed LIKE 'SU%'),
    public_key  text         NOT NULL CONSTRAINT registry_signing_key_public_key_check CHECK (public_key LIKE 'U%'),
    created_at  timestamptz  NOT NULL DEFAULT now()
);
REVOKE ALL ON registry_signing_key FROM PUBLIC;

-- +goose Down
DROP TABLE registry_signing_key;
