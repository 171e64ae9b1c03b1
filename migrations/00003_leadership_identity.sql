-- The syncer's leadership lease and the registry's identity.
--
-- registry_leader holds one lease: the syncer instance that publishes, the term it won and
-- when the lease expires, by the database's clock (host clocks never matter). The leader
-- renews it well before it expires; a leader that stops renewing (dead host, frozen
-- process, lost network) is replaced once it has expired. Unlike a session advisory lock it
-- works behind a transaction-pooling proxy and does not depend on TCP keepalives.
--
-- registry_identity names this registry database: a random id created once by this
-- migration. A database re-created from scratch gets a new one; the syncer compares it with
-- the id its published revisions carry to notice a registry that is not the one it
-- published (see syncer/timeline.go).

-- +goose Up
CREATE TABLE registry_leader (
    singleton   boolean      PRIMARY KEY DEFAULT true CHECK (singleton),
    holder      text         NOT NULL,
    term        bigint       NOT NULL,
    acquired_at timestamptz  NOT NULL,
    renewed_at  timestamptz  NOT NULL,
    expires_at  timestamptz  NOT NULL
);

CREATE TABLE registry_identity (
    singleton   boolean      PRIMARY KEY DEFAULT true CHECK (singleton),
    registry_id uuid         NOT NULL DEFAULT gen_random_uuid(),
    created_at  timestamptz  NOT NULL DEFAULT now()
);
INSERT INTO registry_identity DEFAULT VALUES;

-- +goose Down
DROP TABLE registry_identity, registry_leader;
