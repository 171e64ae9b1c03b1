-- The change log is read by transaction, in seq order: a revision's changes are
-- extension_audit_log rows of its xid. A huge revision (a bulk import: 216,668 rows for
-- 100,000 extensions) is read in pages, keyset on seq within the xid (syncer/db.go
-- changePageSQL), which needs both columns in one index: with the xid index alone the
-- planner either fetches and sorts every remaining row of the transaction for each page, or
-- walks the primary key from the page's start, filtering on xid, to the end of the log for
-- the last page. (xid, seq) serves the lookups by xid as well, so it replaces that index.

-- +goose Up
CREATE INDEX extension_audit_log_xid_seq_idx ON extension_audit_log (xid, seq);
DROP INDEX extension_audit_log_xid_idx;

-- +goose Down
CREATE INDEX extension_audit_log_xid_idx ON extension_audit_log (xid);
DROP INDEX extension_audit_log_xid_seq_idx;
